"""Client-side TLS: a client bundle (ca.crt, client.crt, client.key) as written by `confserve tls`."""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from confserve.client._errors import ClientError
from confserve.files import MAX_SMALL_FILE_BYTES, open_input, read_input

__all__ = ["ClientTls"]


@dataclass(frozen=True, repr=False)
class ClientTls:
    """Root CA to trust, optional client certificate for mutual TLS, optional server-name override
    (the name the server's certificate must carry when it differs from the address dialled, e.g. the
    reference's grpc.tf-serving.service.com behind a load balancer)."""

    ca_pem: bytes
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ClientError("a client certificate needs its key, and a key its certificate")

    @classmethod
    def from_bundle(cls, bundle: str | os.PathLike[str], *, server_name: str | None = None) -> ClientTls:
        """Read `bundle/ca.crt` and, when present, `bundle/client.crt` + `bundle/client.key` and
        `bundle/server_name` (the name the server's certificate carries, used unless `server_name`
        is given)."""
        root = Path(bundle)
        try:
            ca = read_input(root / "ca.crt", max_bytes=MAX_SMALL_FILE_BYTES)
        except OSError as e:
            raise ClientError(
                f"cannot read the client bundle's CA certificate {root / 'ca.crt'}: {e.strerror}"
            ) from None
        cert, key = root / "client.crt", root / "client.key"
        if cert.exists() != key.exists():
            raise ClientError(f"client bundle {root} has only one of client.crt and client.key")
        if server_name is None:
            server_name = _bundle_server_name(root)
        return cls(ca, cert if cert.exists() else None, key if key.exists() else None, server_name)

    @property
    def mutual(self) -> bool:
        return self.cert_file is not None

    def cert_pem(self) -> bytes | None:
        return read_input(self.cert_file, max_bytes=MAX_SMALL_FILE_BYTES) if self.cert_file else None

    def key_pem(self) -> bytes | None:
        return read_input(self.key_file, max_bytes=MAX_SMALL_FILE_BYTES) if self.key_file else None

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client context (TLS 1.2+), with the client certificate loaded for mutual TLS."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.ca_pem.decode("ascii"))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None and self.key_file is not None:
            for path in (self.cert_file, self.key_file):  # OpenSSL opens them itself: no FIFO or device
                open_input(path, max_bytes=MAX_SMALL_FILE_BYTES).close()
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def __repr__(self) -> str:
        return f"ClientTls(mutual={self.mutual}, server_name={self.server_name!r})"


_SERVER_NAME_FILE = "server_name"  # written by `confserve tls` (owner/_tls.py SERVER_NAME_FILE)
_DNS_NAME = re.compile(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _bundle_server_name(root: Path) -> str | None:
    path = root / _SERVER_NAME_FILE
    try:
        with open_input(path) as handle:
            raw = handle.read(256)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ClientError(f"cannot read {path}: {e.strerror}") from None
    name = raw.decode("ascii", errors="replace").strip()
    if not _DNS_NAME.fullmatch(name):
        raise ClientError(f"{path} does not hold a DNS name")
    return name
