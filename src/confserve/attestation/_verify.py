"""DCAP quote verification: one path for real and simulated SGX quotes, plus collateral sources.

Theory of operation
-------------------
`verify(quote, collateral, trust, now)` is the only verifier. It

1. parses the quote strictly with `_structs` (garbage, TDX and non-v3 quotes stop here with
   `QuoteFormatError`);
2. runs dcap-qvl 0.7.0's `QuoteVerifier(root_ca_der=trust.root_ca_der).verify_with_policy(...)`: the root
   CRL, the PCK chain and CRLs, TCB info and QE identity signatures and dates, the QE report and its
   binding to the attestation key, the quote signature and the TCB level (docs/formats.md#dcap-checks). Only
   the trust anchor differs between real and simulated quotes; the code path is identical;
3. checks what dcap-qvl leaves unchecked or reports: the PCK chain embedded in the quote must end with
   the trusted root itself (dcap-qvl ignores that copy), the claims must describe the header and report
   body `_structs` parsed, and the chain must have ended at the pinned root (`root_key_id` = SHA-384 of
   the root's public point). So the evidence handed on is exactly what was signed, and every byte of the
   quote is authenticated (a test flips each of them);
4. returns `VerifiedEvidence`. Deciding which TCB statuses, advisories, measurements or debug enclaves are
   acceptable is the policy's job (`_policy`), not this module's.

dcap-qvl's policy is `QuotePolicy.claims_only(now)`: it lets every status except `Revoked` through, with no
grace-period rule, so that statuses are judged in one place (our policy). `QuotePolicy.strict(now)`
with `allow_status(...)` would not do: it still refuses an allowed `OutOfDate` level through its zero grace
period. `Revoked` (TCB level or a revoked certificate) is a hard error inside dcap-qvl.

Debug enclaves: dcap-qvl 0.7.0 always refuses a quote whose report has the DEBUG attribute ("Debug mode is
enabled"; `allow_debug` is not exposed to Python), so such a quote raises `VerificationError` here, for
real and simulated platforms alike, and `VerifiedEvidence.debug` is in practice always False. It is still
filled in from the parsed report, so the policy keeps deciding it if a later dcap-qvl allows debug.

Every failure raises (fail closed). Error messages carry dcap-qvl's reason, which names a check, never a
key or a secret (the inputs are public quotes and collateral).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confserve.attestation._errors import VerificationError
from confserve.attestation._structs import (
    ATTRIBUTE_EINITTOKEN_KEY,
    ATTRIBUTE_INIT,
    ATTRIBUTE_MODE64BIT,
    ATTRIBUTE_PROVISION_KEY,
    INTEL_QE_VENDOR_ID,
    QuoteV3,
    parse_quote_v3,
)
from confserve.attestation._types import VerifiedEvidence
from confserve.files import MAX_SMALL_FILE_BYTES, read_input_text

__all__ = [
    "INTEL_SGX_ROOT_CA_DER",
    "INTEL_SGX_ROOT_CA_SHA256",
    "CachingCollateralSource",
    "Collateral",
    "CollateralSource",
    "FileCollateralSource",
    "PccsCollateralSource",
    "StaticCollateralSource",
    "TrustConfig",
    "verify",
]

_log = logging.getLogger(__name__)

# Intel SGX Root CA (public certificate; dcap-qvl `src/TrustedRootCA.der`, also published by Intel at
# certificates.trustedservices.intel.com). SHA-256 of this DER (docs/formats.md#dcap-root);
# checked at import.
INTEL_SGX_ROOT_CA_SHA256: Final = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
INTEL_SGX_ROOT_CA_DER: Final = base64.b64decode(
    "MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIwaDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3Qg"
    "Q0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT"
    "AlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoM"
    "EUludGVsIENvcnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYTAlVTMFkwEwYHKoZI"
    "zj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi71OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxF"
    "P2sJBK5zlKOBuzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJMEegRaBDhkFodHRwczovL2Nl"
    "cnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInz"
    "g7SVUr9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYIKoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9C"
    "iSDcNoowLuPRLsWGf/Yi7GSX94BgwTwgAiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI="
)
assert hashlib.sha256(INTEL_SGX_ROOT_CA_DER).hexdigest() == INTEL_SGX_ROOT_CA_SHA256

_MAX_REASON_CHARS: Final = 300  # dcap-qvl reasons are one or two lines; cap what goes into a message


@functools.lru_cache(maxsize=16)  # a process trusts one or two roots; this runs on every verification
def _root_key_id(root_ca_der: bytes) -> bytes:
    """SHA-384 of the root's uncompressed public point: dcap-qvl's `claims.platform.root_key_id`."""
    try:
        key = x509.load_der_x509_certificate(root_ca_der).public_key()
    except (ValueError, x509.InvalidVersion) as exc:
        raise VerificationError("trusted root is not a DER X.509 certificate") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError("trusted root does not have an EC public key")
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return hashlib.sha384(point).digest()


# --- trust ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """Which root a quote must chain to. Only Intel's, unless simulation is explicitly allowed.

    Build with `TrustConfig.intel()` or `TrustConfig.simulated(root_der)`; the constructor refuses any
    non-Intel root with `is_simulated=False`, and a simulated config cannot use Intel's root (evidence from a
    real platform must never be labelled simulated, nor the other way round).
    """

    root_ca_der: bytes
    is_simulated: bool

    def __post_init__(self) -> None:
        is_intel = hashlib.sha256(self.root_ca_der).hexdigest() == INTEL_SGX_ROOT_CA_SHA256
        if not self.is_simulated and not is_intel:
            raise VerificationError("trusted root is not Intel's SGX Root CA and simulation is not allowed")
        if self.is_simulated and is_intel:
            raise VerificationError("Intel's SGX Root CA cannot be used as a simulated root")
        _root_key_id(self.root_ca_der)  # refuse a malformed root now, not at the first quote

    @classmethod
    def intel(cls) -> TrustConfig:
        return cls(root_ca_der=INTEL_SGX_ROOT_CA_DER, is_simulated=False)

    @classmethod
    def simulated(cls, root_ca_der: bytes) -> TrustConfig:
        """Trust a simulated platform's root; the evidence will say `simulated=True`."""
        return cls(root_ca_der=root_ca_der, is_simulated=True)

    @property
    def root_key_id(self) -> bytes:
        return _root_key_id(self.root_ca_der)


# --- collateral -----------------------------------------------------------------------------------


def _parse_iso(value: str) -> int:
    return int(datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z").timestamp())


@dataclass(frozen=True, slots=True)
class Collateral:
    """Verification collateral in dcap-qvl's `QuoteCollateralV3` JSON shape (docs/formats.md#dcap-collateral).

    `next_update` is the earliest nextUpdate of the TCB info, the QE identity and both CRLs: from then on
    the set may no longer verify (dcap-qvl treats a CRL's nextUpdate as exclusive, the JSON collateral's as
    inclusive) and must be fetched again.
    """

    json_text: str
    next_update: int

    @classmethod
    def from_json(cls, text: str) -> Collateral:
        try:
            obj = json.loads(text)
            tcb_info = json.loads(obj["tcb_info"])
            qe_identity = json.loads(obj["qe_identity"])
            dates = [_parse_iso(tcb_info["nextUpdate"]), _parse_iso(qe_identity["nextUpdate"])]
            for field in ("root_ca_crl", "pck_crl"):
                crl = x509.load_der_x509_crl(bytes.fromhex(obj[field]))
                if crl.next_update_utc is None:
                    raise ValueError(f"{field} has no nextUpdate")
                dates.append(int(crl.next_update_utc.timestamp()))
            dcap_qvl.QuoteCollateralV3.from_json(text)  # dcap-qvl must accept it too
        except (ValueError, KeyError, TypeError, RecursionError, x509.InvalidVersion) as exc:
            raise VerificationError(f"collateral is malformed: {type(exc).__name__}") from exc
        return cls(json_text=text, next_update=min(dates))

    @classmethod
    def from_dcap(cls, collateral: Any) -> Collateral:
        return cls.from_json(collateral.to_json())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Collateral:
        try:
            text = read_input_text(path, max_bytes=MAX_SMALL_FILE_BYTES)
        except OSError as exc:  # the reason, never the content (a UnicodeDecodeError would quote it)
            raise VerificationError(
                f"cannot read collateral file: {exc.strerror or type(exc).__name__}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise VerificationError("cannot read collateral file: not UTF-8 text") from exc
        return cls.from_json(text)

    def to_dcap(self) -> Any:
        """A fresh `dcap_qvl.QuoteCollateralV3`."""
        return dcap_qvl.QuoteCollateralV3.from_json(self.json_text)


class CollateralSource(Protocol):
    """Gives the collateral to verify `quote` with at time `now`."""

    def get(self, quote: bytes, now: int) -> Collateral: ...


@dataclass(frozen=True, slots=True)
class StaticCollateralSource:
    """Always the same collateral (tests, or a simulated platform's current set)."""

    collateral: Collateral

    def get(self, quote: bytes, now: int) -> Collateral:
        return self.collateral


@dataclass(frozen=True, slots=True)
class FileCollateralSource:
    """Collateral read from a JSON file on every call (an operator or a cron job keeps it fresh)."""

    path: Path

    def get(self, quote: bytes, now: int) -> Collateral:
        return Collateral.from_file(self.path)


async def _fetch(pccs_url: str, quote: bytes) -> Any:
    return await dcap_qvl.get_collateral(pccs_url, quote)


@dataclass(frozen=True, slots=True)
class PccsCollateralSource:
    """Collateral fetched from a PCCS (or Intel PCS) with `dcap_qvl.get_collateral` (PCCS API v4).

    Blocking: it runs its own event loop, so call it from a worker thread in async code. Tested only
    against a loopback mock PCCS serving a simulated platform's collateral, never against Intel.
    """

    pccs_url: str
    runner: Callable[[Coroutine[Any, Any, Any]], Any] = asyncio.run

    def get(self, quote: bytes, now: int) -> Collateral:
        try:
            fetched = self.runner(_fetch(self.pccs_url, quote))
        except ValueError as exc:
            raise VerificationError(f"cannot fetch collateral: {_reason(exc)}") from exc
        return Collateral.from_dcap(fetched)


def _cache_key(quote: bytes) -> tuple[str, str]:
    """(FMSPC, PCK CA) of a quote: what its TCB info and PCK CRL depend on."""
    try:
        parsed = dcap_qvl.parse_quote(quote)
        return str(parsed.fmspc()), str(parsed.ca())
    except ValueError as exc:
        raise VerificationError(f"cannot read FMSPC and CA from the quote: {_reason(exc)}") from exc


class CachingCollateralSource:
    """Keeps collateral per (FMSPC, CA) and fetches again `refresh_margin_seconds` before its nextUpdate.

    Intel's TCB info, QE identity and PCK CRL live about 30 days, so the default one-day margin leaves
    ample time to retry a failed fetch; a failed refresh raises (no silent use of expired collateral).
    """

    def __init__(self, inner: CollateralSource, *, refresh_margin_seconds: int = 86400) -> None:
        if refresh_margin_seconds < 0:
            raise ValueError("refresh_margin_seconds must not be negative")
        self._inner = inner
        self._margin = refresh_margin_seconds
        self._cache: dict[tuple[str, str], Collateral] = {}

    def get(self, quote: bytes, now: int) -> Collateral:
        key = _cache_key(quote)
        cached = self._cache.get(key)
        if cached is not None and now < cached.next_update - self._margin:
            return cached
        fresh = self._inner.get(quote, now)
        if now >= fresh.next_update:
            raise VerificationError("fetched collateral is already expired")
        self._cache[key] = fresh
        return fresh


# --- verification ---------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """dcap-qvl's multi-line message as one short line."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    text = text.removeprefix("Verification failed: ")
    return text[:_MAX_REASON_CHARS]


def _policy(now: int) -> Any:
    return dcap_qvl.QuotePolicy.claims_only(now)


def _check_claims(parsed: QuoteV3, claims: dict[str, Any], trust: TrustConfig) -> None:
    """Fail closed unless dcap-qvl verified the very header and report body `_structs` parsed."""
    header, body = parsed.header, parsed.report_body
    expected_header = {
        "version": header.version,
        "attestation_key_type": header.att_key_type,
        "tee_type": header.tee_type,
        "qe_svn": header.qe_svn,
        "pce_svn": header.pce_svn,
        "qe_vendor_id": header.qe_vendor_id.hex(),
        "user_data": header.user_data.hex(),
    }
    expected_report = {
        "cpu_svn": body.cpu_svn.hex(),
        "misc_select": body.misc_select,
        "attributes": body.attributes.hex(),
        "mr_enclave": body.mr_enclave.hex(),
        "mr_signer": body.mr_signer.hex(),
        "isv_prod_id": body.isv_prod_id,
        "isv_svn": body.isv_svn,
        "report_data": body.report_data.hex(),
    }
    actual_header = {k: claims.get("header", {}).get(k) for k in expected_header}
    sgx = claims.get("report", {}).get("SgxEnclave", {})
    actual_report = {k: sgx.get(k) for k in expected_report}
    for what, expected, actual in (
        ("header", expected_header, actual_header),
        ("report body", expected_report, actual_report),
    ):
        if expected != actual:
            _log.warning("dcap-qvl %s differs from parsed quote: expected %s, got %s", what, expected, actual)
            raise VerificationError(f"verified {what} does not match the parsed quote")
    root_key_id = bytes(claims.get("platform", {}).get("root_key_id") or b"")
    if root_key_id != trust.root_key_id:
        _log.warning("quote chained to root key %s, expected %s", root_key_id.hex(), trust.root_key_id.hex())
        raise VerificationError("quote did not chain to the trusted root")


def _check_embedded_root(parsed: QuoteV3, trust: TrustConfig) -> None:
    """The PCK chain in the quote must end with the trusted root itself (leaf, PCK CA, root:
    docs/formats.md#quote-signature).

    dcap-qvl anchors the chain at `trust.root_ca_der` and ignores the copy of the root in the quote, so
    without this check the bytes of that copy would be unauthenticated. Intel's QVL makes the same
    comparison against its pinned root key.
    """
    chain = parsed.signature_data.pck_chain_pem()
    # The DER is compared, not parsed: a hostile chain's certificate never reaches a parser here. The
    # base64 must be canonical (no slack in the last character's unused bits), so no byte goes unchecked.
    body = b"".join(chain[-1].split(b"-----")[2].split())
    try:
        last = base64.b64decode(body, validate=True)
    except ValueError as exc:
        raise VerificationError("the quote's PCK chain ends in a malformed certificate") from exc
    if base64.b64encode(last) != body:
        raise VerificationError("the quote's PCK chain ends in a malformed certificate")
    if last != trust.root_ca_der:
        _log.info("quote's chain ends at a root with sha256 %s", hashlib.sha256(last).hexdigest())
        hint = ""
        if not trust.is_simulated and hashlib.sha256(last).hexdigest() != INTEL_SGX_ROOT_CA_SHA256:
            # Not Intel's root: most often a simulated platform's quote checked against Intel's root.
            hint = " (it ends at a non-Intel root: for a simulated platform, trust its root explicitly)"
        raise VerificationError("the quote's PCK chain does not end at the trusted root" + hint)


def _check_attributes(flags: int) -> None:
    """Enclave attribute checks of Gramine's RA-TLS verifier (docs/formats.md#ratls-attributes): the enclave
    must be initialised and 64-bit, and must not hold the provisioning or launch key (those are Intel's
    architectural enclaves, never an application). DEBUG is refused by dcap-qvl before this point."""
    if not flags & ATTRIBUTE_INIT:
        raise VerificationError("enclave attributes: INIT is not set")
    if not flags & ATTRIBUTE_MODE64BIT:
        raise VerificationError("enclave attributes: MODE64BIT is not set")
    if flags & (ATTRIBUTE_PROVISION_KEY | ATTRIBUTE_EINITTOKEN_KEY):
        raise VerificationError("enclave attributes: PROVISION_KEY or EINITTOKEN_KEY is set")


def verify(quote: bytes, collateral: Collateral | Any, trust: TrustConfig, now: int) -> VerifiedEvidence:
    """Verify an SGX DCAP v3 quote with `collateral` at Unix time `now`, chained to `trust`'s root.

    `collateral` is a `Collateral` or a `dcap_qvl.QuoteCollateralV3`. Raises `QuoteFormatError` for a
    malformed or unsupported (e.g. TDX) quote and `VerificationError` for any failed check, including a
    revoked or debug quote. No status is judged here beyond dcap-qvl's refusal of `Revoked`.
    """
    if not isinstance(now, int) or now < 0:
        raise VerificationError("now must be a non-negative integer (Unix seconds)")
    parsed = parse_quote_v3(quote)
    if parsed.header.qe_vendor_id != INTEL_QE_VENDOR_ID:  # dcap-qvl checks this too; say it clearly
        raise VerificationError("quote was not produced by Intel's quoting enclave (QE vendor ID)")
    _check_embedded_root(parsed, trust)
    dcap_collateral = collateral.to_dcap() if isinstance(collateral, Collateral) else collateral
    try:
        verifier = dcap_qvl.QuoteVerifier(root_ca_der=trust.root_ca_der)
        claims_json = verifier.verify_with_policy(quote, dcap_collateral, now, _policy(now)).to_json()
    except (ValueError, TypeError) as exc:
        reason = _reason(exc)
        _log.info("DCAP verification failed (simulated=%s, now=%d): %s", trust.is_simulated, now, reason)
        raise VerificationError(f"DCAP verification failed: {reason}") from exc
    claims = json.loads(claims_json)
    _check_claims(parsed, claims, trust)
    _check_attributes(parsed.report_body.flags)
    tcb = claims["tcb"]
    return VerifiedEvidence(
        identity=parsed.report_body.identity,
        report_data=parsed.report_body.report_data,
        debug=parsed.report_body.debug,
        tcb_status=str(tcb["status"]),
        advisory_ids=tuple(str(a) for a in tcb["advisory_ids"]),
        simulated=trust.is_simulated,
    )
