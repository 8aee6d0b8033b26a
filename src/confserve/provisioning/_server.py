"""The attested key-release server: Gramine wire-compatible, concurrent, audited.

Theory of operation
-------------------
Threads, not asyncio: every connection is a short, bounded exchange (one TLS handshake, one request of at
most 2 KB, one response), and its CPU work (the handshake, RA-TLS and DCAP verification in dcap-qvl) is
synchronous library code that an event loop would have to push to a thread pool anyway. So one acceptor
thread hands each connection to a bounded pool (`max_connections` workers). Every socket operation has a
deadline (`TlsChannel`), so a slow or silent client holds one worker until its handshake or read deadline
and never delays another; beyond `max_connections`, or beyond an address's rate limit, a new connection is
closed at once without reading from it.

Per connection, in this order (nothing secret is sent before step 4 decided):

1. TLS 1.2/1.3 handshake, requesting a client certificate and accepting any (B.5);
2. the client must have sent exactly one certificate; `verify_ratls_certificate` with the DCAP verifier
   (collateral, trust root and `now` bound in), then `Policy.evaluate`;
3. read the request (Gramine's or the confserve extension, `_protocol`);
4. decide: the requested names must all be granted by the policy and present in the store;
5. append the decision to the audit log; if that fails, refuse (fail closed);
6. send the response, or a refusal (nothing at all for a Gramine client), and close.

The policy, secrets and collateral are one immutable `_Runtime` value; `reload()` (the SIGHUP handler)
builds a new one and swaps the reference, so connections in flight finish with the value they started
with and none is dropped. A failed reload keeps the previous configuration and is logged and counted.
Apart from its files the server keeps no state, so several instances can run side by side, each with its
own audit log.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import functools
import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import prometheus_client
from cryptography import x509

from confserve.attestation import (
    SIM_COLLATERAL_FILE,
    AttestationError,
    CachingCollateralSource,
    Collateral,
    CollateralSource,
    Decision,
    PccsCollateralSource,
    Policy,
    StaticCollateralSource,
    TrustConfig,
    VerifiedEvidence,
    load_policy_file,
    load_simulated_root,
    parse_ra_config,
    verify,
    verify_ratls_certificate,
)
from confserve.provisioning._audit import AuditLog
from confserve.provisioning._errors import (
    AuditLogError,
    ConfigError,
    ProtocolError,
    ProvisioningError,
    TlsError,
    UnavailableError,
)
from confserve.provisioning._protocol import SecretRequest, ServerConnection
from confserve.provisioning._secrets import RateLimiter, SecretStore
from confserve.provisioning._tls import PrivateKey, TlsChannel, server_context

__all__ = [
    "PolicyLoader",
    "SecretProvisioningServer",
    "ServerLimits",
    "ServerSettings",
    "collateral_from_file",
    "collateral_from_pccs",
    "collateral_from_sim_platform",
    "policy_from_file",
    "secrets_from_files",
]

_log = logging.getLogger("confserve.provisioning.server")
_MAX_POLICY_BYTES: Final = 1 << 20  # confserve.attestation's policy-file limit

PolicyLoader = Callable[[], Policy]
SecretsLoader = Callable[[], SecretStore]
CollateralLoader = Callable[[], CollateralSource]

# Refusal categories: the bounded label set of the refusals metric (the audit log has the details).
REFUSAL_CATEGORIES: Final = (
    "certificate",  # not exactly one client certificate
    "attestation",  # RA-TLS or DCAP verification failed
    "policy",  # verified, but the policy refuses the identity / TCB / debug / simulation
    "not_granted",  # a requested name is not granted to this identity
    "unavailable",  # a granted name has no secret loaded
    "protocol",  # malformed, oversized or truncated request
    "timeout",  # the client did not send its request in time, or went away
    "audit",  # the decision could not be written to the audit log
    "internal",  # an unexpected error (refused, fail closed)
)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Resource bounds. The numbers: a handshake with an RSA-3072 client certificate takes a few ms on one
    core, so 10 s only ever expires for a stalled peer; 256 workers fit in the memory of a small VM and
    exceed what two cores can verify per second by far; a replica asks once per start, so 20/s with a
    burst of 100 per address lets a whole node restart at once while capping one abusive address."""

    handshake_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 10.0
    write_timeout_seconds: float = 10.0
    max_connections: int = 256
    rate_limit_per_second: float = 20.0  # <= 0 disables the per-address limit
    rate_limit_burst: int = 100
    listen_backlog: int = 128

    def __post_init__(self) -> None:
        timeouts = (self.handshake_timeout_seconds, self.read_timeout_seconds, self.write_timeout_seconds)
        if min(timeouts) <= 0 or self.max_connections < 1 or self.rate_limit_burst < 1:
            raise ConfigError("timeouts, max_connections and rate_limit_burst must be positive")


def _unix_now() -> int:
    return int(time.time())


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything a server needs, validated and frozen. The loaders run at start and on every reload."""

    certificate_chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey
    policy: PolicyLoader
    secrets: SecretsLoader
    collateral: CollateralLoader
    trust: TrustConfig
    listen_host: str = "127.0.0.1"
    listen_port: int = 4433  # Gramine's default port (B.1)
    audit_log: Path | None = None
    audit_fsync: bool = True
    metrics_host: str | None = None
    metrics_port: int = 0
    limits: ServerLimits = field(default_factory=ServerLimits)
    clock: Callable[[], int] = _unix_now  # Unix seconds: the verification time and the audit timestamps

    def __post_init__(self) -> None:
        if not 0 <= self.listen_port <= 0xFFFF or not 0 <= self.metrics_port <= 0xFFFF:
            raise ConfigError("ports must be in 0..65535")
        if not self.certificate_chain:
            raise ConfigError("the server certificate chain is empty")


# -- loaders for the common configurations ------------------------------------------------------------


def policy_from_file(path: Path, *, ra_config: bool, allow_simulated: bool = False) -> PolicyLoader:
    """`--ra-config FILE` (reference semantics) or `--policy FILE` (.toml native, .json ra_config)."""

    def load() -> Policy:
        if ra_config:
            try:
                with path.open("rb") as handle:
                    data = handle.read(_MAX_POLICY_BYTES + 1)  # parse_ra_config refuses more
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
            return parse_ra_config(data, allow_simulated=allow_simulated)
        return load_policy_file(path, allow_simulated_ra_config=allow_simulated)

    return load


def secrets_from_files(specs: tuple[tuple[str, Path], ...]) -> SecretsLoader:
    return lambda: SecretStore.from_files(specs)


def collateral_from_sim_platform(directory: Path) -> CollateralLoader:
    """The simulated platform's current collateral (re-read on reload, e.g. after `refresh`)."""

    def load() -> CollateralSource:
        try:
            return StaticCollateralSource(Collateral.from_file(directory / SIM_COLLATERAL_FILE))
        except AttestationError as exc:
            raise ConfigError(f"{directory}: {exc}") from None

    return load


def collateral_from_file(path: Path) -> CollateralLoader:
    """A collateral JSON file, read once per (re)load and checked then."""

    def load() -> CollateralSource:
        return StaticCollateralSource(Collateral.from_file(path))

    return load


def collateral_from_pccs(url: str) -> CollateralLoader:
    """Collateral from a PCCS, cached per FMSPC until a day before its nextUpdate."""
    source = CachingCollateralSource(PccsCollateralSource(url))
    return lambda: source


def trust_for_sim_platform(directory: Path) -> TrustConfig:
    """The simulated root, from the platform's public part (sim-platform publish) or its directory:
    only root_ca.cert.pem is read, never a private key."""
    try:
        return load_simulated_root(directory)
    except AttestationError as exc:
        raise ConfigError(str(exc)) from None


# -- runtime state ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Runtime:
    policy: Policy
    secrets: SecretStore
    collateral: CollateralSource


def _granted_names(policy: Policy) -> set[str]:
    return {name for rule in policy.rules for name in rule.secrets}


def _load_runtime(settings: ServerSettings) -> _Runtime:
    try:
        policy = settings.policy()
        secrets = settings.secrets()
        collateral = settings.collateral()
    except (ProvisioningError, AttestationError) as exc:
        raise ConfigError(str(exc)) from None
    missing = sorted(_granted_names(policy) - secrets.names())
    if missing:
        raise ConfigError(f"the policy grants secrets that are not loaded: {', '.join(missing)}")
    return _Runtime(policy, secrets, collateral)


class _Metrics:
    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        prefix = "confserve_secret_prov"
        self.releases = prometheus_client.Counter(
            f"{prefix}_releases", "Sessions that released secrets", ["protocol"], registry=self.registry
        )
        self.secrets_released = prometheus_client.Counter(
            f"{prefix}_secrets_released", "Secrets released", registry=self.registry
        )
        self.refusals = prometheus_client.Counter(
            f"{prefix}_refusals", "Refused sessions by reason", ["reason"], registry=self.registry
        )
        self.rejected = prometheus_client.Counter(
            f"{prefix}_connections_rejected",
            "Connections closed unread (rate limit, connection limit)",
            ["reason"],
            registry=self.registry,
        )
        self.handshake_failures = prometheus_client.Counter(
            f"{prefix}_handshake_failures",
            "TLS handshakes that failed or timed out",
            ["reason"],
            registry=self.registry,
        )
        self.handshake_seconds = prometheus_client.Histogram(
            f"{prefix}_handshake_seconds",
            "TLS handshake latency",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.session_seconds = prometheus_client.Histogram(
            f"{prefix}_session_seconds",
            "Accept to response, including attestation",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.active = prometheus_client.Gauge(
            f"{prefix}_active_connections", "Connections being served", registry=self.registry
        )
        self.reloads = prometheus_client.Counter(
            f"{prefix}_reloads", "Configuration reloads", ["result"], registry=self.registry
        )
        for category in REFUSAL_CATEGORIES:
            self.refusals.labels(category)


@dataclass(slots=True)
class _Outcome:
    """The decision for one session, and what goes into the audit entry."""

    released: tuple[str, ...] = ()
    category: str | None = None  # refusal category; None when released
    detail: str = ""  # refusal reason for the audit log and the server log
    peer_reason: str = ""  # short generic reason sent to an extension client


def _refused(category: str, detail: str, peer_reason: str) -> _Outcome:
    return _Outcome(category=category, detail=detail, peer_reason=peer_reason)


def _iso(unix: int) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SecretProvisioningServer:
    """The key-release service. `start()`, then `address`; `reload()` on SIGHUP; `stop()`."""

    def __init__(self, settings: ServerSettings) -> None:
        self._settings = settings
        self._limits = settings.limits
        self._runtime = _load_runtime(settings)
        self._context = server_context(settings.certificate_chain, settings.private_key)
        self._audit = AuditLog(settings.audit_log, fsync=settings.audit_fsync) if settings.audit_log else None
        self._metrics = _Metrics()
        self._rate = RateLimiter(self._limits.rate_limit_per_second, self._limits.rate_limit_burst)
        self._slots = threading.BoundedSemaphore(self._limits.max_connections)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._http: http.server.ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._reload_lock = threading.Lock()

    # -- lifecycle --

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise ProvisioningError("server not started")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        if self._http is None:
            return None
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    @property
    def registry(self) -> prometheus_client.CollectorRegistry:
        return self._metrics.registry

    @property
    def audit_log(self) -> AuditLog | None:
        return self._audit

    def start(self) -> None:
        s = self._settings
        family = socket.AF_INET6 if ":" in s.listen_host else socket.AF_INET
        try:
            self._listener = socket.create_server(
                (s.listen_host, s.listen_port), family=family, backlog=self._limits.listen_backlog
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {s.listen_host}:{s.listen_port}: {exc.strerror}") from None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._limits.max_connections, thread_name_prefix="secret-prov"
        )
        self._acceptor = threading.Thread(target=self._accept_loop, name="secret-prov-accept", daemon=True)
        self._acceptor.start()
        if s.metrics_host is not None:
            self._start_http(s.metrics_host, s.metrics_port)
        _log.info("secret provisioning listening on %s:%d", *self.address)

    def stop(self) -> None:
        """Stop accepting, let connections in flight finish (each is bounded by its deadlines)."""
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._audit is not None:
            self._audit.close()

    def __enter__(self) -> SecretProvisioningServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reload(self) -> bool:
        """Reload policy, secrets and collateral; keep the old configuration if anything is invalid."""
        with self._reload_lock:
            try:
                runtime = _load_runtime(self._settings)
            except ConfigError as exc:
                self._metrics.reloads.labels("failed").inc()
                _log.error("reload failed, keeping the previous configuration: %s", exc)
                return False
            self._runtime = runtime
            self._metrics.reloads.labels("ok").inc()
            _log.info("reloaded policy (%d rules), secrets %s", len(runtime.policy.rules), runtime.secrets)
            return True

    # -- accepting --

    def _accept_loop(self) -> None:
        assert self._listener is not None
        assert self._pool is not None
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                self._stopping.wait(0.05)  # EMFILE and the like: back off briefly, keep serving
                continue
            address = str(peer[0])
            if not self._rate.allow(address):
                self._metrics.rejected.labels("rate_limited").inc()
                _log.warning("rate limit: closing connection from %s", address)
                sock.close()
                continue
            if not self._slots.acquire(blocking=False):
                self._metrics.rejected.labels("connection_limit").inc()
                _log.warning("connection limit reached: closing connection from %s", address)
                sock.close()
                continue
            try:
                self._pool.submit(self._run, sock, peer)
            except RuntimeError:  # pool shut down under us
                self._slots.release()
                sock.close()
                return

    def _run(self, sock: socket.socket, peer: Any) -> None:
        self._metrics.active.inc()
        try:
            self._serve(sock, f"{peer[0]}:{peer[1]}")
        except Exception:  # a bug must not kill the worker or leak the socket; nothing was released
            _log.exception("unexpected error serving %s", peer[0])
        finally:
            sock.close()
            self._metrics.active.dec()
            self._slots.release()

    # -- one session --

    def _serve(self, sock: socket.socket, peer: str) -> None:
        limits = self._limits
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the peer may already be gone
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = TlsChannel(sock, self._context, server_side=True)
        try:
            channel.handshake(started + limits.handshake_timeout_seconds)
        except UnavailableError as exc:
            self._metrics.handshake_failures.labels("timeout_or_closed").inc()
            _log.info("TLS handshake with %s did not complete: %s", peer, exc)
            return
        except TlsError as exc:
            self._metrics.handshake_failures.labels("tls").inc()
            _log.info("TLS handshake with %s failed: %s", peer, exc)
            return
        self._metrics.handshake_seconds.observe(time.monotonic() - started)
        runtime = self._runtime  # one consistent configuration for the whole session
        now = self._settings.clock()
        evidence, decision, failure = self._attest(channel, runtime, now)
        protocol = ServerConnection()
        request: SecretRequest | None = None
        outcome: _Outcome
        try:
            deadline = time.monotonic() + limits.read_timeout_seconds
            while request is None:
                data = channel.recv(deadline)
                if not data:
                    protocol.end_of_data()
                request = protocol.receive_data(data)
        except ProtocolError as exc:
            outcome = _refused("protocol", f"protocol error: {exc}", "protocol error")
        except (UnavailableError, TlsError) as exc:
            outcome = _refused("timeout", f"no request: {exc}", "timed out")
        else:
            outcome = failure or self._decide(request, decision, runtime)
        reply = self._audit_and_reply(protocol, outcome, runtime, peer, now, request, evidence, decision)
        try:
            if reply:
                channel.sendall(reply, time.monotonic() + limits.write_timeout_seconds)
            channel.close(time.monotonic() + 1.0)
        except (UnavailableError, TlsError) as exc:
            _log.info("could not deliver the response to %s: %s", peer, exc)
        self._metrics.session_seconds.observe(time.monotonic() - started)

    def _attest(
        self, channel: TlsChannel, runtime: _Runtime, now: int
    ) -> tuple[VerifiedEvidence | None, Decision | None, _Outcome | None]:
        connection = channel.connection
        certificate = connection.get_peer_certificate(as_cryptography=True)
        # On a server OpenSSL's peer chain excludes the leaf: it holds any extra certificates sent.
        extra = [c for c in connection.get_peer_cert_chain(as_cryptography=True) or () if c != certificate]
        if certificate is None or extra:
            count = len(extra) + (certificate is not None)
            return (
                None,
                None,
                _refused(
                    "certificate",
                    f"client sent {count} certificates; exactly one RA-TLS certificate is required",
                    "attestation failed",
                ),
            )
        trust = self._settings.trust

        def verify_quote(quote: bytes) -> VerifiedEvidence:
            return verify(quote, runtime.collateral.get(quote, now), trust, now)

        try:
            evidence = verify_ratls_certificate(certificate, verify_quote)
        except AttestationError as exc:
            return None, None, _refused("attestation", f"attestation failed: {exc}", "attestation failed")
        except Exception as exc:  # fail closed on anything unexpected in the verifiers
            _log.exception("verifier raised unexpectedly")
            return (
                None,
                None,
                _refused("internal", f"verification error: {type(exc).__name__}", "attestation failed"),
            )
        decision = runtime.policy.evaluate(evidence)
        if not decision.accepted:
            return evidence, decision, _refused("policy", f"policy: {decision.reason}", "refused by policy")
        return evidence, decision, None

    @staticmethod
    def _decide(request: SecretRequest, decision: Decision | None, runtime: _Runtime) -> _Outcome:
        if decision is None or not decision.accepted:  # pragma: no cover - _attest returned a failure then
            return _refused("internal", "no accepted decision", "refused")
        granted = decision.secrets
        names = request.names or granted
        for name in names:
            if name not in granted:
                return _refused(
                    "not_granted",
                    f"secret {name!r} not granted by rule {decision.rule!r}",
                    "secret not granted",
                )
            if runtime.secrets.get(name) is None:  # pragma: no cover - _load_runtime checks the policy
                return _refused("unavailable", f"secret {name!r} not loaded", "secret not available")
        return _Outcome(released=tuple(names))

    def _audit_and_reply(
        self,
        protocol: ServerConnection,
        outcome: _Outcome,
        runtime: _Runtime,
        peer: str,
        now: int,
        request: SecretRequest | None,
        evidence: VerifiedEvidence | None,
        decision: Decision | None,
    ) -> bytes:
        entry: dict[str, Any] = {
            "time": _iso(now),
            "peer": peer,
            "protocol": request.kind.value if request is not None else None,
            "requested": list(request.names) if request is not None else None,
            "outcome": "released" if outcome.category is None else "refused",
        }
        if evidence is not None:
            ident = evidence.identity
            entry.update(
                identity={
                    "mr_enclave": ident.mr_enclave.hex(),
                    "mr_signer": ident.mr_signer.hex(),
                    "isv_prod_id": ident.isv_prod_id,
                    "isv_svn": ident.isv_svn,
                },
                tcb_status=evidence.tcb_status,
                advisory_ids=list(evidence.advisory_ids),
                simulated=evidence.simulated,
                debug=evidence.debug,
            )
        else:
            entry.update(identity=None, tcb_status=None, simulated=None)
        if decision is not None and decision.rule is not None:
            entry["rule"] = decision.rule
        if outcome.category is None:
            entry["secrets"] = list(outcome.released)
        else:
            entry["reason"] = outcome.detail
            entry["category"] = outcome.category
        if self._audit is not None:
            try:
                self._audit.append(entry)
            except AuditLogError as exc:
                _log.error("audit log write failed, refusing: %s", exc)
                outcome = _refused("audit", "audit log unavailable", "internal error")
        if outcome.category is not None:
            self._metrics.refusals.labels(outcome.category).inc()
            _log.info("refused %s: %s", peer, outcome.detail)
            return protocol.refuse(outcome.peer_reason)
        secrets = [(name, runtime.secrets.get(name) or b"") for name in outcome.released]
        try:
            reply = protocol.grant(secrets)
        except ProtocolError as exc:  # pragma: no cover - the decision matched the request already
            self._metrics.refusals.labels("internal").inc()
            _log.error("cannot encode the grant for %s: %s", peer, exc)
            return protocol.refuse("internal error")
        assert request is not None
        self._metrics.releases.labels(request.kind.value).inc()
        self._metrics.secrets_released.inc(len(secrets))
        _log.info(
            "released %s to %s (%s)", ", ".join(outcome.released), peer, decision and decision.describe()
        )
        return reply

    # -- metrics and health --

    def _start_http(self, host: str, port: int) -> None:
        registry = self._metrics.registry
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body = prometheus_client.generate_latest(registry)
                    self._reply(200, body, prometheus_client.CONTENT_TYPE_LATEST)
                elif self.path in ("/healthz", "/health"):
                    healthy = server._listener is not None and not server._stopping.is_set()
                    self._reply(200 if healthy else 503, b"ok\n" if healthy else b"stopping\n", "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class HttpServer(http.server.ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        try:
            self._http = HttpServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} for metrics: {exc.strerror}") from None
        self._http_thread = threading.Thread(
            target=functools.partial(self._http.serve_forever, poll_interval=0.1),
            name="secret-prov-metrics",
            daemon=True,
        )
        self._http_thread.start()
