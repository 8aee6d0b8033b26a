"""TLS for secret provisioning: pyOpenSSL contexts and a memory-BIO channel driven over a socket.

Why pyOpenSSL: the server must request the enclave's self-signed RA-TLS certificate and accept it at the TLS
layer whatever its issuer (its authority is the quote inside, checked afterwards; docs/formats.md#sp-tls). The
standard `ssl` module cannot do that (`CERT_REQUIRED` always builds a chain to a trusted CA), and it cannot
take the enclave's fresh private key from memory either; pyOpenSSL can do both
(`set_verify(..., callback -> True)`, `use_privatekey(<cryptography key>)`).

Why memory BIOs: OpenSSL never touches the socket. `TlsChannel` moves ciphertext between the socket and
OpenSSL itself, with a deadline on every socket operation; there is no blocking call without a timeout.
The client uses it for a whole session. The server drives the handshake and the request read without
blocking in its pre-authentication stage (`_admission.PreAuthSession`, over the same memory BIOs), so a
silent peer holds no thread at all, and a worker continues the session with `TlsChannel.adopt` to answer.

Session resumption is off on both sides (no tickets, no cache): every session carries a fresh RA-TLS
certificate and a fresh quote.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from confserve.provisioning._errors import ConfigError, TlsError, UnavailableError

__all__ = [
    "RECV_BYTES",
    "TlsChannel",
    "check_hostname",
    "client_context",
    "describe_tls_error",
    "load_ca_certificates",
    "load_certificate_chain",
    "load_private_key",
    "server_context",
]

RECV_BYTES: Final = 16 * 1024  # one TLS record
_MAX_PEM_BYTES: Final = 1 << 20  # certificate and key files are a few KB
_T = TypeVar("_T")


def _read_bounded(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path!r}: {exc.strerror}") from None
    if len(data) > _MAX_PEM_BYTES:
        raise ConfigError(f"{what} {path!r} is larger than {_MAX_PEM_BYTES} bytes")
    return data


def load_certificate_chain(path: str) -> list[x509.Certificate]:
    """PEM certificates (leaf first), or one DER certificate."""
    data = _read_bounded(path, "certificate file")
    try:
        certs = (
            x509.load_pem_x509_certificates(data)
            if b"-----BEGIN" in data
            else [x509.load_der_x509_certificate(data)]
        )
    except ValueError:
        raise ConfigError(f"{path!r} is not a PEM or DER certificate file") from None
    return certs


def load_ca_certificates(path: str) -> list[x509.Certificate]:
    """The CA file of SECRET_PROVISION_CA_CHAIN_PATH: PEM (one or more certificates) or DER."""
    return load_certificate_chain(path)


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def load_private_key(path: str) -> PrivateKey:
    data = _read_bounded(path, "private key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path!r} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path!r}: the server key must be RSA or EC")
    return key


def _base_context(method: int) -> SSL.Context:
    ctx = SSL.Context(method)
    # Gramine v1.3.1 speaks TLS 1.2 only (docs/formats.md#sp-tls)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return ctx


def _accept_any_certificate(*_args: Any) -> bool:
    # The RA-TLS certificate is self-signed; it is verified after the handshake, before any secret byte.
    # OpenSSL still checks the client's CertificateVerify signature (proof of possession of the key).
    return True


def server_context(chain: Sequence[x509.Certificate], key: PrivateKey) -> SSL.Context:
    """TLS 1.2-1.3 server context: present `chain`, require a client certificate, accept any one."""
    if not chain:
        raise ConfigError("the server certificate file holds no certificate")
    ctx = _base_context(SSL.TLS_SERVER_METHOD)
    try:
        ctx.use_certificate(chain[0])
        for cert in chain[1:]:
            ctx.add_extra_chain_cert(cert)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except SSL.Error:
        raise ConfigError("the server key does not match the server certificate") from None
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any_certificate)
    return ctx


def client_context(
    ca_certs: Sequence[x509.Certificate], certificate: x509.Certificate, key: PrivateKey
) -> SSL.Context:
    """TLS 1.2-1.3 client context: present the RA-TLS certificate (key in memory only) and require a
    server chain to one of `ca_certs` (the hostname is checked after the handshake)."""
    if not ca_certs:
        raise ConfigError("the CA file holds no certificate")
    ctx = _base_context(SSL.TLS_CLIENT_METHOD)
    store = ctx.get_cert_store()
    assert store is not None
    for ca in ca_certs:
        store.add_cert(crypto.X509.from_cryptography(ca))
    ctx.use_certificate(certificate)
    ctx.use_privatekey(key)
    ctx.set_verify(SSL.VERIFY_PEER)
    return ctx


def _dns_match(pattern: str, host: str) -> bool:
    """RFC 6125 matching, as mbedTLS does it: case-insensitive, a `*` only as the whole leftmost label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:] and "." in pattern[2:]
    return pattern == host


def check_hostname(cert: x509.Certificate, host: str) -> None:
    """The server certificate must name `host`: SAN dNSName / iPAddress if a SAN is present, else CN
    (mbedTLS's rule, which Gramine's client uses; docs/formats.md#sp-tls). Raises TlsError."""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        if address is not None:
            ok = address in san.get_values_for_type(x509.IPAddress)
        else:
            ok = any(_dns_match(name, host) for name in san.get_values_for_type(x509.DNSName))
    else:
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        ok = any(isinstance(n, str) and _dns_match(n, host) for n in names)
    if not ok:
        raise TlsError(f"server certificate does not match host name {host!r}")


class TlsChannel:
    """One TLS connection over a connected socket, with deadlines (time.monotonic() values).

    Transport failures (EOF, reset, timeout) raise `UnavailableError`; TLS failures `TlsError`.
    """

    def __init__(
        self,
        sock: socket.socket,
        context: SSL.Context,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sock = sock
        self._monotonic = monotonic
        self._conn = SSL.Connection(context, None)
        if server_side:
            self._conn.set_accept_state()
        else:
            if server_hostname is not None and not _is_ip(server_hostname):
                self._conn.set_tlsext_host_name(server_hostname.encode("idna"))
            self._conn.set_connect_state()
        self._eof = False
        self._unsent = b""

    @classmethod
    def adopt(
        cls,
        sock: socket.socket,
        connection: SSL.Connection,
        *,
        eof: bool,
        unsent: bytes = b"",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> TlsChannel:
        """Continue a connection whose handshake was driven elsewhere (the server's pre-authentication
        stage): `connection` uses memory BIOs, `eof` says whether the peer's EOF was already fed to it, and
        `unsent` holds ciphertext taken from it that the socket did not take yet (sent first)."""
        channel = cls.__new__(cls)
        channel._sock = sock
        channel._monotonic = monotonic
        channel._conn = connection
        channel._eof = eof
        channel._unsent = unsent
        return channel

    @property
    def connection(self) -> SSL.Connection:
        return self._conn

    def _remaining(self, deadline: float) -> float:
        left = deadline - self._monotonic()
        if left <= 0:
            raise UnavailableError("timed out")
        return left

    def _socket_call(self, deadline: float, call: Callable[[], _T], timed_out: str, lost: str) -> _T:
        """One socket call within the deadline: a timeout or a broken connection is UnavailableError,
        saying `timed_out`, or `lost` and why."""
        self._sock.settimeout(self._remaining(deadline))
        try:
            return call()
        except TimeoutError:
            raise UnavailableError(timed_out) from None
        except OSError as exc:
            raise UnavailableError(f"{lost}: {exc.strerror}") from None

    def _flush(self, deadline: float) -> None:
        while True:
            if self._unsent:
                data, self._unsent = self._unsent, b""
            else:
                try:
                    data = self._conn.bio_read(RECV_BYTES)
                except SSL.WantReadError:
                    return
            view = memoryview(data)
            while view:
                sent = self._socket_call(
                    deadline,
                    functools.partial(self._sock.send, view),
                    "timed out sending",
                    "connection lost while sending",
                )
                view = view[sent:]

    def _fill(self, deadline: float) -> None:
        if self._eof:
            raise UnavailableError("connection closed by peer")
        data = self._socket_call(
            deadline,
            functools.partial(self._sock.recv, RECV_BYTES),
            "timed out waiting for the peer",
            "connection lost",
        )
        if data:
            self._conn.bio_write(data)
        else:
            self._eof = True
            self._conn.bio_shutdown()

    def handshake(self, deadline: float) -> None:
        while True:
            try:
                self._conn.do_handshake()
            except SSL.WantReadError:
                self._flush(deadline)
                self._fill(deadline)
                continue
            except SSL.Error as exc:
                self._flush_quietly(deadline)
                if self._eof:
                    raise UnavailableError("connection closed during the TLS handshake") from None
                raise TlsError(f"TLS handshake failed: {describe_tls_error(exc)}") from None
            self._flush(deadline)
            return

    def recv(self, deadline: float) -> bytes:
        """Some plaintext, or b"" when the peer closed (close_notify or EOF)."""
        while True:
            try:
                return self._conn.recv(RECV_BYTES)
            except SSL.WantReadError:
                self._flush(deadline)
                try:
                    self._fill(deadline)
                except UnavailableError:
                    if self._eof:
                        return b""
                    raise
            except SSL.ZeroReturnError:
                return b""
            except SSL.SysCallError:
                return b""  # EOF without close_notify: the protocol layer decides if that truncated
            except SSL.Error as exc:
                raise TlsError(f"TLS error: {describe_tls_error(exc)}") from None

    def sendall(self, data: bytes, deadline: float) -> None:
        if data:
            try:
                self._conn.sendall(data)
            except SSL.Error as exc:
                raise TlsError(f"TLS error: {describe_tls_error(exc)}") from None
        self._flush(deadline)

    def _flush_quietly(self, deadline: float) -> None:
        with contextlib.suppress(UnavailableError):
            self._flush(deadline)

    def close(self, deadline: float) -> None:
        """Send close_notify (best effort) and close the socket."""
        try:
            with contextlib.suppress(SSL.Error):
                self._conn.shutdown()
            self._flush_quietly(deadline)
        finally:
            self._sock.close()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def describe_tls_error(exc: SSL.Error) -> str:
    """OpenSSL's reason strings (public protocol facts; no key material)."""
    args = exc.args[0] if exc.args else None
    if isinstance(args, list):
        reasons = [str(item[2]) for item in args if isinstance(item, tuple) and len(item) == 3]
        if reasons:
            return "; ".join(reasons)[:200]
    return type(exc).__name__
