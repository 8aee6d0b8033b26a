"""Server evidence for clients: bound to the client's nonce and the server's TLS key, never replayable."""

from __future__ import annotations

import base64
import json

import pytest

from confserve.attestation import (
    Collateral,
    SimPlatform,
    SimulatedAttester,
    TrustConfig,
    VerificationError,
    verify,
)
from confserve.attestation._evidence import (
    EVIDENCE_VERSION,
    evidence_report_data,
    make_evidence,
    new_nonce,
    parse_evidence_request,
    verify_server_evidence,
)
from tests.unit.attestation.dcap_helpers import IDENTITY, SIM_NOW

SPKI = b"server spki der"


@pytest.fixture(scope="module")
def platform() -> SimPlatform:
    return SimPlatform.create(now=SIM_NOW)


def _verifier(platform: SimPlatform, *, use_server_collateral: bool = True):  # type: ignore[no-untyped-def]
    trust = TrustConfig.simulated(platform.root_ca_der)

    def check(quote: bytes, collateral_json: str | None) -> object:
        if use_server_collateral:
            assert collateral_json is not None
            return verify(quote, Collateral.from_json(collateral_json), trust, SIM_NOW)
        return verify(quote, platform.collateral, trust, SIM_NOW)

    return check


def test_round_trip(platform: SimPlatform) -> None:
    nonce = new_nonce()
    body = make_evidence(SimulatedAttester(platform, IDENTITY), nonce, SPKI, platform.collateral_json)
    assert json.loads(body)["version"] == EVIDENCE_VERSION
    evidence = verify_server_evidence(body, nonce, SPKI, _verifier(platform))
    assert evidence.identity == IDENTITY
    assert evidence.report_data == evidence_report_data(nonce, SPKI)
    # Without server collateral the client brings its own.
    body = make_evidence(SimulatedAttester(platform, IDENTITY), nonce, SPKI, None)
    assert verify_server_evidence(body, nonce, SPKI, _verifier(platform, use_server_collateral=False))


def test_replayed_evidence_and_other_keys_are_refused(platform: SimPlatform) -> None:
    nonce = new_nonce()
    body = make_evidence(SimulatedAttester(platform, IDENTITY), nonce, SPKI, platform.collateral_json)
    with pytest.raises(VerificationError, match="not bound to this session"):
        verify_server_evidence(body, new_nonce(), SPKI, _verifier(platform))
    with pytest.raises(VerificationError, match="not bound to this session"):
        verify_server_evidence(body, nonce, b"another key", _verifier(platform))


def test_untrusted_collateral_cannot_rescue_a_foreign_quote(platform: SimPlatform) -> None:
    other = SimPlatform.create(now=SIM_NOW)
    nonce = new_nonce()
    body = make_evidence(SimulatedAttester(other, IDENTITY), nonce, SPKI, other.collateral_json)
    with pytest.raises(VerificationError):
        verify_server_evidence(body, nonce, SPKI, _verifier(platform))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"version": "other", "quote": ""}).encode(),
        json.dumps({"version": EVIDENCE_VERSION}).encode(),
        json.dumps({"version": EVIDENCE_VERSION, "quote": "***"}).encode(),
        json.dumps({"version": EVIDENCE_VERSION, "quote": "", "collateral": "x"}).encode(),
        json.dumps({"version": EVIDENCE_VERSION, "quote": base64.b64encode(b"short").decode()}).encode(),
        b"{" + b" " * (2 << 20) + b"}",
    ],
)
def test_malformed_evidence(platform: SimPlatform, body: bytes) -> None:
    with pytest.raises(VerificationError):
        verify_server_evidence(body, new_nonce(), SPKI, _verifier(platform))


def test_evidence_requests() -> None:
    nonce = new_nonce()
    assert parse_evidence_request(json.dumps({"nonce": nonce.hex()}).encode()) == nonce
    for bad in (b"", b"{}", b'{"nonce": "zz"}', b'{"nonce": "00"}', b'{"nonce": 1}',
                json.dumps({"nonce": nonce.hex(), "x": 1}).encode(), b"x" * 2000):  # fmt: skip
        with pytest.raises(VerificationError):
            parse_evidence_request(bad)
    with pytest.raises(VerificationError, match="32 bytes"):
        evidence_report_data(b"short", SPKI)
