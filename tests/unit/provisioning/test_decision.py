"""The key service's decision without sockets: parsed inputs and a clock in, an outcome and its record out."""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from confserve.attestation import (
    AllowRule,
    Collateral,
    EnclaveIdentity,
    Policy,
    RaTlsFormat,
    SimPlatform,
    SimulatedAttester,
    StaticCollateralSource,
    TrustConfig,
    create_ratls_credentials,
)
from confserve.provisioning import RequestKind, SecretRequest, SecretStore
from confserve.provisioning._decision import (
    REFUSAL_CATEGORIES,
    Outcome,
    ReadFailure,
    RefusalTally,
    Runtime,
    SessionFacts,
    audit_failed,
    decide,
    iso_time,
)

NOW = int(time.time())
PEER = "192.0.2.7:40000"
WRAP_KEY = bytes.fromhex("8f0e7a1c2b3d4e5f60718293a4b5c6d7")
TLS_KEY = b"model tls key bytes"
SECRETS = {"default": WRAP_KEY, "tls-key": TLS_KEY, "other": b"another tenant's secret"}
MR_ENCLAVE = bytes.fromhex("11" * 32)
GOOD = EnclaveIdentity(mr_enclave=MR_ENCLAVE, mr_signer=b"\x22" * 32, isv_prod_id=1, isv_svn=5)
POLICY = Policy(
    rules=(
        AllowRule(
            name="model-server",
            mr_enclave=MR_ENCLAVE,
            isv_prod_id=1,
            min_isv_svn=5,
            secrets=("default", "tls-key"),
        ),
        AllowRule(name="other-tenant", mr_enclave=b"\x33" * 32, secrets=("other",)),
    ),
    allow_simulated=True,
)
ALL = SecretRequest(RequestKind.EXTENSION, ())
GRAMINE = SecretRequest(RequestKind.GRAMINE, ("default",))
# What a peer may be told: short, generic, the same for every peer.
GENERIC = {
    "attestation failed",
    "refused by policy",
    "secret not granted",
    "secret not available",
    "protocol error",
    "timed out",
    "internal error",
}


@pytest.fixture(scope="module")
def platform() -> SimPlatform:
    return SimPlatform.create(now=NOW)


@pytest.fixture(scope="module")
def runtime(platform: SimPlatform) -> Runtime:
    collateral = StaticCollateralSource(Collateral.from_json(platform.collateral_json))
    return Runtime(POLICY, SecretStore(SECRETS), collateral)


@pytest.fixture(scope="module")
def trust(platform: SimPlatform) -> TrustConfig:
    return TrustConfig.simulated(platform.root_ca_der)


def ratls(platform: SimPlatform, identity: EnclaveIdentity = GOOD, **kw: Any) -> x509.Certificate:
    attester = SimulatedAttester(platform, identity, **kw)
    return create_ratls_credentials(attester, RaTlsFormat.TCG_DICE).certificate


def self_signed() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RATLS")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2001, 1, 1))
        .not_valid_after(datetime.datetime(2030, 12, 31))
        .sign(key, hashes.SHA256())
    )


def facts(*certificates: x509.Certificate, request: SecretRequest | ReadFailure = ALL) -> SessionFacts:
    return SessionFacts(PEER, certificates, request)


def assert_refused(outcome: Outcome, category: str) -> None:
    assert outcome.category == category
    assert outcome.category in REFUSAL_CATEGORIES
    assert not outcome.granted
    assert outcome.released == ()
    assert outcome.peer_reason in GENERIC


def assert_no_secret(record: dict[str, Any] | None) -> None:
    text = json.dumps(record)
    for value in SECRETS.values():
        assert value.hex() not in text
        assert value.decode("latin-1") not in text


# -- granted ----------------------------------------------------------------------------------------------


def test_approved_identity_gets_every_granted_secret_and_an_audit_record(
    platform: SimPlatform, runtime: Runtime, trust: TrustConfig
) -> None:
    outcome = decide(facts(ratls(platform)), runtime, trust, NOW)
    assert outcome.granted
    assert outcome.authenticated
    assert outcome.released == ("default", "tls-key")
    assert outcome.unexpected is None
    record = outcome.audit_record
    assert record == {
        "kind": "session",
        "time": iso_time(NOW),
        "peer": PEER,
        "protocol": "confserve",
        "requested": [],
        "outcome": "released",
        "identity": {
            "mr_enclave": MR_ENCLAVE.hex(),
            "mr_signer": ("22" * 32),
            "isv_prod_id": 1,
            "isv_svn": 5,
        },
        "tcb_status": "UpToDate",
        "advisory_ids": [],
        "simulated": True,
        "debug": False,
        "rule": "model-server",
        "secrets": ["default", "tls-key"],
    }
    assert_no_secret(record)
    message = outcome.log_message(PEER)
    assert message.startswith(f"released default, tls-key to {PEER} (accepted by rule 'model-server'")
    assert MR_ENCLAVE.hex() in message


def test_gramine_request_gets_its_one_secret(
    platform: SimPlatform, runtime: Runtime, trust: TrustConfig
) -> None:
    outcome = decide(facts(ratls(platform), request=GRAMINE), runtime, trust, NOW)
    assert outcome.released == ("default",)
    assert outcome.audit_record is not None
    assert outcome.audit_record["protocol"] == "gramine"
    assert outcome.audit_record["requested"] == ["default"]


def test_named_request_gets_exactly_those_names(
    platform: SimPlatform, runtime: Runtime, trust: TrustConfig
) -> None:
    request = SecretRequest(RequestKind.EXTENSION, ("tls-key",))
    assert decide(facts(ratls(platform), request=request), runtime, trust, NOW).released == ("tls-key",)


# -- refused, authenticated (audited one by one) -----------------------------------------------------------


def test_policy_refusal_tells_the_peer_little_and_the_log_everything(
    platform: SimPlatform, runtime: Runtime, trust: TrustConfig
) -> None:
    old = dataclasses.replace(GOOD, isv_svn=4)
    outcome = decide(facts(ratls(platform, old)), runtime, trust, NOW)
    assert_refused(outcome, "policy")
    assert outcome.authenticated
    assert outcome.peer_reason == "refused by policy"
    assert "isv_svn 4 below minimum 5" in outcome.detail
    record = outcome.audit_record
    assert record is not None
    assert record["outcome"] == "refused"
    assert record["category"] == "policy"
    assert record["reason"] == outcome.detail
    assert record["identity"]["isv_svn"] == 4
    assert "secrets" not in record
    assert outcome.log_message(PEER) == f"refused {PEER}: {outcome.detail}"


def test_name_not_granted_refuses_the_whole_request(
    platform: SimPlatform, runtime: Runtime, trust: TrustConfig
) -> None:
    request = SecretRequest(RequestKind.EXTENSION, ("default", "other"))
    outcome = decide(facts(ratls(platform), request=request), runtime, trust, NOW)
    assert_refused(outcome, "not_granted")
    assert outcome.detail == "secret 'other' not granted by rule 'model-server'"
    assert outcome.peer_reason == "secret not granted"
    assert outcome.audit_record is not None


def test_granted_but_not_loaded_is_unavailable(
    platform: SimPlatform, runtime: Runtime, trust: TrustConfig
) -> None:
    partial = dataclasses.replace(runtime, secrets=SecretStore({"default": WRAP_KEY}))
    request = SecretRequest(RequestKind.EXTENSION, ("tls-key",))
    outcome = decide(facts(ratls(platform), request=request), partial, trust, NOW)
    assert_refused(outcome, "unavailable")
    assert outcome.detail == "secret 'tls-key' not loaded"


@pytest.mark.parametrize(
    ("failure", "category", "peer_reason"),
    [
        (ReadFailure.protocol("request too long"), "protocol", "protocol error"),
        (ReadFailure.timeout("timed out waiting for the peer"), "timeout", "timed out"),
    ],
)
def test_a_failed_request_is_named_first_and_audited_when_the_peer_attested(
    platform: SimPlatform,
    runtime: Runtime,
    trust: TrustConfig,
    failure: ReadFailure,
    category: str,
    peer_reason: str,
) -> None:
    outcome = decide(facts(ratls(platform), request=failure), runtime, trust, NOW)
    assert_refused(outcome, category)
    assert outcome.peer_reason == peer_reason
    assert outcome.detail == failure.detail
    assert outcome.request is None
    assert outcome.audit_record is not None
    assert outcome.audit_record["requested"] is None
    assert outcome.audit_record["identity"]["mr_enclave"] == MR_ENCLAVE.hex()
    # The same failure from a peer whose evidence does not verify: refused, but not audited one by one.
    anonymous = decide(facts(self_signed(), request=failure), runtime, trust, NOW)
    assert_refused(anonymous, category)
    assert anonymous.audit_record is None


# -- refused, unauthenticated (counted, not audited one by one) ----------------------------------------


@pytest.mark.parametrize("count", [0, 2])
def test_not_exactly_one_certificate(
    platform: SimPlatform, runtime: Runtime, trust: TrustConfig, count: int
) -> None:
    certificates = [ratls(platform) for _ in range(count)]
    outcome = decide(facts(*certificates), runtime, trust, NOW)
    assert_refused(outcome, "certificate")
    assert f"client sent {count} certificates" in outcome.detail
    assert outcome.peer_reason == "attestation failed"
    assert not outcome.authenticated
    assert outcome.audit_record is None


def test_certificate_without_evidence(runtime: Runtime, trust: TrustConfig) -> None:
    outcome = decide(facts(self_signed()), runtime, trust, NOW)
    assert_refused(outcome, "attestation")
    assert "not an RA-TLS certificate" in outcome.detail
    assert outcome.audit_record is None
    assert outcome.decision is None


def test_the_injected_clock_decides_whether_collateral_is_current(
    platform: SimPlatform, runtime: Runtime, trust: TrustConfig
) -> None:
    certificate = ratls(platform)
    assert decide(facts(certificate), runtime, trust, NOW).granted
    later = NOW + 31 * 86400  # the simulated collateral lives 30 days
    outcome = decide(facts(certificate), runtime, trust, later)
    assert_refused(outcome, "attestation")
    assert "CrlExpired" in outcome.detail or "expired" in outcome.detail.lower()


def test_debug_and_untrusted_platforms_are_not_authenticated(
    platform: SimPlatform, runtime: Runtime, trust: TrustConfig
) -> None:
    for certificate in (ratls(platform, debug=True), ratls(SimPlatform.create(now=NOW))):
        outcome = decide(facts(certificate), runtime, trust, NOW)
        assert_refused(outcome, "attestation")
        assert outcome.audit_record is None


def test_unexpected_verifier_error_fails_closed(
    platform: SimPlatform, runtime: Runtime, trust: TrustConfig
) -> None:
    class Broken:
        def get(self, quote: bytes, now: int) -> Collateral:
            raise RuntimeError("collateral backend exploded")

    outcome = decide(facts(ratls(platform)), dataclasses.replace(runtime, collateral=Broken()), trust, NOW)
    assert_refused(outcome, "internal")
    assert outcome.detail == "verification error: RuntimeError"
    assert outcome.peer_reason == "attestation failed"
    assert isinstance(outcome.unexpected, RuntimeError)
    assert outcome.audit_record is None


def test_audit_failure_refuses_whatever_was_decided(
    platform: SimPlatform, runtime: Runtime, trust: TrustConfig
) -> None:
    granted = decide(facts(ratls(platform)), runtime, trust, NOW)
    outcome = audit_failed(granted)
    assert_refused(outcome, "audit")
    assert outcome.peer_reason == "internal error"
    assert outcome.detail == "audit log unavailable"
    assert outcome.audit_record is None
    assert outcome.evidence is granted.evidence


# -- the tally of unauthenticated refusals --------------------------------------------------------------


def test_tally_logs_the_first_of_each_kind_and_summarises_once_per_interval() -> None:
    tally = RefusalTally(60)
    assert tally.take(NOW, force=True) is None  # nothing counted
    assert tally.add("handshake", "tls", "192.0.2.1", "TLS handshake failed: x", NOW)
    assert not tally.add("handshake", "tls", "192.0.2.1", "TLS handshake failed: x", NOW + 1)
    assert tally.add("connection", "rate_limited", "192.0.2.2", "closed unread: rate_limited", NOW + 2)
    assert tally.add("session", "attestation", "192.0.2.1", "attestation failed: y", NOW + 3)
    assert tally.take(NOW + 59) is None  # the interval runs from the first refusal counted
    summary = tally.take(NOW + 60)
    assert summary is not None
    assert summary.total == 4
    assert summary.counts == {
        "connection": {"rate_limited": 1},
        "handshake": {"tls": 2},
        "session": {"attestation": 1},
    }
    assert summary.peers == {"192.0.2.1": 3, "192.0.2.2": 1}
    assert summary.details["TLS handshake failed: x"] == 2
    record = summary.audit_record()
    assert record["kind"] == "unauthenticated_summary"
    assert (record["since"], record["time"]) == (iso_time(NOW), iso_time(NOW + 60))
    assert record["total"] == 4
    assert "refused 4 unauthenticated connections" in summary.log_message()
    assert "handshake tls: 2" in summary.log_message()
    # Reset: the next refusal is a first again, and a new interval starts with it.
    assert tally.take(NOW + 500, force=True) is None
    assert tally.add("handshake", "tls", "192.0.2.1", "TLS handshake failed: x", NOW + 100)
    assert tally.take(NOW + 120) is None
    forced = tally.take(NOW + 121, force=True)
    assert forced is not None
    assert forced.total == 1


def test_tally_memory_is_bounded() -> None:
    tally = RefusalTally(60, max_keys=2)
    for i in range(50):
        tally.add("session", "attestation", f"192.0.2.{i}", f"detail {i}", NOW)
    summary = tally.take(NOW, force=True)
    assert summary is not None
    assert summary.peers == {"192.0.2.0": 1, "192.0.2.1": 1, "(other)": 48}
    assert sum(summary.details.values()) == 50
    assert len(summary.details) == 3
    with pytest.raises(ValueError, match="positive"):
        RefusalTally(0)
    with pytest.raises(ValueError, match="positive"):
        RefusalTally(60, max_keys=0)
