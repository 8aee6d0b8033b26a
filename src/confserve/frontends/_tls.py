"""TLS material for the front ends, held as bytes (it may have been decrypted in memory only)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TlsConfig"]


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
