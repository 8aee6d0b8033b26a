"""RA-TLS certificates: every Gramine generation round trips; the binding of quote to key is enforced;
a valid quote lifted into another certificate, tampered evidence and odd keys are all refused."""

from __future__ import annotations

import hashlib
from functools import partial

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from confserve.attestation import SimPlatform, TrustConfig, VerificationError, verify
from confserve.attestation._attester import SimulatedAttester
from confserve.attestation._ratls import (
    LEGACY_QUOTE_OID,
    TCG_DICE_EVIDENCE_OID,
    RaTlsFormat,
    create_ratls_credentials,
    ratls_report_data,
    verify_ratls_certificate,
)
from confserve.attestation._structs import parse_quote_v3
from tests.unit.attestation.dcap_helpers import IDENTITY, SIM_NOW


@pytest.fixture(scope="module")
def platform() -> SimPlatform:
    return SimPlatform.create(now=SIM_NOW)


@pytest.fixture(scope="module")
def attester(platform: SimPlatform) -> SimulatedAttester:
    return SimulatedAttester(platform, IDENTITY)


@pytest.fixture(scope="module")
def verifier(platform: SimPlatform) -> partial[object]:
    return partial(
        verify,
        collateral=platform.collateral,
        trust=TrustConfig.simulated(platform.root_ca_der),
        now=SIM_NOW,
    )


@pytest.fixture(scope="module", params=list(RaTlsFormat))
def creds(request: pytest.FixtureRequest, attester: SimulatedAttester) -> object:
    return create_ratls_credentials(attester, request.param)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _rebuild(
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    replace: dict[x509.ObjectIdentifier, bytes] | None = None,
    drop: tuple[x509.ObjectIdentifier, ...] = (),
    public_key: object = None,
    critical: bool = False,
) -> x509.Certificate:
    """The same certificate with some extensions replaced or dropped, re-signed by `key`."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .public_key(public_key or key.public_key())  # type: ignore[arg-type]
    )
    for ext in cert.extensions:
        if ext.oid in drop:
            continue
        value = ext.value
        if replace and ext.oid in replace:
            value = x509.UnrecognizedExtension(ext.oid, replace[ext.oid])
        builder = builder.add_extension(
            value, critical=critical if ext.oid in (replace or {}) else ext.critical
        )
    return builder.sign(key, hashes.SHA256())


def test_round_trip_every_format(creds: object, verifier: partial[object]) -> None:
    evidence = verify_ratls_certificate(creds.certificate_der(), verifier)  # type: ignore[attr-defined]
    assert evidence.identity == IDENTITY
    assert evidence.simulated
    assert evidence.report_data[32:] == bytes(32)
    # PEM input works too.
    assert verify_ratls_certificate(creds.certificate_pem(), verifier) == evidence  # type: ignore[attr-defined]


def test_gramine_certificate_shape(creds: object) -> None:
    cert: x509.Certificate = creds.certificate  # type: ignore[attr-defined]
    assert cert.version == x509.Version.v3
    assert cert.serial_number == 1
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "C=US,O=GramineDevelopers,CN=RATLS"
    assert cert.not_valid_before_utc.year == 2001
    assert cert.not_valid_after_utc.isoformat() == "2030-12-31T23:59:59+00:00"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    legacy = cert.extensions.get_extension_for_oid(LEGACY_QUOTE_OID)
    assert not legacy.critical
    # Byte-exact placement of the legacy extension as Gramine writes it (docs/formats.md#ratls-legacy), long-form length.
    der = cert.public_bytes(serialization.Encoding.DER)
    marker = bytes.fromhex("060b06092a864886f84d8a3906") + b"\x04\x82"
    at = der.index(marker)
    length = int.from_bytes(der[at + len(marker) : at + len(marker) + 2], "big")
    quote = der[at + len(marker) + 2 : at + len(marker) + 2 + length]
    assert quote == legacy.value.value  # type: ignore[attr-defined]
    assert parse_quote_v3(quote).report_body.report_data == ratls_report_data(
        hashlib.sha256(_spki(cert)).digest()
    )
    if isinstance(cert.public_key(), rsa.RSAPublicKey):
        assert len(_spki(cert)) == 422  # Gramine v1.3.1's verifier insists on this size
    else:
        assert len(_spki(cert)) == 120  # P-384


def test_dice_evidence_layout(attester: SimulatedAttester) -> None:
    creds = create_ratls_credentials(attester, RaTlsFormat.TCG_DICE)
    value = creds.certificate.extensions.get_extension_for_oid(TCG_DICE_EVIDENCE_OID).value.value  # type: ignore[attr-defined]
    assert value[:3] == bytes.fromhex("d9ea60")  # tag 60000
    tagged = cbor2.loads(value)
    quote2, claims = tagged.value
    assert claims[:13] == bytes.fromhex("a16b") + b"pubkey-hash"
    assert len(claims) == 51
    entry = cbor2.loads(cbor2.loads(claims)["pubkey-hash"])
    assert entry == [1, hashlib.sha256(_spki(creds.certificate)).digest()]
    assert parse_quote_v3(quote2).report_body.report_data == ratls_report_data(
        hashlib.sha256(claims).digest()
    )


def test_quote_lifted_into_another_certificate_is_refused(
    attester: SimulatedAttester, verifier: partial[object]
) -> None:
    for fmt in (RaTlsFormat.LEGACY_EC, RaTlsFormat.TCG_DICE):
        victim = create_ratls_credentials(attester, fmt).certificate
        thief_key = ec.generate_private_key(ec.SECP384R1())
        forged = _rebuild(victim, thief_key)  # same extensions (valid quotes), the thief's key
        with pytest.raises(VerificationError, match="does not match"):
            verify_ratls_certificate(forged, verifier)


def test_key_not_matching_report_data_is_refused(platform: SimPlatform, verifier: partial[object]) -> None:
    class WrongDataAttester:
        simulated = True

        def quote(self, report_data: bytes) -> bytes:
            return SimulatedAttester(platform, IDENTITY).quote(bytes(64))

    with pytest.raises(VerificationError, match="report_data does not match"):
        verify_ratls_certificate(
            create_ratls_credentials(WrongDataAttester(), RaTlsFormat.LEGACY_EC).certificate, verifier
        )


def test_nonzero_upper_report_data_is_refused(platform: SimPlatform, verifier: partial[object]) -> None:
    class SloppyAttester:
        simulated = True

        def quote(self, report_data: bytes) -> bytes:
            return SimulatedAttester(platform, IDENTITY).quote(report_data[:32] + b"\x01" * 32)

    with pytest.raises(VerificationError, match="report_data"):
        verify_ratls_certificate(
            create_ratls_credentials(SloppyAttester(), RaTlsFormat.LEGACY_EC).certificate, verifier
        )


def test_quote_verification_failure_propagates(attester: SimulatedAttester) -> None:
    creds = create_ratls_credentials(attester, RaTlsFormat.LEGACY_EC)
    with pytest.raises(VerificationError):
        verify_ratls_certificate(
            creds.certificate, partial(verify, collateral=None, trust=TrustConfig.intel(), now=SIM_NOW)
        )


def test_plain_certificates_and_garbage_are_refused(verifier: partial[object]) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([])
    plain = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .serial_number(7)
        .not_valid_before(__import__("datetime").datetime(2020, 1, 1))
        .not_valid_after(__import__("datetime").datetime(2040, 1, 1))
        .public_key(key.public_key())
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(VerificationError, match="no RA-TLS evidence"):
        verify_ratls_certificate(plain, verifier)
    for junk in (
        b"",
        b"\x30\x03\x02\x01\x00",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ):
        with pytest.raises(VerificationError, match="not a parsable"):
            verify_ratls_certificate(junk, verifier)


def test_tampered_evidence(attester: SimulatedAttester, verifier: partial[object]) -> None:
    creds = create_ratls_credentials(attester, RaTlsFormat.TCG_DICE)
    cert, key = creds.certificate, creds.private_key
    good = cert.extensions.get_extension_for_oid(TCG_DICE_EVIDENCE_OID).value.value  # type: ignore[attr-defined]
    quote2, claims = cbor2.loads(good).value
    cases = {
        "not valid CBOR": b"\xff\xff",
        "not tag 60000": cbor2.dumps(cbor2.CBORTag(60001, [quote2, claims])),
        "claims are not a non-empty map": cbor2.dumps(cbor2.CBORTag(60000, [quote2, cbor2.dumps({})])),
        "no pubkey-hash": cbor2.dumps(cbor2.CBORTag(60000, [quote2, cbor2.dumps({"x": 1})])),
        "unsupported algorithm": cbor2.dumps(
            cbor2.CBORTag(60000, [quote2, cbor2.dumps({"pubkey-hash": cbor2.dumps([99, b"x" * 32])})])
        ),
        "not \\[algorithm, hash\\]": cbor2.dumps(
            cbor2.CBORTag(60000, [quote2, cbor2.dumps({"pubkey-hash": cbor2.dumps({"a": 1})})])
        ),
        "does not match the certificate's key": cbor2.dumps(
            cbor2.CBORTag(60000, [quote2, cbor2.dumps({"pubkey-hash": cbor2.dumps([1, bytes(32)])})])
        ),
        # Valid claims for this key but re-encoded: the quote no longer covers these exact bytes.
        "hash of the evidence claims": cbor2.dumps(
            cbor2.CBORTag(
                60000, [quote2, cbor2.dumps({"pubkey-hash": cbor2.loads(claims)["pubkey-hash"], "n": 1})]
            )
        ),
        "malformed": cbor2.dumps(cbor2.CBORTag(60000, [b"short" * 100, claims])),
    }
    for reason, evidence in cases.items():
        forged = _rebuild(cert, key, replace={TCG_DICE_EVIDENCE_OID: evidence})
        with pytest.raises(VerificationError, match=reason):
            verify_ratls_certificate(forged, verifier)
    # The DICE path is exclusive: a good legacy quote does not rescue bad tagged evidence (as Gramine).
    forged = _rebuild(
        cert, key, replace={TCG_DICE_EVIDENCE_OID: cases["does not match the certificate's key"]}
    )
    with pytest.raises(VerificationError):
        verify_ratls_certificate(forged, verifier)
    # Critical evidence extensions and oversized ones are refused.
    with pytest.raises(VerificationError, match="critical"):
        verify_ratls_certificate(
            _rebuild(cert, key, replace={TCG_DICE_EVIDENCE_OID: good}, critical=True), verifier
        )
    with pytest.raises(VerificationError, match="8192"):
        verify_ratls_certificate(_rebuild(cert, key, replace={TCG_DICE_EVIDENCE_OID: b"\0" * 9000}), verifier)


def test_self_signature_and_key_types(attester: SimulatedAttester, verifier: partial[object]) -> None:
    creds = create_ratls_credentials(attester, RaTlsFormat.LEGACY_EC)
    other = ec.generate_private_key(ec.SECP384R1())
    # Signed by another key than the one it certifies.
    wrong_signer = _rebuild(creds.certificate, other, public_key=creds.private_key.public_key())
    with pytest.raises(VerificationError, match="self-signature"):
        verify_ratls_certificate(wrong_signer, verifier)
    for bad_key, message in (
        (ec.generate_private_key(ec.SECP521R1()), "P-384 or P-256"),
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "3072"),
    ):
        with pytest.raises(VerificationError, match=message):
            verify_ratls_certificate(_rebuild(creds.certificate, bad_key), verifier)  # type: ignore[arg-type]
    # An RSA key with tagged evidence is not a Gramine combination.
    dice = create_ratls_credentials(attester, RaTlsFormat.TCG_DICE)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    with pytest.raises(VerificationError, match="requires an EC key"):
        verify_ratls_certificate(_rebuild(dice.certificate, rsa_key), verifier)


def test_correct_legacy_oid_is_accepted(attester: SimulatedAttester, verifier: partial[object]) -> None:
    creds = create_ratls_credentials(attester, RaTlsFormat.LEGACY_EC)
    quote = creds.certificate.extensions.get_extension_for_oid(LEGACY_QUOTE_OID).value.value  # type: ignore[attr-defined]
    builder = (
        x509.CertificateBuilder()
        .subject_name(creds.certificate.subject)
        .issuer_name(creds.certificate.issuer)
        .serial_number(1)
        .not_valid_before(creds.certificate.not_valid_before_utc)
        .not_valid_after(creds.certificate.not_valid_after_utc)
        .public_key(creds.private_key.public_key())
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.840.113741.1337.6"), quote), False
        )
    )
    cert = builder.sign(creds.private_key, hashes.SHA256())
    assert verify_ratls_certificate(cert, verifier).identity == IDENTITY


def test_report_data_helper() -> None:
    with pytest.raises(ValueError, match="32-byte"):
        ratls_report_data(b"x")


def test_other_key_algorithms_are_refused(attester: SimulatedAttester, verifier: partial[object]) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    creds = create_ratls_credentials(attester, RaTlsFormat.LEGACY_EC)
    key = ed25519.Ed25519PrivateKey.generate()
    builder = (
        x509.CertificateBuilder()
        .subject_name(creds.certificate.subject)
        .issuer_name(creds.certificate.issuer)
        .serial_number(1)
        .not_valid_before(creds.certificate.not_valid_before_utc)
        .not_valid_after(creds.certificate.not_valid_after_utc)
        .public_key(key.public_key())
    )
    with pytest.raises(VerificationError, match="RSA-3072 or ECDSA"):
        verify_ratls_certificate(builder.sign(key, None), verifier)


def test_private_key_pem_matches_the_certificate(attester: SimulatedAttester) -> None:
    creds = create_ratls_credentials(attester, RaTlsFormat.LEGACY_EC)
    key = serialization.load_pem_private_key(creds.private_key_pem(), None)
    assert _spki(creds.certificate) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
