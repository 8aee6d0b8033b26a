"""The simulated platform: PKI shape required by dcap-qvl (docs/formats.md#dcap-simulated), quote structure,
collateral shape, persistence with restrictive file modes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtensionOID, NameOID

from confserve.attestation import (
    PlatformTcb,
    SimCollateralSettings,
    SimPlatform,
    SimPlatformError,
    TrustConfig,
    verify,
)
from confserve.attestation._simplatform import SIM_ROOT_CA_COMMON_NAME, default_attributes
from confserve.attestation._structs import INTEL_QE_VENDOR_ID, parse_quote_v3
from tests.unit.attestation.dcap_helpers import IDENTITY, REPORT_DATA, SIM_NOW, dcap_vectors

TCB = PlatformTcb(
    fmspc=bytes.fromhex("00906ED50000"),
    pce_id=bytes.fromhex("0000"),
    cpu_svn=bytes((9, 9, 3, 3, 1, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
    pce_svn=11,
    ppid=bytes(range(16)),
    sgx_type=1,
)


@pytest.fixture(scope="module")
def platform() -> SimPlatform:
    return SimPlatform.create(now=SIM_NOW, tcb=TCB)


def _chain(quote: bytes) -> list[x509.Certificate]:
    pems = parse_quote_v3(quote).signature_data.pck_chain_pem()
    return [x509.load_pem_x509_certificate(pem) for pem in pems]


def _verify_raw(public_key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> None:
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))


def test_root_says_it_is_not_intel(platform: SimPlatform) -> None:
    root = x509.load_der_x509_certificate(platform.root_ca_der)
    cn = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == SIM_ROOT_CA_COMMON_NAME
    assert "NOT INTEL" in cn
    assert "NOT Intel" in root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert root.issuer == root.subject


def test_pck_chain_profile(platform: SimPlatform) -> None:
    leaf, ca, root = _chain(platform.quote(REPORT_DATA, IDENTITY))
    assert root.public_bytes(serialization.Encoding.DER) == platform.root_ca_der
    assert leaf.issuer == ca.subject
    assert ca.issuer == root.subject
    assert "Processor" in ca.subject.rfc4514_string()  # lets dcap-qvl pick the processor CRL
    ca_bc = ca.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
    assert ca_bc.critical
    assert ca_bc.value.ca
    assert ca_bc.value.path_length == 0
    ca_ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ca_ku.critical
    assert ca_ku.value == x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    leaf_ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert leaf_ku.critical  # the PCK signs, with non-repudiation, as Intel's do
    assert leaf_ku.value == x509.KeyUsage(True, True, False, False, False, False, False, False, False)
    leaf_bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert leaf_bc.critical
    assert not leaf_bc.value.ca
    with pytest.raises(x509.ExtensionNotFound):  # an EKU without serverAuth fails dcap-qvl
        leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    for cert in (leaf, ca, root):
        cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert dcap_qvl.parse_quote(platform.quote(REPORT_DATA, IDENTITY)).ca() == "processor"


def test_sgx_extension_as_dcap_qvl_reads_it(platform: SimPlatform) -> None:
    pem = platform.pck_certificate.public_bytes(serialization.Encoding.PEM)
    ext = dcap_qvl.parse_pck_extension_from_pem(pem)
    assert ext.fmspc == TCB.fmspc
    assert ext.cpu_svn == TCB.cpu_svn
    assert ext.pce_svn == TCB.pce_svn
    assert ext.ppid == TCB.ppid
    assert ext.pce_id == TCB.pce_id
    assert ext.sgx_type == TCB.sgx_type
    for i, svn in enumerate(TCB.cpu_svn, start=1):  # each TCB component is its own INTEGER
        assert ext.get_value(f"1.2.840.113741.1.13.1.2.{i}") == bytes((svn,))
    assert ext.get_value("1.2.840.113741.1.13.1.2.17") == bytes((TCB.pce_svn,))
    raw = platform.pck_certificate.extensions.get_extension_for_oid(
        x509.ObjectIdentifier("1.2.840.113741.1.13.1")
    )
    assert isinstance(raw.value, x509.UnrecognizedExtension)
    assert raw.value.value.endswith(
        b"\x06\x0a\x2a\x86\x48\x86\xf8\x4d\x01\x0d\x01\x05\x0a\x01\x01"
    )  # ENUMERATED


def test_sgx_extension_matches_the_real_pck_certificate_layout() -> None:
    """Same structure as Intel's: the real sample's PCK extension carries the same OIDs in the same order."""
    real_quote = (dcap_vectors() / "sgx_quote").read_bytes()
    real_leaf = _chain(real_quote)[0]
    real = real_leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.2.840.113741.1.13.1")).value
    assert isinstance(real, x509.UnrecognizedExtension)
    real_ext = dcap_qvl.parse_pck_extension_from_pem(real_leaf.public_bytes(serialization.Encoding.PEM))
    ours = PlatformTcb(
        fmspc=real_ext.fmspc,
        pce_id=real_ext.pce_id,
        cpu_svn=real_ext.cpu_svn,
        pce_svn=real_ext.pce_svn,
        ppid=real_ext.ppid,
        sgx_type=real_ext.sgx_type,
    ).extension_der()
    assert ours == real.value


def test_quote_structure(platform: SimPlatform) -> None:
    raw = platform.quote(REPORT_DATA, IDENTITY)
    quote = parse_quote_v3(raw)
    assert quote.to_bytes() == raw
    assert (quote.header.version, quote.header.att_key_type, quote.header.tee_type) == (3, 2, 0)
    assert quote.header.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert quote.header.pce_svn == TCB.pce_svn
    assert quote.report_body.identity == IDENTITY
    assert quote.report_body.report_data == REPORT_DATA
    assert quote.report_body.cpu_svn == TCB.cpu_svn
    assert quote.report_body.attributes == default_attributes()
    sig = quote.signature_data
    assert len(sig.qe_auth_data) == 32
    qe_report = sig.qe_report
    assert qe_report.report_data == hashlib.sha256(sig.attestation_key + sig.qe_auth_data).digest() + bytes(
        32
    )
    assert not qe_report.debug
    leaf = _chain(raw)[0]
    leaf_key = leaf.public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    _verify_raw(leaf_key, sig.qe_report_signature, qe_report.to_bytes())
    attestation_key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + sig.attestation_key
    )
    _verify_raw(attestation_key, sig.isv_signature, raw[:432])
    assert sig.certification_data.endswith(b"-----END CERTIFICATE-----\n\x00")


def test_debug_and_explicit_attributes(platform: SimPlatform) -> None:
    assert parse_quote_v3(platform.quote(REPORT_DATA, IDENTITY, debug=True)).report_body.debug
    attributes = bytes.fromhex("07000000000000000300000000000000")
    body = parse_quote_v3(platform.quote(REPORT_DATA, IDENTITY, attributes=attributes)).report_body
    assert body.attributes == attributes
    assert body.debug
    assert body.xfrm == 3


def test_quote_needs_64_bytes_of_report_data(platform: SimPlatform) -> None:
    for size in (0, 32, 63, 65):
        with pytest.raises(SimPlatformError, match="64 bytes"):
            platform.quote(bytes(size), IDENTITY)


def test_collateral_shape_matches_the_real_vectors(platform: SimPlatform) -> None:
    real = json.loads((dcap_vectors() / "sgx_quote_collateral.json").read_text())
    ours = json.loads(platform.collateral_json)
    assert set(ours) == set(real)
    tcb_info = json.loads(ours["tcb_info"])
    assert ours["tcb_info"] == json.dumps(tcb_info, separators=(",", ":"))  # the compact, signed form
    assert tcb_info["id"] == "SGX"
    assert tcb_info["version"] == 3
    assert tcb_info["fmspc"] == TCB.fmspc.hex().upper()
    assert tcb_info["issueDate"] == "2026-05-28T20:26:40Z"
    qe_identity = json.loads(ours["qe_identity"])
    assert (qe_identity["id"], qe_identity["version"]) == ("QE", 2)
    assert set(qe_identity) == set(json.loads(real["qe_identity"]))
    tcb_signing = x509.load_pem_x509_certificates(ours["tcb_info_issuer_chain"].encode())[0]
    key = tcb_signing.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    _verify_raw(key, bytes.fromhex(ours["tcb_info_signature"]), ours["tcb_info"].encode())
    _verify_raw(key, bytes.fromhex(ours["qe_identity_signature"]), ours["qe_identity"].encode())
    root_crl = x509.load_der_x509_crl(bytes.fromhex(ours["root_ca_crl"]))
    pck_crl = x509.load_der_x509_crl(bytes.fromhex(ours["pck_crl"]))
    assert root_crl.issuer == x509.load_der_x509_certificate(platform.root_ca_der).subject
    assert "Processor" in pck_crl.issuer.rfc4514_string()
    assert len(pck_crl) == 0
    assert platform.collateral.tcb_info == ours["tcb_info"]  # also a dcap_qvl.QuoteCollateralV3


@pytest.mark.parametrize("status", ["SWHardeningNeeded", "OutOfDate"])
def test_non_uptodate_status_has_a_newer_level_first(status: str) -> None:
    platform = SimPlatform.create(
        now=SIM_NOW,
        tcb=TCB,
        settings=SimCollateralSettings(tcb_status=status, advisory_ids=("INTEL-SA-00001",)),
    )
    levels = json.loads(json.loads(platform.collateral_json)["tcb_info"])["tcbLevels"]
    assert [level["tcbStatus"] for level in levels] == ["UpToDate", status]
    assert levels[1]["advisoryIDs"] == ["INTEL-SA-00001"]
    assert "advisoryIDs" not in levels[0]
    assert [c["svn"] for c in levels[1]["tcb"]["sgxtcbcomponents"]] == list(TCB.cpu_svn)


def test_revoked_pck_is_listed_in_the_pck_crl() -> None:
    platform = SimPlatform.create(now=SIM_NOW, settings=SimCollateralSettings(pck_revoked=True))
    crl = x509.load_der_x509_crl(bytes.fromhex(json.loads(platform.collateral_json)["pck_crl"]))
    revoked = crl.get_revoked_certificate_by_serial_number(platform.pck_certificate.serial_number)
    assert revoked is not None


def test_init_and_load(tmp_path: Path) -> None:
    directory = tmp_path / "sim"
    created = SimPlatform.init(directory, now=SIM_NOW, settings=SimCollateralSettings(tcb_status="OutOfDate"))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    keys = sorted(p.name for p in directory.glob("*.key.pem"))
    assert keys == [
        "attestation_key.key.pem",
        "pck.key.pem",
        "pck_ca.key.pem",
        "root_ca.key.pem",
        "tcb_signing.key.pem",
    ]
    for key in keys:
        assert stat.S_IMODE((directory / key).stat().st_mode) == 0o600
    assert not list(directory.glob("*.tmp"))
    loaded = SimPlatform.load(directory)
    assert loaded.directory == directory
    assert loaded.root_ca_der == created.root_ca_der
    assert loaded.tcb == created.tcb
    assert loaded.settings == created.settings
    assert loaded.collateral_json == created.collateral_json
    quote = loaded.quote(REPORT_DATA, IDENTITY)
    assert parse_quote_v3(quote).header == parse_quote_v3(created.quote(REPORT_DATA, IDENTITY)).header
    evidence = verify(quote, loaded.collateral, TrustConfig.simulated(loaded.root_ca_der), SIM_NOW)
    assert evidence.tcb_status == "OutOfDate"


def test_private_keys_are_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        SimPlatform.init(tmp_path / "sim", now=SIM_NOW)
    finally:
        os.umask(old)
    for key in (tmp_path / "sim").glob("*.key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_refresh_persists(tmp_path: Path) -> None:
    platform = SimPlatform.init(tmp_path, now=SIM_NOW)
    later = SIM_NOW + 40 * 86400
    platform.refresh_collateral(
        later, SimCollateralSettings(tcb_status="SWHardeningNeeded", validity_seconds=86400)
    )
    assert platform.next_update == later + 86400
    reloaded = SimPlatform.load(tmp_path)
    assert reloaded.next_update == later + 86400
    assert reloaded.settings.tcb_status == "SWHardeningNeeded"
    quote = reloaded.quote(REPORT_DATA, IDENTITY)
    evidence = verify(quote, reloaded.collateral, TrustConfig.simulated(reloaded.root_ca_der), later)
    assert evidence.tcb_status == "SWHardeningNeeded"


def test_init_refuses_an_existing_platform(tmp_path: Path) -> None:
    SimPlatform.init(tmp_path, now=SIM_NOW)
    with pytest.raises(SimPlatformError, match="already holds a simulated platform"):
        SimPlatform.init(tmp_path, now=SIM_NOW)


def test_load_errors_do_not_leak_key_material(tmp_path: Path) -> None:
    with pytest.raises(SimPlatformError, match="cannot load the simulated platform"):
        SimPlatform.load(tmp_path / "missing")
    SimPlatform.init(tmp_path / "p", now=SIM_NOW)
    key_file = tmp_path / "p" / "pck.key.pem"
    key_file.write_bytes(key_file.read_bytes()[:-40])
    with pytest.raises(SimPlatformError) as info:
        SimPlatform.load(tmp_path / "p")
    assert "PRIVATE" not in str(info.value)
    assert "MII" not in str(info.value)
    rsa_like = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_file.write_bytes(rsa_like)
    with pytest.raises(SimPlatformError, match="ValueError"):
        SimPlatform.load(tmp_path / "p")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmspc": bytes(5)}, "wrong size"),
        ({"ppid": bytes(15)}, "wrong size"),
        ({"pce_svn": 0xFFFF}, "pce_svn"),
        ({"cpu_svn": bytes(17)}, "wrong size"),
    ],
)
def test_platform_tcb_validation(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {
        "fmspc": TCB.fmspc,
        "pce_id": TCB.pce_id,
        "cpu_svn": TCB.cpu_svn,
        "pce_svn": TCB.pce_svn,
        "ppid": TCB.ppid,
    }
    values.update(kwargs)
    with pytest.raises(SimPlatformError, match=message):
        PlatformTcb(**values)  # type: ignore[arg-type]


def test_sgx_type_range() -> None:
    tcb = PlatformTcb(
        fmspc=TCB.fmspc, pce_id=TCB.pce_id, cpu_svn=TCB.cpu_svn, pce_svn=1, ppid=TCB.ppid, sgx_type=0x80
    )
    with pytest.raises(SimPlatformError, match="sgx_type"):
        tcb.extension_der()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"tcb_status": "Fine"}, "unknown TCB status"), ({"validity_seconds": 0}, "validity must be positive")],
)
def test_settings_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SimPlatformError, match=message):
        SimCollateralSettings(**kwargs)  # type: ignore[arg-type]
