"""Version 2 decisions (keys with release floors): the granted subset of the requested names, each
requested model's floor from the policy, the policy's lease bound, and what the audit log records."""

from __future__ import annotations

import dataclasses
import time

import pytest
from cryptography import x509

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
from confserve.provisioning._decision import Outcome, Runtime, SessionFacts, decide

NOW = int(time.time())
MR_ENCLAVE = bytes.fromhex("11" * 32)
IDENTITY = EnclaveIdentity(mr_enclave=MR_ENCLAVE, mr_signer=b"\x22" * 32, isv_prod_id=1, isv_svn=5)
POLICY = Policy(
    rules=(AllowRule(name="replica", mr_enclave=MR_ENCLAVE, secrets=("default", "digits", "rotated")),),
    allow_simulated=True,
    floors={"digits": 3, "other": 9},
    max_lease_seconds=120,
)
SECRETS = {"default": b"d" * 16, "digits": b"g" * 16, "rotated": b"r" * 16, "foreign": b"f" * 16}


@pytest.fixture(scope="module")
def platform() -> SimPlatform:
    return SimPlatform.create(now=NOW)


@pytest.fixture(scope="module")
def certificate(platform: SimPlatform) -> x509.Certificate:
    return create_ratls_credentials(SimulatedAttester(platform, IDENTITY), RaTlsFormat.TCG_DICE).certificate


def run(
    platform: SimPlatform, certificate: x509.Certificate, request: SecretRequest, policy: Policy = POLICY
) -> Outcome:
    collateral = StaticCollateralSource(Collateral.from_json(platform.collateral_json))
    runtime = Runtime(policy, SecretStore(SECRETS), collateral)
    facts = SessionFacts("192.0.2.1:5000", (certificate,), request)
    return decide(facts, runtime, TrustConfig.simulated(platform.root_ca_der), NOW)


def test_granted_subset_floors_and_lease_bound(platform: SimPlatform, certificate: x509.Certificate) -> None:
    request = SecretRequest(RequestKind.LEASE, ("default", "withdrawn", "digits"), ("digits", "new"))
    outcome = run(platform, certificate, request)
    assert outcome.granted
    assert outcome.released == ("default", "digits")
    assert outcome.floors == (("digits", 3), ("new", 0))
    assert outcome.max_lease_seconds == 120
    record = outcome.audit_record
    assert record is not None
    assert record["protocol"] == "confserve-v2"
    assert record["secrets"] == ["default", "digits"]
    assert record["withheld"] == ["withdrawn"]
    assert record["floors"] == {"digits": 3, "new": 0}
    assert record["models"] == ["digits", "new"]
    assert record["max_lease_seconds"] == 120
    assert "gggg" not in str(record)


def test_every_granted_name_when_none_is_named(platform: SimPlatform, certificate: x509.Certificate) -> None:
    outcome = run(platform, certificate, SecretRequest(RequestKind.LEASE, (), ()))
    assert outcome.released == ("default", "digits", "rotated")
    assert outcome.floors == ()


def test_refused_when_no_requested_name_is_granted(
    platform: SimPlatform, certificate: x509.Certificate
) -> None:
    outcome = run(platform, certificate, SecretRequest(RequestKind.LEASE, ("foreign",), ("digits",)))
    assert (outcome.category, outcome.peer_reason) == ("not_granted", "secret not granted")
    assert outcome.released == ()
    assert outcome.floors == ()  # nothing is sent with a refusal
    assert outcome.audit_record is not None
    assert outcome.audit_record["outcome"] == "refused"


def test_a_policy_refusal_sends_no_floor(platform: SimPlatform, certificate: x509.Certificate) -> None:
    policy = dataclasses.replace(POLICY, rules=(AllowRule(name="x", mr_enclave=b"\x44" * 32),))
    outcome = run(platform, certificate, SecretRequest(RequestKind.LEASE, ("default",), ("digits",)), policy)
    assert outcome.category == "policy"
    assert (outcome.released, outcome.floors, outcome.max_lease_seconds) == ((), (), 0)


def test_version_1_stays_all_or_nothing(platform: SimPlatform, certificate: x509.Certificate) -> None:
    outcome = run(platform, certificate, SecretRequest(RequestKind.EXTENSION, ("default", "withdrawn")))
    assert outcome.category == "not_granted"
    granted = run(platform, certificate, SecretRequest(RequestKind.EXTENSION, ("default",)))
    assert (granted.released, granted.floors, granted.max_lease_seconds) == (("default",), (), 0)
    assert "floors" not in (granted.audit_record or {})


def test_no_lease_bound_is_zero(platform: SimPlatform, certificate: x509.Certificate) -> None:
    policy = dataclasses.replace(POLICY, max_lease_seconds=None)
    outcome = run(platform, certificate, SecretRequest(RequestKind.LEASE, ("default",), ()), policy)
    assert outcome.max_lease_seconds == 0
