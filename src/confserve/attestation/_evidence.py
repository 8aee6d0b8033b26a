"""Server evidence for clients: proof that a TLS endpoint is an approved enclave, before any data is sent.

Protocol (confserve's own; TF Serving has no equivalent):

1. The client completes a TLS handshake with the server as usual and notes the SHA-256 of the
   certificate's SubjectPublicKeyInfo (the key that terminates TLS).
2. It sends a fresh 32-byte nonce: gRPC method `/confserve.Attestation/GetEvidence` (request body: the
   JSON below) or REST `POST /confserve/v1/evidence`, body `{"nonce": "<64 hex digits>"}`.
3. The server answers `{"version": "confserve-evidence-v1", "quote": "<base64>", "collateral": <JSON
   or null>}`, where the quote's report_data is

       SHA-256("confserve server evidence v1" || 0x00 || nonce || SHA-256(server SPKI)) || 32 zero bytes

4. The client verifies the quote (its own trust root; the collateral may come from the server, since it
   is signed under that root and checked for freshness), checks report_data against its nonce and the
   SPKI it saw, and applies its policy.

The nonce defeats replay of an old quote; the SPKI hash ties the quote to the key that ends the client's
TLS session, so a quote lifted from another endpoint does not verify. The TLS private key itself is
provisioned only to approved enclaves (it is inside the encrypted ssl.cfg), which is what makes "holds
this key" mean "is an approved enclave".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from confserve.attestation._attester import Attester
from confserve.attestation._errors import QuoteFormatError, VerificationError
from confserve.attestation._structs import MAX_QUOTE_BYTES, parse_quote_v3
from confserve.attestation._types import VerifiedEvidence

__all__ = [
    "EVIDENCE_VERSION",
    "NONCE_SIZE",
    "ServerEvidence",
    "evidence_report_data",
    "make_evidence",
    "new_nonce",
    "parse_evidence_request",
    "verify_server_evidence",
]

EVIDENCE_VERSION: Final = "confserve-evidence-v1"
NONCE_SIZE: Final = 32
_CONTEXT: Final = b"confserve server evidence v1\x00"
_MAX_EVIDENCE_JSON: Final = 4 * MAX_QUOTE_BYTES + 256 * 1024  # base64 quote plus collateral (~30-60 KB)


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def evidence_report_data(nonce: bytes, server_spki: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise VerificationError(f"the evidence nonce must be {NONCE_SIZE} bytes")
    digest = hashlib.sha256(_CONTEXT + nonce + hashlib.sha256(server_spki).digest()).digest()
    return digest + bytes(32)


def parse_evidence_request(body: bytes) -> bytes:
    """The nonce of an evidence request body; VerificationError for anything else (bounded, strict)."""
    if len(body) > 1024:
        raise VerificationError("evidence request too large")
    try:
        request = json.loads(body)
        nonce = bytes.fromhex(request["nonce"]) if isinstance(request, dict) and len(request) == 1 else b""
    except (ValueError, KeyError, TypeError):
        raise VerificationError('evidence request must be {"nonce": "<64 hex digits>"}') from None
    if len(nonce) != NONCE_SIZE:
        raise VerificationError('evidence request must be {"nonce": "<64 hex digits>"}')
    return nonce


def make_evidence(attester: Attester, nonce: bytes, server_spki: bytes, collateral_json: str | None) -> bytes:
    """The server's answer (JSON bytes) for `nonce`, binding the TLS key with SPKI `server_spki`."""
    quote = attester.quote(evidence_report_data(nonce, server_spki))
    body = {
        "version": EVIDENCE_VERSION,
        "quote": base64.b64encode(quote).decode(),
        "collateral": None if collateral_json is None else json.loads(collateral_json),
    }
    return json.dumps(body).encode()


@dataclass(frozen=True, slots=True)
class ServerEvidence:
    quote: bytes
    collateral_json: str | None


def _parse_evidence(body: bytes) -> ServerEvidence:
    if len(body) > _MAX_EVIDENCE_JSON:
        raise VerificationError("server evidence is too large")
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or data.get("version") != EVIDENCE_VERSION:
            raise VerificationError(f"server evidence is not {EVIDENCE_VERSION}")
        quote = base64.b64decode(data["quote"], validate=True)
        collateral = data.get("collateral")
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise VerificationError("server evidence is not valid JSON evidence") from None
    if collateral is not None and not isinstance(collateral, dict):
        raise VerificationError("server evidence collateral must be an object")
    return ServerEvidence(quote, None if collateral is None else json.dumps(collateral))


def verify_server_evidence(
    body: bytes,
    nonce: bytes,
    server_spki: bytes,
    verify_quote: Callable[[bytes, str | None], VerifiedEvidence],
) -> VerifiedEvidence:
    """Check the server's answer: report_data binds our nonce and the TLS key we saw, then verify the
    quote with `verify_quote(quote, server_collateral_json)`. Policy is the caller's next step."""
    evidence = _parse_evidence(body)
    try:
        report_data = parse_quote_v3(evidence.quote).report_body.report_data
    except QuoteFormatError as e:
        raise VerificationError(f"server evidence quote is malformed: {e}") from None
    if report_data != evidence_report_data(nonce, server_spki):
        raise VerificationError(
            "server evidence is not bound to this session (stale nonce or another TLS key): refusing"
        )
    return verify_quote(evidence.quote, evidence.collateral_json)
