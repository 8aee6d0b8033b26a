"""The in-enclave client: attest with RA-TLS, fetch named secrets, keep them in memory only.

Behaviour follows Gramine's `libsecret_prov_attest.so` (docs/formats.md#sp-client, #sp-tls) where it matters
for interoperability, and improves on it where Gramine gives up early:

* servers come from a `SECRET_PROVISION_SERVERS`-style list (separators `,` `;` or space; `host:port`;
  entries missing host or port skipped; default `localhost:4433`);
* the server's certificate must chain to the CA file (`SECRET_PROVISION_CA_CHAIN_PATH`) and name the host
  string exactly as listed (SAN dNSName/iPAddress, else CN, as mbedTLS checks it); the host is also sent
  as SNI unless it is an IP address;
* each attempt makes a fresh RA-TLS key and certificate with the enclave's attester, as Gramine does; the
  private key lives only in memory (pyOpenSSL takes the key object; nothing is written to disk);
* failover: Gramine tries the list once and stops at the first TCP connect. Here, connect failures and a
  connection that breaks before the response move on to the next server, and after a full round the
  client waits (exponential backoff, capped) and starts again, until the deadline. A server certificate
  that does not verify, a refusal or a protocol error is final: retrying would not change it.

`SecretProvisioningClient.request()` returns `{name: bytes}`. `provision_key()` is
`SECRET_PROVISION_SET_KEY`: it writes a 16-byte key to `/dev/attestation/keys/<name>` through a
`KeyInstaller` (tests pass a fake).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from cryptography import x509

from confserve.attestation import AttestationError, Attester, RaTlsFormat, create_ratls_credentials
from confserve.pf import WrapKey
from confserve.provisioning._errors import (
    ConfigError,
    ProtocolError,
    ProvisioningError,
    RefusedError,
    TlsError,
    UnavailableError,
)
from confserve.provisioning._protocol import (
    DEFAULT_PORT,
    DEFAULT_SECRET_NAME,
    ClientConnection,
    Granted,
    Refused,
    check_secret_name,
)
from confserve.provisioning._tls import TlsChannel, check_hostname, client_context, load_ca_certificates

__all__ = [
    "DEFAULT_SERVERS",
    "ClientSettings",
    "DevAttestationKeys",
    "KeyInstaller",
    "SecretProvisioningClient",
    "ServerAddress",
    "fetch_wrap_key",
    "parse_server_list",
    "request_secrets",
]

DEFAULT_SERVERS: Final = f"localhost:{DEFAULT_PORT}"  # Gramine's default (docs/formats.md#sp-client)
KEY_SIZE: Final = 16  # SECRET_PROVISION_SET_KEY requires exactly 16 bytes (docs/formats.md#sp-client)
_SEPARATORS: Final = re.compile(r"[,; ]")
_KEY_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # a file name under keys/
_TRUTHY: Final = ("1", "true", "TRUE")  # Gramine's reading of SECRET_PROVISION_SET_PF_KEY


@dataclass(frozen=True, slots=True)
class ServerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_server_list(text: str) -> tuple[ServerAddress, ...]:
    """`SECRET_PROVISION_SERVERS` syntax. Entries without host or port are skipped, as Gramine does; a
    port that is not a number in 1..65535, or a list with no usable entry, is a ConfigError."""
    servers: list[ServerAddress] = []
    for item in _SEPARATORS.split(text):
        host, _, port = item.partition(":")
        if not host or not port:
            continue
        if not port.isdigit() or not 1 <= int(port) <= 0xFFFF:
            raise ConfigError(f"server list entry {item!r}: port must be a number in 1..65535")
        servers.append(ServerAddress(host, int(port)))
    if not servers:
        raise ConfigError(f"server list {text!r} names no host:port")
    return tuple(servers)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Client configuration. Every limit is a default a caller may tighten."""

    servers: tuple[ServerAddress, ...]
    ca_certificates: tuple[x509.Certificate, ...]
    set_key: str | None = None  # SECRET_PROVISION_SET_KEY: install the secret as /dev/attestation/keys/NAME
    ratls_format: RaTlsFormat = RaTlsFormat.TCG_DICE  # what Gramine v1.8+ makes (P-384, both extensions)
    deadline_seconds: float = 60.0  # whole operation, retries included: a restarting service comes back
    connect_timeout_seconds: float = 5.0
    io_timeout_seconds: float = 10.0  # handshake, and the response after the request
    initial_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 5.0
    # While it keeps failing, the client logs a "still waiting" line (attempt, last reason, time left) on
    # the first failed round and then at most this often: a replica waiting minutes for its key says so.
    progress_interval_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not self.servers:
            raise ConfigError("no secret-provisioning server configured")
        if not self.ca_certificates:
            raise ConfigError("no CA certificate to verify the server with")
        times = (
            self.deadline_seconds,
            self.connect_timeout_seconds,
            self.io_timeout_seconds,
            self.initial_backoff_seconds,
            self.max_backoff_seconds,
            self.progress_interval_seconds,
        )
        if min(times) <= 0:
            raise ConfigError("deadline, timeouts and backoff must be positive")
        if self.set_key is not None and not _KEY_NAME_RE.fullmatch(self.set_key):
            raise ConfigError("SECRET_PROVISION_SET_KEY must be a plain key name")

    @classmethod
    def from_files(cls, servers: str, ca_path: str | os.PathLike[str], **options: object) -> ClientSettings:
        return cls(
            servers=parse_server_list(servers),
            ca_certificates=tuple(load_ca_certificates(os.fspath(ca_path))),
            **options,  # type: ignore[arg-type]
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, **options: object) -> ClientSettings:
        """Gramine's variables: SECRET_PROVISION_SERVERS (default localhost:4433),
        SECRET_PROVISION_CA_CHAIN_PATH (required), SECRET_PROVISION_SET_KEY, and the v1.3 alias
        SECRET_PROVISION_SET_PF_KEY (truthy means SET_KEY=default)."""
        env = os.environ if environ is None else environ
        ca_path = env.get("SECRET_PROVISION_CA_CHAIN_PATH")
        if not ca_path:
            raise ConfigError("SECRET_PROVISION_CA_CHAIN_PATH is not set")
        set_key = env.get("SECRET_PROVISION_SET_KEY") or None
        if set_key is None and env.get("SECRET_PROVISION_SET_PF_KEY") in _TRUTHY:
            set_key = DEFAULT_SECRET_NAME
        options.setdefault("set_key", set_key)
        return cls.from_files(env.get("SECRET_PROVISION_SERVERS") or DEFAULT_SERVERS, ca_path, **options)


_log = logging.getLogger("confserve.provisioning.client")


class KeyInstaller(Protocol):
    """Where `provision_key` puts a 16-byte key (Gramine: /dev/attestation/keys/<name>)."""

    def install(self, name: str, key: bytes) -> None: ...


class DevAttestationKeys:
    """Gramine's /dev/attestation/keys: one `write` of the 16 raw bytes; the key name must already exist
    (declared in the manifest), or opening it fails (docs/formats.md#pf-wrap-key)."""

    def __init__(self, root: Path = Path("/dev/attestation/keys")) -> None:
        self._root = root

    def install(self, name: str, key: bytes) -> None:
        try:
            fd = os.open(self._root / name, os.O_WRONLY)
        except OSError as exc:
            raise ProvisioningError(f"cannot open key {name!r} under {self._root}: {exc.strerror}") from None
        try:
            written = os.write(fd, key)
        except OSError as exc:
            raise ProvisioningError(f"cannot write key {name!r}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if written != len(key):
            raise ProvisioningError(f"short write of key {name!r}")


class _Retry(Exception):
    """This server is unreachable or went away before answering: try the next one."""


class SecretProvisioningClient:
    """Attested secret retrieval. `attester` is a `GramineAttester` in an enclave or a
    `SimulatedAttester`; `cancel` (an Event) aborts retries early."""

    def __init__(
        self,
        settings: ClientSettings,
        attester: Attester,
        *,
        cancel: threading.Event | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._attester = attester
        self._cancel = cancel or threading.Event()
        self._monotonic = monotonic
        self.attempts = 0  # connection attempts made by the last request (for diagnostics and tests)

    def request(self, names: Sequence[str] = (), *, gramine: bool = False) -> dict[str, bytes]:
        """Secrets by name: `names`, or every secret granted when empty. `gramine=True` speaks Gramine's
        own request and returns {"default": secret}. Raises RefusedError, TlsError, ProtocolError or
        UnavailableError (deadline passed)."""
        granted = self._exchange(lambda: ClientConnection(names, gramine=gramine))
        return dict(granted.secrets)

    def lease(self, names: Sequence[str], models: Sequence[str]) -> Granted:
        """Version 2 (docs/releases.md): the requested secrets the policy grants (some may be left out),
        the release floor of each of `models`, and the owner's lease bound. Raises as `request`."""
        return self._exchange(lambda: ClientConnection(names, models=models))

    def _exchange(self, protocol: Callable[[], ClientConnection]) -> Granted:
        protocol()  # validate the names before any network traffic
        s = self._settings
        deadline = self._monotonic() + s.deadline_seconds
        backoff = s.initial_backoff_seconds
        last = "no attempt made"
        next_report = 0.0  # the first failed round is reported at once
        self.attempts = 0
        while True:
            for server in s.servers:
                if self._monotonic() >= deadline:
                    break
                self.attempts += 1
                try:
                    return self._attempt(server, protocol(), deadline)
                except _Retry as exc:
                    last = f"{server}: {exc}"
            now = self._monotonic()
            remaining = deadline - now
            if remaining <= 0:
                raise UnavailableError(f"no secret-provisioning server answered in time (last: {last})")
            if now >= next_report:
                _log.info(
                    "still waiting for secret provisioning: attempt %d, last: %s; %.0f s left",
                    self.attempts,
                    last,
                    remaining,
                )
                next_report = now + s.progress_interval_seconds
            if self._cancel.wait(min(backoff, remaining)):
                raise UnavailableError("cancelled")
            backoff = min(backoff * 2, s.max_backoff_seconds)

    def _attempt(self, server: ServerAddress, protocol: ClientConnection, deadline: float) -> Granted:
        s = self._settings
        timeout = min(s.connect_timeout_seconds, max(deadline - self._monotonic(), 0.001))
        try:
            sock = socket.create_connection((server.host, server.port), timeout=timeout)
        except OSError as exc:
            raise _Retry(f"connect failed: {exc.strerror or type(exc).__name__}") from None
        try:
            try:
                credentials = create_ratls_credentials(self._attester, s.ratls_format)
            except AttestationError as exc:
                raise ProvisioningError(f"cannot create the RA-TLS certificate: {exc}") from None
            context = client_context(s.ca_certificates, credentials.certificate, credentials.private_key)
            channel = TlsChannel(sock, context, server_side=False, server_hostname=server.host)
            io_deadline = min(deadline, self._monotonic() + s.io_timeout_seconds)
            try:
                channel.handshake(io_deadline)
            except UnavailableError as exc:
                raise _Retry(str(exc)) from None
            peer = channel.connection.get_peer_certificate(as_cryptography=True)
            if peer is None:  # pragma: no cover - VERIFY_PEER makes OpenSSL fail the handshake first
                raise TlsError("server sent no certificate")
            check_hostname(peer, server.host)
            channel.sendall(protocol.request_bytes(), io_deadline)
            io_deadline = min(deadline, self._monotonic() + s.io_timeout_seconds)
            outcome: Granted | Refused | None = None
            while outcome is None:
                data = channel.recv(io_deadline)
                outcome = protocol.receive_data(data) if data else protocol.end_of_data()
            channel.close(self._monotonic() + 1.0)
        finally:
            sock.close()
        if isinstance(outcome, Granted):
            return outcome
        reason = outcome.reason or "connection closed without a response"
        raise RefusedError(f"{server} refused: {reason}")

    def fetch_wrap_key(self, name: str = DEFAULT_SECRET_NAME, *, gramine: bool = False) -> WrapKey:
        """The protected-files wrap key released to this enclave (secret `name`, 16 bytes): the model
        server's call. `gramine=True` speaks Gramine's own request (then `name` must be `default`)."""
        check_secret_name(name)
        value = self.request([name], gramine=gramine)[name]
        if len(value) != KEY_SIZE:
            raise ProtocolError(f"secret {name!r} is not a {KEY_SIZE}-byte wrap key")
        return WrapKey(value)

    def provision_key(
        self,
        installer: KeyInstaller | None = None,
        *,
        key_name: str | None = None,
        secret_name: str = DEFAULT_SECRET_NAME,
        gramine: bool = False,
    ) -> None:
        """SECRET_PROVISION_SET_KEY: fetch `secret_name` (16 bytes) and install it as `key_name` (default:
        the settings' set_key). `gramine=True` asks with Gramine's own request (for a Gramine server,
        which knows only its one secret)."""
        name = key_name or self._settings.set_key
        if name is None or not _KEY_NAME_RE.fullmatch(name):
            raise ConfigError("no valid key name to install (SECRET_PROVISION_SET_KEY)")
        key = self.fetch_wrap_key(secret_name, gramine=gramine)
        (installer or DevAttestationKeys()).install(name, key.raw())


def request_secrets(
    settings: ClientSettings, attester: Attester, names: Sequence[str] = (), *, gramine: bool = False
) -> dict[str, bytes]:
    """One-call form of `SecretProvisioningClient(settings, attester).request(names)`."""
    return SecretProvisioningClient(settings, attester).request(names, gramine=gramine)


def fetch_wrap_key(
    settings: ClientSettings, attester: Attester, name: str = DEFAULT_SECRET_NAME, *, gramine: bool = False
) -> WrapKey:
    """One-call form of `SecretProvisioningClient(settings, attester).fetch_wrap_key(name)`."""
    return SecretProvisioningClient(settings, attester).fetch_wrap_key(name, gramine=gramine)
