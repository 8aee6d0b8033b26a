"""One verification path for real and simulated quotes: real vectors at their fixed `now`, simulated
platforms under their own root, tampering of every kind, and the collateral sources."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest

from confserve.attestation import (
    CachingCollateralSource,
    Collateral,
    FileCollateralSource,
    PccsCollateralSource,
    QuoteFormatError,
    SimCollateralSettings,
    SimPlatform,
    StaticCollateralSource,
    TrustConfig,
    VerificationError,
    verify,
)
from confserve.attestation._structs import QuoteHeader, ReportBody, parse_quote_v3
from confserve.attestation._verify import INTEL_SGX_ROOT_CA_DER, INTEL_SGX_ROOT_CA_SHA256, _check_claims
from tests.unit.attestation.dcap_helpers import (
    IDENTITY,
    REPORT_DATA,
    SGX_ADVISORIES,
    SGX_MR_ENCLAVE,
    SGX_MR_SIGNER,
    SGX_NOW,
    SGX_STATUS,
    SGX_WINDOW,
    SIM_NOW,
    TDX_NOW,
    TDX_OUTDATED_NOW,
    dcap_vectors,
)

INTEL = TrustConfig.intel()


@pytest.fixture(scope="module")
def sgx_quote() -> bytes:
    return (dcap_vectors() / "sgx_quote").read_bytes()


@pytest.fixture(scope="module")
def sgx_collateral() -> Collateral:
    return Collateral.from_file(dcap_vectors() / "sgx_quote_collateral.json")


@pytest.fixture(scope="module")
def platform() -> SimPlatform:
    return SimPlatform.create(now=SIM_NOW)


@pytest.fixture(scope="module")
def sim_trust(platform: SimPlatform) -> TrustConfig:
    return TrustConfig.simulated(platform.root_ca_der)


@pytest.fixture(scope="module")
def sim_quote(platform: SimPlatform) -> bytes:
    return platform.quote(REPORT_DATA, IDENTITY)


# --- the trust configuration ----------------------------------------------------------------------


def test_pinned_intel_root_is_the_vector_root() -> None:
    der = (dcap_vectors() / "intel_sgx_root_ca.der").read_bytes()
    assert der == INTEL_SGX_ROOT_CA_DER
    assert hashlib.sha256(der).hexdigest() == INTEL_SGX_ROOT_CA_SHA256
    assert INTEL.root_key_id.hex() == (
        "46e403bd34f05a3f2817ab9badcaacc7ffc98e0f261008cd30dae936cace18d5dcf58eef31463613de1570d516200993"
    )


def test_non_intel_root_needs_simulation_flag(platform: SimPlatform) -> None:
    with pytest.raises(VerificationError, match="simulation is not allowed"):
        TrustConfig(root_ca_der=platform.root_ca_der, is_simulated=False)
    with pytest.raises(VerificationError, match="cannot be used as a simulated root"):
        TrustConfig.simulated(INTEL_SGX_ROOT_CA_DER)
    with pytest.raises(VerificationError, match=r"not a DER X\.509 certificate"):
        TrustConfig.simulated(b"not a certificate")


# --- real vectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("now", [SGX_WINDOW[0], SGX_NOW, SGX_WINDOW[1]])
def test_real_sgx_vector_inside_its_window(sgx_quote: bytes, sgx_collateral: Collateral, now: int) -> None:
    evidence = verify(sgx_quote, sgx_collateral, INTEL, now)
    assert evidence.tcb_status == SGX_STATUS
    assert evidence.advisory_ids == SGX_ADVISORIES
    assert evidence.identity.mr_enclave.hex() == SGX_MR_ENCLAVE
    assert evidence.identity.mr_signer.hex() == SGX_MR_SIGNER
    assert (evidence.identity.isv_prod_id, evidence.identity.isv_svn) == (0, 0)
    assert evidence.report_data == b"Hello, world!".ljust(64, b"\0")
    assert evidence.debug is False
    assert evidence.simulated is False


def test_real_sgx_vector_accepts_dcap_qvl_collateral_object(sgx_quote: bytes) -> None:
    raw = (dcap_vectors() / "sgx_quote_collateral.json").read_text()
    evidence = verify(sgx_quote, dcap_qvl.QuoteCollateralV3.from_json(raw), INTEL, SGX_NOW)
    assert evidence.tcb_status == SGX_STATUS


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (SGX_WINDOW[0] - 1, "issue date is in the future"),
        (SGX_WINDOW[1] + 1, "expired"),
        (0, "DCAP verification failed"),
        (SGX_WINDOW[1] + 400 * 86400, "DCAP verification failed"),
    ],
)
def test_real_sgx_vector_outside_its_window(
    sgx_quote: bytes, sgx_collateral: Collateral, now: int, reason: str
) -> None:
    with pytest.raises(VerificationError, match=reason):
        verify(sgx_quote, sgx_collateral, INTEL, now)


def test_real_collateral_next_update_is_the_window_end(sgx_collateral: Collateral) -> None:
    assert sgx_collateral.next_update == SGX_WINDOW[1]


def test_flipped_byte_anywhere_in_real_quote_fails(sgx_quote: bytes, sgx_collateral: Collateral) -> None:
    masks = (0x01, 0x80, 0x10, 0x04)
    for i, position in enumerate(range(0, len(sgx_quote), 3)):
        tampered = bytearray(sgx_quote)
        tampered[position] ^= masks[i % len(masks)]
        with pytest.raises((QuoteFormatError, VerificationError)):
            verify(bytes(tampered), sgx_collateral, INTEL, SGX_NOW)


def test_flipped_report_data_fails_on_the_isv_signature(sgx_quote: bytes, sgx_collateral: Collateral) -> None:
    tampered = bytearray(sgx_quote)
    tampered[368] ^= 0x01  # first byte of REPORTDATA (docs/formats.md#quote-body)
    with pytest.raises(VerificationError, match="ISV enclave report signature is invalid"):
        verify(bytes(tampered), sgx_collateral, INTEL, SGX_NOW)


def test_real_quote_fails_under_a_simulated_root(
    sgx_quote: bytes, sgx_collateral: Collateral, sim_trust: TrustConfig
) -> None:
    with pytest.raises(VerificationError, match="does not end at the trusted root"):
        verify(sgx_quote, sgx_collateral, sim_trust, SGX_NOW)


def test_dcap_qvl_itself_refuses_the_real_quote_under_another_root(
    sgx_quote: bytes, sgx_collateral: Collateral, platform: SimPlatform
) -> None:
    """Our embedded-root check comes first; dcap-qvl alone refuses the foreign anchor as well."""
    with pytest.raises(ValueError, match="root CA CRL"):
        dcap_qvl.QuoteVerifier(root_ca_der=platform.root_ca_der).verify_with_policy(
            sgx_quote, sgx_collateral.to_dcap(), SGX_NOW, dcap_qvl.QuotePolicy.claims_only(SGX_NOW)
        )


@pytest.mark.parametrize(
    ("name", "now"),
    [("tdx_quote", TDX_NOW), ("tdx_quote_td15ex", 1791418186), ("tdx_quote_outdated", TDX_OUTDATED_NOW)],
)
def test_tdx_vectors_are_refused_as_not_sgx(name: str, now: int) -> None:
    """confserve verifies SGX quotes only: TDX is refused by the parser before dcap-qvl runs."""
    quote = (dcap_vectors() / name).read_bytes()
    collateral = Collateral.from_file(dcap_vectors() / f"{name}_collateral.json")
    with pytest.raises(QuoteFormatError, match="TDX quote"):
        verify(quote, collateral, INTEL, now)


def test_outdated_tdx_vector_is_also_a_dcap_qvl_failure() -> None:
    quote = (dcap_vectors() / "tdx_quote_outdated").read_bytes()
    raw = (dcap_vectors() / "tdx_quote_outdated_collateral.json").read_text()
    with pytest.raises(ValueError, match="No matching TCB level found"):
        dcap_qvl.verify(quote, dcap_qvl.QuoteCollateralV3.from_json(raw), TDX_OUTDATED_NOW)


def _tampered_collateral(collateral_json: str, field: str, edit: Any) -> Collateral:
    obj = json.loads(collateral_json)
    obj[field] = edit(obj[field])
    return Collateral.from_json(json.dumps(obj))


@pytest.mark.parametrize(
    ("field", "edit"),
    [
        ("tcb_info", lambda s: s.replace('"tcbStatus":"OutOfDate"', '"tcbStatus":"UpToDate"')),
        ("tcb_info", lambda s: s.replace('"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18')),
        ("qe_identity", lambda s: s.replace('"isvprodid":1', '"isvprodid":2')),
        ("tcb_info_signature", lambda s: s[:-2] + ("00" if s[-2:] != "00" else "01")),
        ("qe_identity_signature", lambda s: ("00" if s[:2] != "00" else "01") + s[2:]),
    ],
)
def test_tampered_real_collateral_fails(sgx_quote: bytes, field: str, edit: Any) -> None:
    text = (dcap_vectors() / "sgx_quote_collateral.json").read_text()
    tampered = _tampered_collateral(text, field, edit)
    assert tampered.json_text != text
    with pytest.raises(VerificationError):
        verify(sgx_quote, tampered, INTEL, SGX_NOW)


# --- simulated platform ---------------------------------------------------------------------------


def test_simulated_quote_verifies_under_its_root(
    platform: SimPlatform, sim_quote: bytes, sim_trust: TrustConfig
) -> None:
    evidence = verify(sim_quote, platform.collateral, sim_trust, SIM_NOW)
    assert evidence.identity == IDENTITY
    assert evidence.report_data == REPORT_DATA
    assert evidence.tcb_status == "UpToDate"
    assert evidence.advisory_ids == ()
    assert evidence.debug is False
    assert evidence.simulated is True


def test_simulated_quote_fails_under_intel_root(platform: SimPlatform, sim_quote: bytes) -> None:
    with pytest.raises(VerificationError, match="does not end at the trusted root"):
        verify(sim_quote, platform.collateral, INTEL, SIM_NOW)
    # and dcap-qvl on its own, with Intel's built-in root:
    with pytest.raises(ValueError, match="root CA CRL"):
        dcap_qvl.verify(sim_quote, platform.collateral, SIM_NOW)


def test_simulated_quote_fails_under_another_simulated_root(platform: SimPlatform, sim_quote: bytes) -> None:
    other = SimPlatform.create(now=SIM_NOW)
    with pytest.raises(VerificationError):
        verify(sim_quote, platform.collateral, TrustConfig.simulated(other.root_ca_der), SIM_NOW)
    with pytest.raises(VerificationError):  # right root, another platform's collateral
        verify(sim_quote, other.collateral, TrustConfig.simulated(platform.root_ca_der), SIM_NOW)


def test_flipped_byte_anywhere_in_simulated_quote_fails(
    platform: SimPlatform, sim_quote: bytes, sim_trust: TrustConfig
) -> None:
    collateral = Collateral.from_dcap(platform.collateral)
    for position in range(0, len(sim_quote), 5):
        tampered = bytearray(sim_quote)
        tampered[position] ^= 0x02
        with pytest.raises((QuoteFormatError, VerificationError)):
            verify(bytes(tampered), collateral, sim_trust, SIM_NOW)


def test_debug_enclave_is_refused_by_dcap_qvl(platform: SimPlatform, sim_trust: TrustConfig) -> None:
    """dcap-qvl 0.7.0 cannot be told to allow debug enclaves from Python: such quotes never verify."""
    quote = platform.quote(REPORT_DATA, IDENTITY, debug=True)
    assert parse_quote_v3(quote).report_body.debug
    with pytest.raises(VerificationError, match="Debug mode is enabled"):
        verify(quote, platform.collateral, sim_trust, SIM_NOW)


def test_wrong_qe_vendor_id_is_refused(platform: SimPlatform, sim_trust: TrustConfig) -> None:
    header = dataclasses.replace(platform.header(), qe_vendor_id=bytes(16))
    body = ReportBody.build(
        IDENTITY,
        REPORT_DATA,
        attributes=parse_quote_v3(platform.quote(REPORT_DATA, IDENTITY)).report_body.attributes,
    )
    quote = platform.sign_report(body, header).to_bytes()
    with pytest.raises(VerificationError, match="QE vendor ID"):
        verify(quote, platform.collateral, sim_trust, SIM_NOW)
    with pytest.raises(ValueError, match=r"(?i)vendor"):  # dcap-qvl on its own
        dcap_qvl.verify_with_root_ca(quote, platform.collateral, platform.root_ca_der, SIM_NOW)


def test_header_with_wrong_svns_still_verifies_only_if_signed(
    platform: SimPlatform, sim_trust: TrustConfig
) -> None:
    """The header is covered by the ISV signature: a re-signed header with another QE SVN verifies,
    a modified but not re-signed one does not."""
    quote = parse_quote_v3(platform.quote(REPORT_DATA, IDENTITY))
    header: QuoteHeader = dataclasses.replace(quote.header, user_data=bytes(20))
    resigned = platform.sign_report(quote.report_body, header).to_bytes()
    assert verify(resigned, platform.collateral, sim_trust, SIM_NOW).identity == IDENTITY
    unsigned = header.to_bytes() + quote.to_bytes()[48:]
    with pytest.raises(VerificationError, match="ISV enclave report signature"):
        verify(unsigned, platform.collateral, sim_trust, SIM_NOW)


def test_collateral_window(sim_trust: TrustConfig, platform: SimPlatform, sim_quote: bytes) -> None:
    collateral = Collateral.from_dcap(platform.collateral)
    assert collateral.next_update == platform.next_update == SIM_NOW + 30 * 86400
    verify(sim_quote, collateral, sim_trust, collateral.next_update - 1)
    for now in (collateral.next_update, collateral.next_update + 1):  # a CRL's nextUpdate is exclusive
        with pytest.raises(VerificationError, match=r"(?i)expired"):
            verify(sim_quote, collateral, sim_trust, now)
    with pytest.raises(VerificationError, match="future"):
        verify(sim_quote, collateral, sim_trust, SIM_NOW - 1)


def test_expired_collateral_verifies_again_after_refresh(sim_quote: bytes) -> None:
    platform = SimPlatform.create(now=SIM_NOW, settings=SimCollateralSettings(validity_seconds=3600))
    quote = platform.quote(REPORT_DATA, IDENTITY)
    trust = TrustConfig.simulated(platform.root_ca_der)
    later = SIM_NOW + 7200
    with pytest.raises(VerificationError, match=r"(?i)expired"):
        verify(quote, platform.collateral, trust, later)
    platform.refresh_collateral(later)
    assert platform.next_update == later + 3600
    assert verify(quote, platform.collateral, trust, later).tcb_status == "UpToDate"


@pytest.mark.parametrize(
    ("field", "edit"),
    [
        ("tcb_info", lambda s: s.replace('"UpToDate"', '"OutOfDate"')),
        ("tcb_info", lambda s: s.replace('"nextUpdate":"20', '"nextUpdate":"21')),
        ("qe_identity", lambda s: s.replace('"isvprodid":1', '"isvprodid":1 ')),
        ("tcb_info", lambda s: json.dumps(json.loads(s))),  # same content, not the signed (compact) bytes
    ],
)
def test_tampered_simulated_collateral_fails(
    platform: SimPlatform, sim_quote: bytes, sim_trust: TrustConfig, field: str, edit: Any
) -> None:
    tampered = _tampered_collateral(platform.collateral_json, field, edit)
    assert tampered.json_text != platform.collateral_json
    with pytest.raises(VerificationError):
        verify(sim_quote, tampered, sim_trust, SIM_NOW)


def test_collateral_with_crls_swapped_fails(
    platform: SimPlatform, sim_quote: bytes, sim_trust: TrustConfig
) -> None:
    obj = json.loads(platform.collateral_json)
    obj["root_ca_crl"], obj["pck_crl"] = obj["pck_crl"], obj["root_ca_crl"]
    with pytest.raises(VerificationError):
        verify(sim_quote, Collateral.from_json(json.dumps(obj)), sim_trust, SIM_NOW)


def test_revoked_pck_fails() -> None:
    platform = SimPlatform.create(now=SIM_NOW, settings=SimCollateralSettings(pck_revoked=True))
    quote = platform.quote(REPORT_DATA, IDENTITY)
    trust = TrustConfig.simulated(platform.root_ca_der)
    with pytest.raises(VerificationError, match=r"CertRevoked|certificate chain"):
        verify(quote, platform.collateral, trust, SIM_NOW)
    platform.refresh_collateral(SIM_NOW, SimCollateralSettings(pck_revoked=False))  # control: unrevoked
    assert verify(quote, platform.collateral, trust, SIM_NOW).tcb_status == "UpToDate"


@pytest.mark.parametrize(
    ("status", "advisories"),
    [
        ("UpToDate", ()),
        ("SWHardeningNeeded", ("INTEL-SA-00615",)),
        ("ConfigurationNeeded", ()),
        ("ConfigurationAndSWHardeningNeeded", ("INTEL-SA-00289", "INTEL-SA-00615")),
        ("OutOfDate", ("INTEL-SA-00828",)),
        ("OutOfDateConfigurationNeeded", ("INTEL-SA-00828", "INTEL-SA-00289")),
    ],
)
def test_each_tcb_status_reaches_the_evidence(status: str, advisories: tuple[str, ...]) -> None:
    platform = SimPlatform.create(
        now=SIM_NOW, settings=SimCollateralSettings(tcb_status=status, advisory_ids=advisories)
    )
    quote = platform.quote(REPORT_DATA, IDENTITY)
    evidence = verify(quote, platform.collateral, TrustConfig.simulated(platform.root_ca_der), SIM_NOW)
    assert evidence.tcb_status == status
    assert evidence.advisory_ids == advisories


def test_revoked_tcb_level_is_a_hard_error() -> None:
    platform = SimPlatform.create(now=SIM_NOW, settings=SimCollateralSettings(tcb_status="Revoked"))
    quote = platform.quote(REPORT_DATA, IDENTITY)
    with pytest.raises(VerificationError, match="Revoked"):
        verify(quote, platform.collateral, TrustConfig.simulated(platform.root_ca_der), SIM_NOW)


@pytest.mark.parametrize("garbage", [b"", b"\0" * 48, b"\x03\x00" + bytes(5000), b"x" * 10_000])
def test_garbage_quotes(platform: SimPlatform, sim_trust: TrustConfig, garbage: bytes) -> None:
    with pytest.raises(QuoteFormatError):
        verify(garbage, platform.collateral, sim_trust, SIM_NOW)


def test_now_must_be_a_non_negative_int(
    platform: SimPlatform, sim_quote: bytes, sim_trust: TrustConfig
) -> None:
    for now in (-1, 1.5, "1"):
        with pytest.raises(VerificationError, match="now must be"):
            verify(sim_quote, platform.collateral, sim_trust, now)  # type: ignore[arg-type]


def test_claims_must_match_the_parsed_quote(
    platform: SimPlatform, sim_quote: bytes, sim_trust: TrustConfig
) -> None:
    """The cross-check of dcap-qvl's claims against our own parse fails closed on any difference."""
    parsed = parse_quote_v3(sim_quote)
    claims = json.loads(
        dcap_qvl.QuoteVerifier(root_ca_der=platform.root_ca_der)
        .verify_with_policy(
            sim_quote, platform.collateral, SIM_NOW, dcap_qvl.QuotePolicy.claims_only(SIM_NOW)
        )
        .to_json()
    )
    _check_claims(parsed, claims, sim_trust)  # consistent: no error
    for section, key, value in (
        ("report", "mr_enclave", "00" * 32),
        ("report", "isv_svn", 99),
        ("report", "report_data", "11" * 64),
        ("header", "qe_svn", 1),
        ("header", "user_data", "00" * 20),
    ):
        broken = json.loads(json.dumps(claims))
        target = broken["report"]["SgxEnclave"] if section == "report" else broken["header"]
        target[key] = value
        with pytest.raises(VerificationError, match="does not match the parsed quote"):
            _check_claims(parsed, broken, sim_trust)
    other_root = json.loads(json.dumps(claims))
    other_root["platform"]["root_key_id"] = list(INTEL.root_key_id)
    with pytest.raises(VerificationError, match="did not chain to the trusted root"):
        _check_claims(parsed, other_root, sim_trust)
    del other_root["platform"]
    with pytest.raises(VerificationError, match="did not chain to the trusted root"):
        _check_claims(parsed, other_root, sim_trust)


# --- collateral objects and sources -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        '{"tcb_info": "{}", "qe_identity": "{}"}',
    ],
)
def test_malformed_collateral_is_refused(text: str) -> None:
    with pytest.raises(VerificationError, match="collateral is malformed"):
        Collateral.from_json(text)


def test_collateral_without_crl_next_update_is_refused(platform: SimPlatform) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([]))
        .last_update(platform.pck_certificate.not_valid_before_utc)
        .next_update(platform.pck_certificate.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )
    obj = json.loads(platform.collateral_json)
    obj["pck_crl"] = crl.public_bytes(serialization.Encoding.DER).hex()[:-4]  # truncated DER
    with pytest.raises(VerificationError, match="collateral is malformed"):
        Collateral.from_json(json.dumps(obj))


def test_collateral_file_errors(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="cannot read collateral file"):
        Collateral.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe")
    with pytest.raises(VerificationError, match="cannot read collateral file"):
        Collateral.from_file(tmp_path / "bad.json")


def test_static_and_file_sources(platform: SimPlatform, sim_quote: bytes, tmp_path: Path) -> None:
    collateral = Collateral.from_json(platform.collateral_json)
    assert StaticCollateralSource(collateral).get(sim_quote, SIM_NOW) is collateral
    path = tmp_path / "collateral.json"
    path.write_text(platform.collateral_json)
    assert FileCollateralSource(path).get(sim_quote, SIM_NOW) == collateral


class _CountingSource:
    def __init__(self, platform: SimPlatform) -> None:
        self.platform = platform
        self.calls = 0

    def get(self, quote: bytes, now: int) -> Collateral:
        self.calls += 1
        self.platform.refresh_collateral(now)
        return Collateral.from_json(self.platform.collateral_json)


def test_caching_source_refreshes_before_next_update() -> None:
    platform = SimPlatform.create(now=SIM_NOW, settings=SimCollateralSettings(validity_seconds=10 * 86400))
    quote = platform.quote(REPORT_DATA, IDENTITY)
    inner = _CountingSource(platform)
    cache = CachingCollateralSource(inner, refresh_margin_seconds=86400)
    first = cache.get(quote, SIM_NOW)
    assert inner.calls == 1
    assert cache.get(quote, SIM_NOW + 9 * 86400 - 1) is first  # still a day before nextUpdate
    assert inner.calls == 1
    second = cache.get(quote, SIM_NOW + 9 * 86400)  # inside the margin: fetch again
    assert inner.calls == 2
    assert second.next_update == SIM_NOW + 19 * 86400
    trust = TrustConfig.simulated(platform.root_ca_der)
    assert verify(quote, second, trust, SIM_NOW + 10 * 86400 + 1).tcb_status == "UpToDate"


def test_caching_source_refuses_expired_fetch(platform: SimPlatform, sim_quote: bytes) -> None:
    collateral = Collateral.from_json(platform.collateral_json)
    cache = CachingCollateralSource(StaticCollateralSource(collateral))
    with pytest.raises(VerificationError, match="already expired"):
        cache.get(sim_quote, collateral.next_update)
    with pytest.raises(ValueError, match="must not be negative"):
        CachingCollateralSource(StaticCollateralSource(collateral), refresh_margin_seconds=-1)


def test_caching_source_needs_a_readable_quote(platform: SimPlatform) -> None:
    cache = CachingCollateralSource(StaticCollateralSource(Collateral.from_json(platform.collateral_json)))
    with pytest.raises(VerificationError, match="cannot read FMSPC"):
        cache.get(b"garbage", SIM_NOW)


# --- PCCS fetch against a loopback mock PCCS ---------------------------------------------------------


class _MockPccs(BaseHTTPRequestHandler):
    """Serves one simulated platform's collateral with the PCCS API v4 endpoints dcap-qvl requests."""

    collateral: dict[str, str]
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        url = urllib.parse.urlsplit(self.path)
        c = self.collateral
        routes: dict[str, tuple[bytes, dict[str, str]]] = {
            "/sgx/certification/v4/pckcrl": (
                bytes.fromhex(c["pck_crl"]),
                {"SGX-PCK-CRL-Issuer-Chain": urllib.parse.quote(c["pck_crl_issuer_chain"])},
            ),
            "/sgx/certification/v4/tcb": (
                ('{"tcbInfo":' + c["tcb_info"] + ',"signature":"' + c["tcb_info_signature"] + '"}').encode(),
                {"TCB-Info-Issuer-Chain": urllib.parse.quote(c["tcb_info_issuer_chain"])},
            ),
            "/sgx/certification/v4/qe/identity": (
                (
                    '{"enclaveIdentity":'
                    + c["qe_identity"]
                    + ',"signature":"'
                    + c["qe_identity_signature"]
                    + '"}'
                ).encode(),
                {"SGX-Enclave-Identity-Issuer-Chain": urllib.parse.quote(c["qe_identity_issuer_chain"])},
            ),
            "/sgx/certification/v4/rootcacrl": (c["root_ca_crl"].encode(), {}),
        }
        if url.path not in routes:
            self.send_error(404)
            return
        body, headers = routes[url.path]
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture
def mock_pccs(platform: SimPlatform) -> Iterator[tuple[str, list[str]]]:
    requests: list[str] = []
    handler = type(
        "Handler", (_MockPccs,), {"collateral": json.loads(platform.collateral_json), "requests": requests}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_pccs_source_fetches_from_a_loopback_mock(
    mock_pccs: tuple[str, list[str]], platform: SimPlatform, sim_quote: bytes, sim_trust: TrustConfig
) -> None:
    url, requests = mock_pccs
    collateral = PccsCollateralSource(url).get(sim_quote, SIM_NOW)
    assert {r.split("?")[0] for r in requests} == {
        "/sgx/certification/v4/pckcrl",
        "/sgx/certification/v4/tcb",
        "/sgx/certification/v4/qe/identity",
        "/sgx/certification/v4/rootcacrl",
    }
    assert collateral.next_update == platform.next_update
    assert verify(sim_quote, collateral, sim_trust, SIM_NOW).tcb_status == "UpToDate"


def test_pccs_source_unreachable_is_a_verification_error(sim_quote: bytes) -> None:
    with pytest.raises(VerificationError, match="cannot fetch collateral"):
        PccsCollateralSource("http://127.0.0.1:1").get(sim_quote, SIM_NOW)


def test_root_without_an_ec_key_is_refused() -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "rsa root")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(VerificationError, match="does not have an EC public key"):
        TrustConfig.simulated(cert.public_bytes(serialization.Encoding.DER))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (0x04, "INIT is not set"),
        (0x01, "MODE64BIT is not set"),
        (0x01 | 0x04 | 0x10, "PROVISION_KEY"),
        (0x01 | 0x04 | 0x20, "EINITTOKEN_KEY"),
    ],
)
def test_enclave_attribute_checks(
    platform: SimPlatform, sim_trust: TrustConfig, flags: int, message: str
) -> None:
    """Gramine's RA-TLS attribute rules (docs/formats.md#ratls-attributes) hold for every quote, simulated or real."""
    attributes = flags.to_bytes(8, "little") + bytes(8)
    quote = platform.quote(REPORT_DATA, IDENTITY, attributes=attributes)
    with pytest.raises(VerificationError, match=message):
        verify(quote, platform.collateral, sim_trust, SIM_NOW)
    good = (0x01 | 0x04).to_bytes(8, "little") + bytes(8)
    assert verify(
        platform.quote(REPORT_DATA, IDENTITY, attributes=good), platform.collateral, sim_trust, SIM_NOW
    )
