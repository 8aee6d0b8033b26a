"""TLS material for the front ends, held as bytes (it may have been decrypted in memory only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["PLAINTEXT", "Plaintext", "TlsConfig", "server_tls"]


@dataclass(frozen=True, repr=False)
class TlsConfig:
    """Server certificate chain and key (PEM). With `client_ca_pem`, clients must present a certificate
    issued by that CA (mutual TLS); without it, TLS is one-way. Mirrors TF Serving's SSLConfig
    (server_cert, server_key, custom_ca, client_verify)."""

    cert_chain_pem: bytes
    private_key_pem: bytes
    client_ca_pem: bytes | None = None

    def __post_init__(self) -> None:
        if b"-----BEGIN" not in self.cert_chain_pem or b"-----BEGIN" not in self.private_key_pem:
            raise ValueError("TLS certificate and key must be PEM")
        if self.client_ca_pem is not None and b"-----BEGIN" not in self.client_ca_pem:
            raise ValueError("client CA must be PEM")

    @property
    def require_client_auth(self) -> bool:
        return self.client_ca_pem is not None

    def __repr__(self) -> str:  # never print the key
        return f"TlsConfig(mutual={self.require_client_auth})"


class Plaintext:
    """The one value that makes a front end serve without TLS (`PLAINTEXT`): plaintext is asked for by
    name, never the result of a missing TLS configuration."""

    def __repr__(self) -> str:
        return "PLAINTEXT"


PLAINTEXT: Final = Plaintext()


def server_tls(tls: TlsConfig | Plaintext, transport: str) -> TlsConfig | None:
    """The TLS material a front end serves with, or None for PLAINTEXT; anything else (None included) is
    refused, so no caller gets plaintext by passing nothing."""
    if isinstance(tls, TlsConfig):
        return tls
    if tls is PLAINTEXT:
        return None
    raise TypeError(f"{transport} needs a TlsConfig, or PLAINTEXT to serve without TLS; got {tls!r}")
