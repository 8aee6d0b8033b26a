"""The attested key-release server: Gramine wire-compatible, concurrent, audited.

Theory of operation
-------------------
Two stages, so that what an anonymous peer can do never holds what authenticated enclaves need:

* **Pre-authentication** (`_admission.AdmissionStage`, one thread, non-blocking sockets): admission
  (per-address rate and cap, eviction when full), the TLS handshake (requesting a client certificate and
  accepting any, docs/formats.md#sp-tls) and the request read, each under a deadline. An idle or slow peer
  holds a slot of this bounded stage, never a thread.
* **Decision** (a pool of `max_connections` workers): a connection whose I/O is done is handed to a free
  worker, which gathers the client's certificates and calls `_decision.decide` (RA-TLS + DCAP
  verification, policy, the requested names; a pure function of its inputs and the clock), appends the
  audit entry of an authenticated session (if that fails, it refuses: fail closed) or counts an
  unauthenticated refusal (`RefusalTally`), then sends the response, or a refusal (nothing at all for a
  Gramine client), and closes. Nothing secret is sent before the decision is recorded.

Threads, not asyncio, for the decision: its work (RA-TLS and DCAP verification in dcap-qvl, an fsync) is
synchronous library code that an event loop would push to a thread pool anyway.

Logs stay bounded under floods: per-session lines for authenticated sessions only; for refused
unauthenticated peers (rejected connections, failed handshakes, unverifiable evidence) the first of each
kind per interval is logged, the rest are summarised once per interval, in the log and in the audit log.

The policy, secrets and collateral are one immutable `Runtime` value; `reload()` (the SIGHUP handler)
builds a new one and swaps the reference, so connections in flight finish with the value they started
with and none is dropped. A failed reload keeps the previous configuration and is logged and counted.
Apart from its files the server keeps no state, so several instances can run side by side, each with its
own audit log.
"""

from __future__ import annotations

import concurrent.futures
import functools
import http.server
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import prometheus_client
from cryptography import x509
from OpenSSL import SSL
from prometheus_client import Counter, Gauge, Histogram

from confserve.attestation import (
    SIM_COLLATERAL_FILE,
    AttestationError,
    CachingCollateralSource,
    Collateral,
    CollateralSource,
    PccsCollateralSource,
    Policy,
    StaticCollateralSource,
    TrustConfig,
    load_policy_file,
    load_simulated_root,
    parse_ra_config,
)
from confserve.provisioning._admission import AdmissionStage, Admitted, StageLimits
from confserve.provisioning._audit import AuditLog
from confserve.provisioning._decision import (
    REFUSAL_CATEGORIES,
    Outcome,
    RefusalSummary,
    RefusalTally,
    Runtime,
    SessionFacts,
    TallyKind,
    audit_failed,
    decide,
)
from confserve.provisioning._errors import (
    AuditLogError,
    ConfigError,
    ProtocolError,
    ProvisioningError,
    TlsError,
    UnavailableError,
)
from confserve.provisioning._protocol import DEFAULT_PORT, ServerConnection
from confserve.provisioning._secrets import RateLimiter, SecretStore, parse_secret_spec
from confserve.provisioning._tls import (
    PrivateKey,
    TlsChannel,
    load_certificate_chain,
    load_private_key,
    server_context,
)

__all__ = [
    "REFUSAL_CATEGORIES",
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


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Resource bounds, declared once (the command line takes its defaults from here). The numbers:

    * timeouts: a handshake with an RSA-3072 client certificate takes a few ms on one core, and a client
      sends its request right after it, so 10 s only ever expires for a stalled peer, even across
      continents;
    * `max_connections` (workers that verify, decide and answer): 256 fit in the memory of a small VM and
      exceed what two cores can verify per second (about 1,000 sessions) by far;
    * `max_pending_connections` (the pre-authentication stage): 512, so that with the 256 workers a process
      stays under the common default of 1,024 open files; each costs a socket and an idle TLS object;
    * `max_pending_per_address`: a replica asks once per start and spends milliseconds in this stage, so
      even a node restarting dozens of replicas at once stays far below 32, while one address cannot hold
      more than 1/16 of the stage;
    * rate limit: 20/s with a burst of 100 per address lets a whole node restart at once while capping
      one abusive address;
    * `refusal_summary_seconds`: refusals of unauthenticated peers are summarised once a minute, which
      bounds a flood's log and audit-log growth to 1,440 lines a day and still shows it within a minute.
    """

    handshake_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 10.0
    write_timeout_seconds: float = 10.0
    max_connections: int = 256
    max_pending_connections: int = 512
    max_pending_per_address: int = 32
    rate_limit_per_second: float = 20.0  # <= 0 disables the per-address limit
    rate_limit_burst: int = 100
    listen_backlog: int = 128
    refusal_summary_seconds: float = 60.0

    def __post_init__(self) -> None:
        positive = (
            self.handshake_timeout_seconds,
            self.read_timeout_seconds,
            self.write_timeout_seconds,
            self.max_connections,
            self.max_pending_connections,
            self.max_pending_per_address,
            self.rate_limit_burst,
            self.refusal_summary_seconds,
        )
        if min(positive) <= 0:
            raise ConfigError(
                "timeouts, connection limits, rate_limit_burst and refusal_summary_seconds must be positive"
            )


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
    listen_port: int = DEFAULT_PORT
    audit_log: Path | None = None
    audit_fsync: bool = True
    metrics_host: str | None = None
    metrics_port: int = 0
    limits: ServerLimits = field(default_factory=ServerLimits)
    clock: Callable[[], int] = _unix_now  # Unix seconds: verification time, audit timestamps, summaries

    def __post_init__(self) -> None:
        if not 0 <= self.listen_port <= 0xFFFF or not 0 <= self.metrics_port <= 0xFFFF:
            raise ConfigError("ports must be in 0..65535")
        if not self.certificate_chain:
            raise ConfigError("the server certificate chain is empty")

    @classmethod
    def from_files(
        cls,
        certificate_chain: str | os.PathLike[str],
        private_key: str | os.PathLike[str],
        policy: str | os.PathLike[str],
        secret_specs: Sequence[str],
        *,
        ra_config: bool = False,
        allow_simulated: bool = False,
        sim_platform: str | os.PathLike[str] | None = None,
        collateral: str | os.PathLike[str] | None = None,
        pccs_url: str | None = None,
        **options: Any,
    ) -> ServerSettings:
        """The settings of `confserve secret-prov serve`: PEM files, a policy file (`ra_config`: Gramine's
        ra_config JSON), `NAME=FILE` secrets. Quotes are trusted to the simulated platform's root with
        `sim_platform`, else to Intel's; collateral comes from the `collateral` file, else the simulated
        platform, else the PCCS at `pccs_url`. `options` are the other fields."""
        trust = trust_for_sim_platform(Path(sim_platform)) if sim_platform else TrustConfig.intel()
        if collateral is not None:
            collateral_loader = collateral_from_file(Path(collateral))
        elif sim_platform is not None:
            collateral_loader = collateral_from_sim_platform(Path(sim_platform))
        elif pccs_url is not None:
            collateral_loader = collateral_from_pccs(pccs_url)
        else:
            raise ConfigError("verifying real quotes needs a collateral file or a PCCS URL")
        return cls(
            certificate_chain=tuple(load_certificate_chain(os.fspath(certificate_chain))),
            private_key=load_private_key(os.fspath(private_key)),
            policy=policy_from_file(Path(policy), ra_config=ra_config, allow_simulated=allow_simulated),
            secrets=secrets_from_files(tuple(parse_secret_spec(spec) for spec in secret_specs)),
            collateral=collateral_loader,
            trust=trust,
            **options,
        )


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


def _granted_names(policy: Policy) -> set[str]:
    return {name for rule in policy.rules for name in rule.secrets}


def _load_runtime(settings: ServerSettings) -> Runtime:
    try:
        policy = settings.policy()
        secrets = settings.secrets()
        collateral = settings.collateral()
    except (ProvisioningError, AttestationError) as exc:
        raise ConfigError(str(exc)) from None
    missing = sorted(_granted_names(policy) - secrets.names())
    if missing:
        raise ConfigError(f"the policy grants secrets that are not loaded: {', '.join(missing)}")
    return Runtime(policy, secrets, collateral)


_M = TypeVar("_M", Counter, Gauge, Histogram)


class _Metrics:
    """The key service's metrics, `confserve_secret_prov_*`, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self.releases = self._new(Counter, "releases", "Sessions that released secrets", "protocol")
        self.secrets_released = self._new(Counter, "secrets_released", "Secrets released")
        self.refusals = self._new(Counter, "refusals", "Refused sessions by reason", "reason")
        self.rejected = self._new(
            Counter,
            "connections_rejected",
            "Connections closed unread (rate_limited, address_limit, connection_limit, evicted)",
            "reason",
        )
        self.handshake_failures = self._new(
            Counter, "handshake_failures", "TLS handshakes that failed or timed out", "reason"
        )
        self.handshake_seconds = self._new(
            Histogram,
            "handshake_seconds",
            "TLS handshake latency",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.session_seconds = self._new(
            Histogram,
            "session_seconds",
            "Accept to response, including attestation",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.active = self._new(
            Gauge, "active_connections", "Connections being decided and answered by a worker"
        )
        self.pending = self._new(
            Gauge,
            "pending_connections",
            "Connections in the pre-authentication stage (handshake, request, waiting for a worker)",
        )
        self.waiting = self._new(
            Gauge,
            "waiting_connections",
            "Connections of the pre-authentication stage that wait for a free worker",
        )
        self.reloads = self._new(Counter, "reloads", "Configuration reloads", "result")
        for category in REFUSAL_CATEGORIES:
            self.refusals.labels(category)

    def _new(self, kind: type[_M], name: str, documentation: str, *labels: str, **options: Any) -> _M:
        return kind(f"confserve_secret_prov_{name}", documentation, labels, registry=self.registry, **options)


_REJECTION_MESSAGES: Final = {
    "rate_limited": "rate limit: closing connection from %s",
    "address_limit": "too many unauthenticated connections from %s: closing the newest",
    "connection_limit": "connection limit reached: closing connection from %s",
    "evicted": "pre-authentication stage full: closing the oldest connection from %s",
}
_SUMMARISED: Final = " (more like this are counted and summarised every %d s)"


def _peer_certificates(connection: SSL.Connection) -> tuple[x509.Certificate, ...]:
    """The certificates the client sent, leaf first. On a server OpenSSL's peer chain excludes the leaf:
    it holds any extra certificates sent."""
    leaf = connection.get_peer_certificate(as_cryptography=True)
    extra = [c for c in connection.get_peer_cert_chain(as_cryptography=True) or () if c != leaf]
    return (leaf, *extra) if leaf is not None else tuple(extra)


class SecretProvisioningServer:
    """The key-release service. `start()`, then `address`; `reload()` on SIGHUP; `stop()`."""

    def __init__(self, settings: ServerSettings) -> None:
        self._settings = settings
        self._limits = settings.limits
        self._runtime = _load_runtime(settings)
        self._context = server_context(settings.certificate_chain, settings.private_key)
        self._audit = AuditLog(settings.audit_log, fsync=settings.audit_fsync) if settings.audit_log else None
        self._metrics = _Metrics()
        self._tally = RefusalTally(self._limits.refusal_summary_seconds)
        self._slots = threading.BoundedSemaphore(self._limits.max_connections)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._address: tuple[str, int] | None = None
        self._stage: AdmissionStage | None = None
        self._stage_thread: threading.Thread | None = None
        self._http: http.server.ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._reload_lock = threading.Lock()

    # -- lifecycle --

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise ProvisioningError("server not started")
        return self._address

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
        limits = self._limits
        family = socket.AF_INET6 if ":" in s.listen_host else socket.AF_INET
        try:
            listener = socket.create_server(
                (s.listen_host, s.listen_port), family=family, backlog=limits.listen_backlog
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {s.listen_host}:{s.listen_port}: {exc.strerror}") from None
        host, port = listener.getsockname()[:2]
        self._address = str(host), int(port)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=limits.max_connections, thread_name_prefix="secret-prov"
        )
        stage_limits = StageLimits(
            handshake_timeout_seconds=limits.handshake_timeout_seconds,
            read_timeout_seconds=limits.read_timeout_seconds,
            max_pending_connections=limits.max_pending_connections,
            max_pending_per_address=limits.max_pending_per_address,
        )
        rate = RateLimiter(limits.rate_limit_per_second, limits.rate_limit_burst)
        self._stage = AdmissionStage(listener, self._context, stage_limits, rate, _Hooks(self))
        self._stage_thread = threading.Thread(
            target=self._stage.run, name="secret-prov-admission", daemon=True
        )
        self._stage_thread.start()
        if s.metrics_host is not None:
            self._start_http(s.metrics_host, s.metrics_port)
        _log.info("secret provisioning listening on %s:%d", *self.address)

    def stop(self) -> None:
        """Stop accepting, let connections in flight finish (each is bounded by its deadlines)."""
        self._stopping.set()
        if self._stage is not None:
            self._stage.stop()
        if self._stage_thread is not None:
            self._stage_thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        summary = self._tally.take(self._settings.clock(), force=True)
        if summary is not None:
            self._write_summary(summary)
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

    # -- refusals of unauthenticated peers: counted, summarised --

    def _count_unauthenticated(self, kind: TallyKind, reason: str, address: str, detail: str) -> bool:
        """Count the refusal; True when it is the first of its kind in this interval (log it then)."""
        return self._tally.add(kind, reason, address, detail, self._settings.clock())

    def _tick(self) -> None:
        summary = self._tally.take(self._settings.clock())
        if summary is not None:
            self._write_summary(summary)

    def _write_summary(self, summary: RefusalSummary) -> None:
        level = logging.WARNING if "connection" in summary.counts else logging.INFO
        _log.log(level, "%s", summary.log_message())
        if self._audit is not None:
            try:
                self._audit.append(summary.audit_record())
            except AuditLogError as exc:
                _log.error("audit log write failed for the summary of refusals: %s", exc)

    # -- one session, after the pre-authentication stage --

    def _run(self, admitted: Admitted) -> None:
        self._metrics.active.inc()
        try:
            self._serve(admitted)
        except Exception:  # a bug must not kill the worker or leak the socket; nothing was released
            _log.exception("unexpected error serving %s", admitted.address)
        finally:
            admitted.sock.close()
            self._metrics.active.dec()
            self._slots.release()
            if self._stage is not None:
                self._stage.worker_freed()

    def _serve(self, admitted: Admitted) -> None:
        session = admitted.session
        peer = f"{admitted.address}:{admitted.port}"
        channel = TlsChannel.adopt(admitted.sock, session.connection, eof=session.eof, unsent=admitted.unsent)
        runtime = self._runtime  # one consistent configuration for the whole session
        assert session.request is not None
        facts = SessionFacts(peer, _peer_certificates(session.connection), session.request)
        outcome = decide(facts, runtime, self._settings.trust, self._settings.clock())
        if outcome.unexpected is not None:
            _log.error("verifier raised unexpectedly", exc_info=outcome.unexpected)
        reply = self._audit_and_reply(session.protocol, outcome, runtime, admitted.address, peer)
        try:
            if reply:
                channel.sendall(reply, time.monotonic() + self._limits.write_timeout_seconds)
            channel.close(time.monotonic() + 1.0)
        except (UnavailableError, TlsError) as exc:
            level = logging.INFO if outcome.authenticated else logging.DEBUG  # anyone can reset
            _log.log(level, "could not deliver the response to %s: %s", peer, exc)
        self._metrics.session_seconds.observe(time.monotonic() - admitted.accepted_at)

    def _audit_and_reply(
        self, protocol: ServerConnection, outcome: Outcome, runtime: Runtime, address: str, peer: str
    ) -> bytes:
        if outcome.audit_record is None:  # not authenticated: counted, not logged one by one
            assert outcome.category is not None
            if self._count_unauthenticated("session", outcome.category, address, outcome.detail):
                _log.info("%s" + _SUMMARISED, outcome.log_message(peer), self._limits.refusal_summary_seconds)
        else:
            if self._audit is not None:
                try:
                    self._audit.append(outcome.audit_record)
                except AuditLogError as exc:
                    _log.error("audit log write failed, refusing: %s", exc)
                    outcome = audit_failed(outcome)
            _log.info("%s", outcome.log_message(peer))
        if outcome.category is not None:
            self._metrics.refusals.labels(outcome.category).inc()
            return protocol.refuse(outcome.peer_reason)
        secrets = [(name, runtime.secrets.get(name) or b"") for name in outcome.released]
        try:
            reply = protocol.grant(
                secrets, floors=outcome.floors, max_lease_seconds=outcome.max_lease_seconds
            )
        except ProtocolError as exc:  # pragma: no cover - the decision matched the request already
            self._metrics.refusals.labels("internal").inc()
            _log.error("cannot encode the grant for %s: %s", peer, exc)
            return protocol.refuse("internal error")
        assert outcome.request is not None
        self._metrics.releases.labels(outcome.request.kind.value).inc()
        self._metrics.secrets_released.inc(len(secrets))
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
                    healthy = server._address is not None and not server._stopping.is_set()
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


class _Hooks:
    """The server's side of the pre-authentication stage (`_admission.AdmissionHooks`)."""

    def __init__(self, server: SecretProvisioningServer) -> None:
        self._server = server
        self._metrics = server._metrics
        self._interval = server._limits.refusal_summary_seconds

    def rejected(self, reason: str, address: str) -> None:
        self._metrics.rejected.labels(reason).inc()
        if self._server._count_unauthenticated("connection", reason, address, f"closed unread: {reason}"):
            _log.warning(_REJECTION_MESSAGES[reason] + _SUMMARISED, address, self._interval)

    def handshake_failed(self, reason: str, detail: str, address: str) -> None:
        self._metrics.handshake_failures.labels(reason).inc()
        if self._server._count_unauthenticated("handshake", reason, address, detail):
            _log.info("handshake with %s: %s" + _SUMMARISED, address, detail, self._interval)

    def handshake_completed(self, seconds: float) -> None:
        self._metrics.handshake_seconds.observe(seconds)

    def pending(self, count: int, waiting: int) -> None:
        self._metrics.pending.set(count)
        self._metrics.waiting.set(waiting)

    def reserve_worker(self) -> bool:
        return self._server._slots.acquire(blocking=False)

    def dispatch(self, admitted: Admitted) -> None:
        pool = self._server._pool
        assert pool is not None
        pool.submit(self._server._run, admitted)

    def tick(self) -> None:
        self._server._tick()
