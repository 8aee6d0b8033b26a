"""RA-TLS certificates in Gramine's formats: make them from an attester, verify them against a quote
verifier (docs/formats.md#ratls).

Theory of operation. An RA-TLS certificate is self-signed; its authority is the SGX quote inside it,
whose report_data commits to the certificate's public key, so whoever completes a TLS handshake with the
certificate's key is the enclave that produced the quote. Three generations exist, and confserve makes
and accepts all of them:

| format      | Gramine    | key        | evidence                                                         |
|-------------|------------|------------|------------------------------------------------------------------|
| LEGACY_RSA  | v1.3.x     | RSA-3072   | legacy extension: quote with report_data = SHA-256(SPKI) || 0*32 |
| LEGACY_EC   | v1.4-v1.7  | ECDSA P-384| the same legacy extension                                        |
| TCG_DICE    | v1.8+      | ECDSA P-384| legacy extension, plus TCG DICE tagged evidence: a second        |
|             |            |            | quote over SHA-256(CBOR claims), the claims naming the key hash  |

The legacy extension's OID is the mis-encoded `0.6.9.42.840.113741.1337.6` Gramine writes
(docs/formats.md#ratls-legacy); the correct `1.2.840.113741.1337.6` is accepted too (the DICE evidence:
docs/formats.md#ratls-dice). When the DICE extension is present only it is used, as
Gramine v1.8+ does. Verification order: parse, check the self-signature, check the key type, extract the
evidence, check the binding of quote to key (cheap), then verify the quote (`verify_quote`, normally
`confserve.attestation.verify` with collateral and trust bound in) and return its evidence. confserve is
stricter than Gramine in two places: report_data[32:64] must be zero, and the self-signature must verify.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from confserve.attestation._attester import Attester
from confserve.attestation._errors import QuoteFormatError, VerificationError
from confserve.attestation._structs import QUOTE_SIGNED_SIZE, parse_quote_v3
from confserve.attestation._types import VerifiedEvidence

__all__ = [
    "LEGACY_QUOTE_OID",
    "TCG_DICE_EVIDENCE_OID",
    "RaTlsCredentials",
    "RaTlsFormat",
    "create_ratls_credentials",
    "extract_ratls_quote",
    "ratls_report_data",
    "verify_ratls_certificate",
]

LEGACY_QUOTE_OID: Final = x509.ObjectIdentifier("0.6.9.42.840.113741.1337.6")  # what Gramine writes
LEGACY_QUOTE_OID_CORRECT: Final = x509.ObjectIdentifier("1.2.840.113741.1337.6")  # also accepted by Gramine
TCG_DICE_EVIDENCE_OID: Final = x509.ObjectIdentifier("2.23.133.5.4.9")
_CBOR_TAG_TAGGED_EVIDENCE: Final = 60000
_CLAIM_PUBKEY_HASH: Final = "pubkey-hash"
# IANA named-information hash algorithm IDs accepted in the pubkey-hash claim (docs/formats.md#ratls-dice).
_HASH_ALGS: Final = {1: hashlib.sha256, 7: hashlib.sha384, 8: hashlib.sha512}
# Gramine's limit on either extension's value (docs/formats.md#ratls-legacy).
_MAX_EVIDENCE_BYTES: Final = 8192
_SUBJECT: Final = x509.Name(
    [
        x509.NameAttribute(NameOID.COMMON_NAME, "RATLS"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GramineDevelopers"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    ]
)
# Gramine's default validity (docs/formats.md#ratls-cert); its verifiers ignore it, and so does confserve's.
_NOT_BEFORE: Final = datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER: Final = datetime.datetime(2030, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
QuoteVerifier = Callable[[bytes], VerifiedEvidence]


class RaTlsFormat(enum.Enum):
    """Which Gramine generation's certificate to make (see the module table)."""

    LEGACY_RSA = "gramine-1.3"
    LEGACY_EC = "gramine-1.4"
    TCG_DICE = "gramine-1.8"


@dataclass(frozen=True, slots=True)
class RaTlsCredentials:
    """A fresh key and its RA-TLS certificate."""

    private_key: PrivateKey
    certificate: x509.Certificate

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def private_key_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM, for handing to a TLS library in memory. Never write it to disk."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _spki(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ratls_report_data(digest: bytes) -> bytes:
    """report_data for a 32-byte digest: digest || 32 zero bytes (docs/formats.md#ratls-cert)."""
    if len(digest) != 32:
        raise ValueError("RA-TLS report_data commits to a 32-byte SHA-256 digest")
    return digest + bytes(32)


def _claims_for(spki: bytes) -> bytes:
    hash_entry = cbor2.dumps([1, hashlib.sha256(spki).digest()])
    return cbor2.dumps({_CLAIM_PUBKEY_HASH: hash_entry})


def create_ratls_credentials(
    attester: Attester,
    fmt: RaTlsFormat = RaTlsFormat.TCG_DICE,
    *,
    not_before: datetime.datetime = _NOT_BEFORE,
    not_after: datetime.datetime = _NOT_AFTER,
) -> RaTlsCredentials:
    """Generate a fresh key and a self-signed RA-TLS certificate whose quote(s) bind it."""
    key: PrivateKey
    if fmt is RaTlsFormat.LEGACY_RSA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        key = ec.generate_private_key(ec.SECP384R1())
    spki = _spki(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_SUBJECT)
        .issuer_name(_SUBJECT)
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    )
    quote = attester.quote(ratls_report_data(hashlib.sha256(spki).digest()))
    builder = builder.add_extension(x509.UnrecognizedExtension(LEGACY_QUOTE_OID, quote), critical=False)
    if fmt is RaTlsFormat.TCG_DICE:
        claims = _claims_for(spki)
        quote2 = attester.quote(ratls_report_data(hashlib.sha256(claims).digest()))
        evidence = cbor2.dumps(cbor2.CBORTag(_CBOR_TAG_TAGGED_EVIDENCE, [quote2, claims]))
        builder = builder.add_extension(
            x509.UnrecognizedExtension(TCG_DICE_EVIDENCE_OID, evidence), critical=False
        )
    return RaTlsCredentials(key, builder.sign(key, hashes.SHA256()))


# -- verification -------------------------------------------------------------------------------------


def _load(cert: bytes | x509.Certificate) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    try:
        return x509.load_der_x509_certificate(cert)
    except (ValueError, x509.InvalidVersion):
        try:
            return x509.load_pem_x509_certificate(cert)
        except (ValueError, x509.InvalidVersion):
            raise VerificationError("peer certificate is not a parsable X.509 certificate") from None


def _check_self_signature(
    cert: x509.Certificate, public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
) -> None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise VerificationError("RA-TLS certificate's signature algorithm is not supported") from None
    if algorithm is None:  # pragma: no cover - only EdDSA keys lack one, and those were refused already
        raise VerificationError("RA-TLS certificate has no usable signature algorithm")
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        else:
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
    except InvalidSignature:
        raise VerificationError("RA-TLS certificate's self-signature is invalid") from None


def _der_bit_string(data: bytes) -> bytes:
    """DER BIT STRING of `data` with no unused bits (X.690 8.6; definite length, long form over 127)."""
    body = b"\x00" + data
    size = len(body)
    if size < 0x80:
        return b"\x03" + bytes((size,)) + body
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return b"\x03" + bytes((0x80 | len(raw),)) + raw + body


def _check_canonical_encoding(cert: x509.Certificate, spki: bytes) -> None:
    """The key and the signature must be encoded as they re-encode. cryptography accepts a BIT STRING
    that declares unused bits (when they are zero), so two encodings of one key or signature would both
    verify, leaving a byte no check covers; mbedTLS (Gramine's verifier) refuses them, and so does this."""
    der = cert.public_bytes(serialization.Encoding.DER)
    if spki not in cert.tbs_certificate_bytes or not der.endswith(_der_bit_string(cert.signature)):
        raise VerificationError("RA-TLS certificate's key or signature is not canonically encoded")


def _extension_value(cert: x509.Certificate, *oids: x509.ObjectIdentifier) -> bytes | None:
    try:
        extensions = cert.extensions  # parsed lazily, on first access
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        raise VerificationError("RA-TLS certificate's extensions are malformed") from None
    for oid in oids:
        try:
            ext = extensions.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            continue
        if ext.critical:
            raise VerificationError("RA-TLS evidence extension must not be critical")
        value = ext.value
        assert isinstance(value, x509.UnrecognizedExtension)
        if not 0 < len(value.value) <= _MAX_EVIDENCE_BYTES:
            raise VerificationError(f"RA-TLS evidence extension is {len(value.value)} bytes (at most 8192)")
        return value.value
    return None


def _report_data(quote: bytes) -> bytes:
    if len(quote) < QUOTE_SIGNED_SIZE + 4:
        raise VerificationError("RA-TLS quote is too short to be an SGX quote")
    try:
        return parse_quote_v3(quote).report_body.report_data
    except QuoteFormatError as e:
        raise VerificationError(f"RA-TLS quote is malformed: {e}") from None


def _check_binding(quote: bytes, digest: bytes, what: str) -> None:
    if _report_data(quote) != ratls_report_data(digest):
        raise VerificationError(f"RA-TLS quote's report_data does not match {what}")


def _cbor_item(data: bytes) -> object:
    """Exactly one CBOR item: bytes after it would be evidence nothing authenticates (cbor2.loads
    ignores them)."""
    stream = io.BytesIO(data)
    item = cbor2.CBORDecoder(stream).decode()
    if stream.tell() != len(data):
        raise ValueError("bytes after the CBOR item")
    return item


def _dice_quote(evidence: bytes, spki: bytes) -> bytes:
    """Check the TCG DICE evidence (docs/formats.md#ratls-dice); return its quote, which binds the claims."""
    try:
        item = _cbor_item(evidence)
        if not (
            isinstance(item, cbor2.CBORTag)
            and item.tag == _CBOR_TAG_TAGGED_EVIDENCE
            and isinstance(item.value, list | tuple)
            and len(item.value) == 2
            and all(isinstance(part, bytes) for part in item.value)
        ):
            raise VerificationError("RA-TLS tagged evidence is not tag 60000 [quote, claims]")
        quote, claims_bytes = bytes(item.value[0]), bytes(item.value[1])
        claims = _cbor_item(claims_bytes)
        if not isinstance(claims, dict) or not claims:
            raise VerificationError("RA-TLS evidence claims are not a non-empty map")
        hash_entry_bytes = claims.get(_CLAIM_PUBKEY_HASH)
        if not isinstance(hash_entry_bytes, bytes):
            raise VerificationError("RA-TLS evidence claims carry no pubkey-hash")
        hash_entry = _cbor_item(hash_entry_bytes)
    except (cbor2.CBORDecodeError, RecursionError, ValueError, TypeError) as e:
        raise VerificationError(f"RA-TLS tagged evidence is not valid CBOR: {type(e).__name__}") from None
    if not (
        isinstance(hash_entry, list | tuple) and len(hash_entry) == 2 and isinstance(hash_entry[1], bytes)
    ):
        raise VerificationError("RA-TLS pubkey-hash claim is not [algorithm, hash]")
    alg, claimed = hash_entry
    hash_fn = _HASH_ALGS.get(alg) if isinstance(alg, int) and not isinstance(alg, bool) else None
    if hash_fn is None:
        raise VerificationError(f"RA-TLS pubkey-hash uses an unsupported algorithm id {alg!r}")
    if claimed != hash_fn(spki).digest():
        raise VerificationError("RA-TLS pubkey-hash claim does not match the certificate's key")
    _check_binding(quote, hashlib.sha256(claims_bytes).digest(), "the hash of the evidence claims")
    return quote


def extract_ratls_quote(cert: bytes | x509.Certificate) -> tuple[RaTlsFormat, bytes]:
    """Every check of an RA-TLS certificate except the quote's own verification: parse, key type,
    self-signature, evidence extraction and the binding of the quote to the key. Returns the format and
    the quote that binds the key (for TCG_DICE, the evidence quote). The quote is NOT verified yet."""
    certificate = _load(cert)
    try:
        public_key = certificate.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise VerificationError("RA-TLS certificate's public key cannot be loaded") from None
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size != 3072:
            raise VerificationError(f"RA-TLS RSA key must be 3072 bits, not {public_key.key_size}")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP384R1 | ec.SECP256R1):
            raise VerificationError(f"RA-TLS EC key must be P-384 or P-256, not {public_key.curve.name}")
    else:
        raise VerificationError("RA-TLS key must be RSA-3072 or ECDSA P-384/P-256")
    _check_self_signature(certificate, public_key)
    spki = _spki(public_key)
    _check_canonical_encoding(certificate, spki)
    dice = _extension_value(certificate, TCG_DICE_EVIDENCE_OID)
    if dice is not None:
        if isinstance(public_key, rsa.RSAPublicKey):
            raise VerificationError("RA-TLS tagged evidence requires an EC key (Gramine v1.8+)")
        return RaTlsFormat.TCG_DICE, _dice_quote(dice, spki)
    quote = _extension_value(certificate, LEGACY_QUOTE_OID, LEGACY_QUOTE_OID_CORRECT)
    if quote is None:
        raise VerificationError("certificate carries no RA-TLS evidence (not an RA-TLS certificate)")
    _check_binding(quote, hashlib.sha256(spki).digest(), "the certificate's public key")
    fmt = RaTlsFormat.LEGACY_RSA if isinstance(public_key, rsa.RSAPublicKey) else RaTlsFormat.LEGACY_EC
    return fmt, quote


def verify_ratls_certificate(cert: bytes | x509.Certificate, verify_quote: QuoteVerifier) -> VerifiedEvidence:
    """Verify an RA-TLS certificate (DER or PEM) of any Gramine generation; raise VerificationError.

    `verify_quote` verifies the embedded quote cryptographically (typically `verify` with collateral,
    trust and now bound in); policy is applied by the caller to the evidence returned.
    """
    _, quote = extract_ratls_quote(cert)
    return verify_quote(quote)
