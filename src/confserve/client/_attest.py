"""The attested client: before any data is sent, prove that the TLS endpoint is an approved enclave.

Steps (protocol in `confserve.attestation._evidence`): a TLS handshake with the target, verified like
the data channel (same CA, same server name, same client certificate), gives the server's public key;
a fresh nonce goes to the evidence endpoint over the chosen protocol; the answer must be a quote that
binds that nonce and that key, verifies under the trust root the client chose (Intel's, or a simulated
platform's when the client says so), and passes the client's policy. Any failure raises before a single
input tensor is sent. Collateral may come from the server (it is signed under the trust root and
checked for freshness) or from the client's own source.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confserve.attestation import (
    AttestationError,
    Collateral,
    Decision,
    Policy,
    TrustConfig,
    VerifiedEvidence,
    new_nonce,
    verify,
    verify_server_evidence,
)
from confserve.client._errors import ClientError
from confserve.client._tls import ClientTls

__all__ = ["AttestationCheck", "AttestedServer", "fetch_server_spki"]


def fetch_server_spki(target: str, tls: ClientTls, timeout: float = 10.0) -> bytes:
    """The SubjectPublicKeyInfo of the certificate the server presents, verified as the data channel is."""
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            tls.ssl_context().wrap_socket(raw, server_hostname=tls.server_name or host) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
    except (OSError, ValueError, ssl.SSLError) as e:
        raise ClientError(f"TLS handshake with {target} for attestation failed: {e}") from None
    if der is None:  # pragma: no cover - a verified TLS session always has a peer certificate
        raise ClientError(f"{target} presented no certificate")
    return (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@dataclass(frozen=True)
class AttestationCheck:
    """What the client trusts: a root (Intel's unless told otherwise), a policy, optional collateral."""

    policy: Policy
    trust: TrustConfig
    collateral: Collateral | None = None  # used when the server sends none
    clock: Callable[[], int] = lambda: int(time.time())


@dataclass(frozen=True)
class AttestedServer:
    evidence: VerifiedEvidence
    decision: Decision
    spki_sha256: str


def attest_server(
    target: str,
    tls: ClientTls,
    check: AttestationCheck,
    get_evidence: Callable[[bytes], bytes],
) -> AttestedServer:
    """Run the steps in the module docstring; `get_evidence(request_json) -> response_json` is the
    transport's evidence call. Raises ClientError unless the server is an approved enclave."""
    spki = fetch_server_spki(target, tls)
    nonce = new_nonce()

    def verify_quote(quote: bytes, server_collateral: str | None) -> VerifiedEvidence:
        if server_collateral is not None:
            collateral = Collateral.from_json(server_collateral)
        elif check.collateral is not None:
            collateral = check.collateral
        else:
            raise ClientError("the server sent no collateral and none was configured")
        return verify(quote, collateral, check.trust, check.clock())

    body = get_evidence(b'{"nonce": "' + nonce.hex().encode() + b'"}')
    try:
        evidence = verify_server_evidence(body, nonce, spki, verify_quote)
    except AttestationError as e:
        raise ClientError(f"server attestation failed: {e}") from None
    decision = check.policy.evaluate(evidence)
    if not decision.accepted:
        raise ClientError(f"server attestation refused by policy: {decision.reason}")
    return AttestedServer(evidence, decision, hashlib.sha256(spki).hexdigest())
