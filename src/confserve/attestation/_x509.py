"""X.509 pieces shared by the certificates confserve issues: the simulated platform's PCK chain and the
owner's TLS material (owner/_tls.py)."""

from __future__ import annotations

from typing import Literal, get_args

from cryptography import x509

__all__ = ["KeyUsageBit", "key_usage"]

# The keyUsage bits, by the names of cryptography's `x509.KeyUsage` arguments (RFC 5280 section 4.2.1.3).
KeyUsageBit = Literal[
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
]
_BITS: tuple[KeyUsageBit, ...] = get_args(KeyUsageBit)


def key_usage(*bits: KeyUsageBit) -> x509.KeyUsage:
    """A keyUsage extension with exactly the named bits set: `key_usage("key_cert_sign", "crl_sign")`."""
    unknown = set(bits).difference(_BITS)
    if unknown:
        raise ValueError(f"unknown keyUsage bits {sorted(unknown)}")
    return x509.KeyUsage(**{bit: bit in bits for bit in _BITS})
