"""Mutation fuzzing of DCAP quotes and collateral: Intel's real SGX vector (at its fixed `now`), the TDX
vectors, and a simulated platform's quote and collateral.

`verify` raises only `AttestationError`s. A mutated quote never verifies: every byte of an SGX quote is
authenticated (signatures over header and body, the QE report binding the attestation key, the PCK chain
checked up to the pinned root, the strict PEM grammar of the certification data). A mutated collateral
verifies only if what is authenticated in it is unchanged: the signed TCB info and QE identity text, the
signatures' and CRLs' values (hex is case-insensitive), and the signing certificate of each issuer chain.
The bytes that carry nothing are listed in docs/threat-model.md (the PCK CRL's issuer chain, which
dcap-qvl does not read, and the copies of the root at the end of the issuer chains, which it does not use:
chains are anchored at the pinned root).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confserve.attestation import (
    AttestationError,
    Collateral,
    SimPlatform,
    TrustConfig,
    VerifiedEvidence,
    verify,
)
from tests.adversarial._fuzz import Budget, mutate, rng_for
from tests.unit.attestation.dcap_helpers import IDENTITY, REPORT_DATA, SGX_NOW, SIM_NOW, TDX_NOW, dcap_vectors

_HEX_FIELDS = ("root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature")
_SIGNED_TEXT = ("tcb_info", "qe_identity")
_CHAINS = ("tcb_info_issuer_chain", "qe_identity_issuer_chain")
_PEM_END = "-----END CERTIFICATE-----"


@dataclass(frozen=True)
class Vector:
    name: str
    quote: bytes
    collateral_json: str
    trust: TrustConfig
    now: int

    def verify(self, quote: bytes, collateral: Collateral | None = None) -> VerifiedEvidence:
        return verify(quote, collateral or Collateral.from_json(self.collateral_json), self.trust, self.now)


@pytest.fixture(scope="module")
def vectors() -> list[Vector]:
    platform = SimPlatform.create(now=SIM_NOW)
    real = dcap_vectors()
    return [
        Vector(
            "intel-sgx",
            (real / "sgx_quote").read_bytes(),
            (real / "sgx_quote_collateral.json").read_text(),
            TrustConfig.intel(),
            SGX_NOW,
        ),
        Vector(
            "simulated",
            platform.quote(REPORT_DATA, IDENTITY),
            platform.collateral.to_json(),
            TrustConfig.simulated(platform.root_ca_der),
            SIM_NOW,
        ),
    ]


def _authenticated_content(collateral_json: str) -> Any:
    """What verification depends on in a collateral (None if it cannot even be read)."""
    try:
        obj = json.loads(collateral_json)
        content: dict[str, Any] = {name: obj[name] for name in _SIGNED_TEXT}
        content.update({name: bytes.fromhex(obj[name]) for name in _HEX_FIELDS})
        for name in _CHAINS:
            first = obj[name].split(_PEM_END)[0] + _PEM_END  # what follows the signer carries nothing
            content[name] = x509.load_pem_x509_certificate(first.encode()).public_bytes(
                serialization.Encoding.DER
            )
        if "pck_certificate_chain" in obj:
            content["pck_certificate_chain"] = obj["pck_certificate_chain"]
    except (ValueError, KeyError, TypeError, AttributeError, x509.InvalidVersion):
        return None
    return content


def _mutate_field(collateral_json: str, rng: random.Random) -> tuple[str, str]:
    """A structure-aware mutation: one field's value changed, the JSON kept valid (so it reaches the
    verifier), and for the signed JSON texts a change inside them that keeps them valid JSON too."""
    obj = json.loads(collateral_json)
    name = rng.choice(sorted(obj))
    value = obj[name]
    if name in _SIGNED_TEXT and rng.random() < 0.5:
        inner = json.loads(value)
        key = rng.choice(sorted(inner))
        inner[key] = rng.choice([None, 0, -1, 2**64, "", "UpToDate", "Revoked", [], {}, inner[key]])
        obj[name] = json.dumps(inner)
        return json.dumps(obj), f"{name}.{key} replaced"
    raw = value.encode()
    mutation = mutate(raw, rng)
    obj[name] = mutation.data.decode("latin-1")
    return json.dumps(obj), f"{name}: {mutation.description}"


def _outcome(
    vector: Vector, evidence: VerifiedEvidence, quote: bytes, collateral_json: str
) -> tuple[str, bool]:
    """(what happened, accepted). Raises AssertionError for a foreign exception."""
    try:
        collateral = Collateral.from_json(collateral_json)
        got = vector.verify(quote, collateral)
    except AttestationError as exc:
        return type(exc).__name__, False
    except Exception as exc:
        raise AssertionError(f"{vector.name}: {type(exc).__name__}: {exc}") from exc
    assert got == evidence, f"{vector.name}: accepted with different evidence"
    return "accepted", True


def test_mutated_quotes_never_verify(vectors: list[Vector], budget: Budget) -> None:
    rng = rng_for("dcap-quote", 1)
    counts: Counter[str] = Counter()
    cases = budget.cases(3000, 100000)
    for vector in vectors:
        evidence = vector.verify(vector.quote)
        for case in range(cases // len(vectors)):
            mutation = mutate(vector.quote, rng)
            try:
                outcome, accepted = _outcome(vector, evidence, mutation.data, vector.collateral_json)
            except AssertionError as exc:
                raise AssertionError(f"case {case}, {mutation.description}: {exc}") from None
            assert not accepted, (
                f"{vector.name} case {case}: a mutated quote verified ({mutation.description})"
            )
            counts[outcome] += 1
    print(f"dcap quotes: {cases} cases, outcomes {dict(counts)}")


def test_mutated_tdx_quotes_are_refused_by_type(budget: Budget) -> None:
    """confserve verifies SGX quotes only; mutated TDX quotes are refused with its own errors too."""
    real = dcap_vectors()
    quote = (real / "tdx_quote").read_bytes()
    collateral = Collateral.from_json((real / "tdx_quote_collateral.json").read_text())
    rng = rng_for("dcap-tdx", 1)
    for case in range(budget.cases(300, 10000)):
        mutation = mutate(quote, rng)
        with pytest.raises(AttestationError):
            verify(mutation.data, collateral, TrustConfig.intel(), TDX_NOW)
        assert case >= 0


def test_mutated_collateral_changes_no_verdict(vectors: list[Vector], budget: Budget) -> None:
    rng = rng_for("dcap-collateral", 1)
    counts: Counter[str] = Counter()
    cases = budget.cases(3000, 60000)
    for vector in vectors:
        evidence = vector.verify(vector.quote)
        original = _authenticated_content(vector.collateral_json)
        assert original is not None
        for case in range(cases // len(vectors)):
            if rng.random() < 0.5:
                mutation = mutate(vector.collateral_json.encode(), rng)
                text, description = mutation.data.decode("utf-8", "replace"), mutation.description
            else:
                text, description = _mutate_field(vector.collateral_json, rng)
            try:
                outcome, accepted = _outcome(vector, evidence, vector.quote, text)
            except AssertionError as exc:
                raise AssertionError(f"case {case}, {description}: {exc}") from None
            if accepted:
                assert _authenticated_content(text) == original, (
                    f"{vector.name} case {case}: collateral accepted with a changed authenticated part "
                    f"({description})"
                )
            counts[outcome] += 1
    print(f"dcap collateral: {cases} cases, outcomes {dict(counts)}")


def test_the_bytes_that_carry_nothing_are_what_the_threat_model_says(vectors: list[Vector]) -> None:
    """Shown directly on the real vector: garbage in the PCK CRL's issuer chain and in the root copies
    changes nothing; the same garbage in a signing certificate or a signed text is refused."""
    vector = vectors[0]
    evidence = vector.verify(vector.quote)
    obj = json.loads(vector.collateral_json)
    obj["pck_crl_issuer_chain"] = "not read"
    assert vector.verify(vector.quote, Collateral.from_json(json.dumps(obj))) == evidence
    obj = json.loads(vector.collateral_json)
    for name in _CHAINS:
        certs = x509.load_pem_x509_certificates(obj[name].encode())
        assert len(certs) == 2
        obj[name] = certs[0].public_bytes(serialization.Encoding.PEM).decode()  # the root copy dropped
    assert vector.verify(vector.quote, Collateral.from_json(json.dumps(obj))) == evidence
    obj = json.loads(vector.collateral_json)
    obj["qe_identity"] = obj["qe_identity"].replace('"version":2', '"version":3')
    with pytest.raises(AttestationError):
        vector.verify(vector.quote, Collateral.from_json(json.dumps(obj)))
