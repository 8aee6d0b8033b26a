"""Mutation fuzzing of RA-TLS certificates of every Gramine generation.

Two kinds of mutation. Raw: bit flips, truncations and the like of the DER; the self-signature covers
every field, so nothing is ever accepted. Structured: one field of the to-be-signed certificate (version,
serial, algorithm, names, validity, key, each extension's bytes) changed and the certificate signed again
with its own key, which reaches the parsers behind the signature check: a change of the key or of the
evidence in use is never accepted; a change elsewhere (names, validity, serial, an unused extension) may
be, with the same enclave identity, since the evidence binds only the key. Either way only
`AttestationError`s are raised, never another exception.
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from collections.abc import Callable
from functools import partial

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning

from confserve.attestation import (
    AttestationError,
    RaTlsCredentials,
    RaTlsFormat,
    SimPlatform,
    TrustConfig,
    VerifiedEvidence,
    create_ratls_credentials,
    verify,
    verify_ratls_certificate,
)
from confserve.attestation._attester import SimulatedAttester
from confserve.attestation._ratls import LEGACY_QUOTE_OID, TCG_DICE_EVIDENCE_OID
from tests.adversarial import _der
from tests.adversarial._fuzz import Budget, mutate, rng_for
from tests.unit.attestation.dcap_helpers import IDENTITY, SIM_NOW

TBS_FIELDS = ("version", "serial", "signature", "issuer", "validity", "subject", "key", "extensions")
KEY_FIELD, EXTENSIONS_FIELD = 6, 7


@pytest.fixture(scope="module")
def platform() -> SimPlatform:
    return SimPlatform.create(now=SIM_NOW)


@pytest.fixture(scope="module")
def verifier(platform: SimPlatform) -> Callable[[bytes], VerifiedEvidence]:
    quote_verifier = partial(
        verify, collateral=platform.collateral, trust=TrustConfig.simulated(platform.root_ca_der), now=SIM_NOW
    )
    return partial(verify_ratls_certificate, verify_quote=quote_verifier)


@pytest.fixture(scope="module")
def credentials(platform: SimPlatform) -> dict[RaTlsFormat, RaTlsCredentials]:
    attester = SimulatedAttester(platform, IDENTITY)
    return {fmt: create_ratls_credentials(attester, fmt) for fmt in RaTlsFormat}


def _verdict(verify_cert: Callable[[bytes], VerifiedEvidence], der: bytes) -> VerifiedEvidence | str:
    """The evidence, or the error's class. A foreign exception fails the test (cryptography's warning
    about a non-positive serial number is allowed: it is a warning in production, not an error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            return verify_cert(der)
        except AttestationError as exc:
            return type(exc).__name__


def _sign(tbs: bytes, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, outer: _der.Node) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = outer.children[1].encode()
    body = tbs + algorithm + _der.Node(0x03, b"\x00" + signature).encode()
    return bytes((0x30,)) + _der.encode_length(len(body)) + body


def _evidence_oid(fmt: RaTlsFormat) -> x509.ObjectIdentifier:
    return TCG_DICE_EVIDENCE_OID if fmt is RaTlsFormat.TCG_DICE else LEGACY_QUOTE_OID


def _same_enclave(got: VerifiedEvidence, want: VerifiedEvidence) -> bool:
    return (got.identity, got.tcb_status, got.debug, got.simulated) == (
        want.identity,
        want.tcb_status,
        want.debug,
        want.simulated,
    )


def test_raw_mutations_never_verify(
    credentials: dict[RaTlsFormat, RaTlsCredentials],
    verifier: Callable[[bytes], VerifiedEvidence],
    budget: Budget,
) -> None:
    rng = rng_for("ratls-raw", 1)
    counts: Counter[str] = Counter()
    cases = budget.cases(1200, 40000)
    for case in range(cases):
        fmt = rng.choice(list(RaTlsFormat))
        mutation = mutate(credentials[fmt].certificate_der(), rng)
        verdict = _verdict(verifier, mutation.data)
        assert isinstance(verdict, str), (
            f"case {case} {fmt.name}: a mutated certificate verified ({mutation.description})"
        )
        counts[verdict] += 1
    print(f"RA-TLS raw: {cases} cases, outcomes {dict(counts)}")


def _structured_case(
    rng: random.Random, creds: RaTlsCredentials, fmt: RaTlsFormat
) -> tuple[bytes, str, bool]:
    """(certificate, description, may_verify): one TBS leaf mutated, signed again with the cert's key."""
    cert = x509.load_der_x509_certificate(creds.certificate_der())
    outer = _der.parse(creds.certificate_der())
    tbs = outer.children[0]
    path, leaf = rng.choice(_der.leaves(tbs))
    field = path[0]
    may_verify = field != KEY_FIELD
    where = TBS_FIELDS[field] if field < len(TBS_FIELDS) else f"field {field}"
    if field == EXTENSIONS_FIELD:
        extension = cert.extensions[path[2]]
        part = (
            "value"
            if path[3] == len(tbs.children[field].children[0].children[path[2]].children) - 1
            else "oid/flag"
        )
        where = f"extension {extension.oid.dotted_string} {part}"
        # A changed OID only hides the extension: a TCG DICE certificate then falls back to its legacy
        # evidence, as genuine as the DICE one. A changed value of the evidence in use must be refused.
        may_verify = not (extension.oid == _evidence_oid(fmt) and part == "value")
    original = leaf.content
    leaf.content = mutate(original, rng).data if original else bytes((rng.getrandbits(8),))
    description = f"{fmt.name} {where} at {path}"
    return _sign(tbs.encode(), creds.private_key, outer), description, may_verify


def test_structured_mutations_bind_the_key_and_evidence(
    credentials: dict[RaTlsFormat, RaTlsCredentials],
    verifier: Callable[[bytes], VerifiedEvidence],
    budget: Budget,
) -> None:
    rng = rng_for("ratls-structured", 1)
    counts: Counter[str] = Counter()
    cases = budget.cases(600, 20000)
    originals = {fmt: verifier(creds.certificate_der()) for fmt, creds in credentials.items()}
    for case in range(cases):
        fmt = rng.choice(list(RaTlsFormat))
        der, description, may_verify = _structured_case(rng, credentials[fmt], fmt)
        verdict = _verdict(verifier, der)
        if isinstance(verdict, str):
            counts[verdict] += 1
            continue
        counts["accepted"] += 1
        assert may_verify, f"case {case}: accepted a change of {description}"
        assert _same_enclave(verdict, originals[fmt]), f"case {case}: another enclave after {description}"
    print(f"RA-TLS structured: {cases} cases, outcomes {dict(counts)}")


def test_evidence_lifted_into_another_key_never_verifies(
    credentials: dict[RaTlsFormat, RaTlsCredentials], verifier: Callable[[bytes], VerifiedEvidence]
) -> None:
    """The forger's move: keep the evidence, put in their own key, sign with it."""
    for fmt, creds in credentials.items():
        outer = _der.parse(creds.certificate_der())
        tbs = outer.children[0]
        forger = (
            rsa.generate_private_key(65537, 3072)
            if isinstance(creds.private_key, rsa.RSAPrivateKey)
            else ec.generate_private_key(ec.SECP384R1())
        )
        spki = forger.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        tbs.children[KEY_FIELD] = _der.parse(spki)
        verdict = _verdict(verifier, _sign(tbs.encode(), forger, outer))
        assert verdict == "VerificationError", fmt
