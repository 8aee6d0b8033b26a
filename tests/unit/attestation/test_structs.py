"""Quote and report structs: the real SGX vector round-trips byte for byte; malformed input is refused."""

from __future__ import annotations

import dataclasses
import struct

import dcap_qvl
import pytest

from confserve.attestation import QuoteFormatError
from confserve.attestation._structs import (
    CERT_DATA_TYPE_PCK_CHAIN,
    INTEL_QE_VENDOR_ID,
    MAX_QUOTE_BYTES,
    QUOTE_SIGNED_SIZE,
    REPORT_BODY_SIZE,
    QuoteHeader,
    QuoteV3,
    ReportBody,
    parse_quote_header,
    parse_quote_v3,
)
from tests.unit.attestation.dcap_helpers import (
    IDENTITY,
    REPORT_DATA,
    SGX_MR_ENCLAVE,
    SGX_MR_SIGNER,
    dcap_vectors,
)


@pytest.fixture(scope="module")
def sgx_quote() -> bytes:
    return (dcap_vectors() / "sgx_quote").read_bytes()


def test_real_sgx_quote_fields(sgx_quote: bytes) -> None:
    quote = parse_quote_v3(sgx_quote)
    assert quote.header.version == 3
    assert quote.header.att_key_type == 2
    assert quote.header.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert (quote.header.qe_svn, quote.header.pce_svn) == (10, 15)
    body = quote.report_body
    assert body.mr_enclave.hex() == SGX_MR_ENCLAVE
    assert body.mr_signer.hex() == SGX_MR_SIGNER
    assert body.report_data.rstrip(b"\0") == b"Hello, world!"
    assert body.attributes.hex() == "0500000000000000e700000000000000"
    assert (body.flags, body.xfrm, body.debug) == (0x05, 0xE7, False)
    assert body.identity.isv_prod_id == 0
    sig = quote.signature_data
    assert sig.qe_auth_data == bytes(range(32))
    assert sig.certification_data_type == CERT_DATA_TYPE_PCK_CHAIN
    assert len(sig.pck_chain_pem()) == 3
    assert sig.certification_data.endswith(b"\0")
    assert sig.qe_report.isv_prod_id == 1


def test_real_sgx_quote_round_trip_is_byte_identical(sgx_quote: bytes) -> None:
    quote = parse_quote_v3(sgx_quote)
    assert quote.to_bytes() == sgx_quote
    assert quote.signed_bytes() == sgx_quote[:QUOTE_SIGNED_SIZE]
    assert ReportBody.parse(quote.report_body.to_bytes()) == quote.report_body


def test_parsed_fields_agree_with_dcap_qvl(sgx_quote: bytes) -> None:
    ours = parse_quote_v3(sgx_quote)
    theirs = dcap_qvl.parse_quote(sgx_quote)
    assert theirs.header.qe_vendor_id == ours.header.qe_vendor_id
    assert theirs.header.user_data == ours.header.user_data
    assert theirs.report.mr_enclave == ours.report_body.mr_enclave
    assert theirs.report.report_data == ours.report_body.report_data
    assert theirs.report.attributes == ours.report_body.attributes
    assert theirs.report.cpu_svn == ours.report_body.cpu_svn


@pytest.mark.parametrize("name", ["tdx_quote", "tdx_quote_td15ex", "tdx_quote_outdated"])
def test_tdx_quotes_are_refused_as_not_sgx(name: str) -> None:
    raw = (dcap_vectors() / name).read_bytes()
    header = parse_quote_header(raw)
    assert header.is_tdx
    with pytest.raises(QuoteFormatError, match="TDX quote"):
        parse_quote_v3(raw)


def _with_header(raw: bytes, **changes: int | bytes) -> bytes:
    header = dataclasses.replace(QuoteHeader.parse(raw[:48]), **changes)  # type: ignore[arg-type]
    return header.to_bytes() + raw[48:]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 4}, "SGX quote version 4"),
        ({"version": 5}, "SGX quote version 5"),
        ({"version": 2}, "unknown quote version 2"),
        ({"version": 0xFFFF}, "unknown quote version"),
        ({"att_key_type": 3}, "not ECDSA P-256"),
        ({"tee_type": 0x81}, "offset 4 must be zero"),
    ],
)
def test_header_inconsistencies(sgx_quote: bytes, changes: dict[str, int], message: str) -> None:
    with pytest.raises(QuoteFormatError, match=message):
        parse_quote_v3(_with_header(sgx_quote, **changes))


@pytest.mark.parametrize("length", [0, 1, 47, 48, 100, 431, 432, 435, 436, 1000, 1011, 1012, 1017, 1020])
def test_truncated_quotes(sgx_quote: bytes, length: int) -> None:
    with pytest.raises(QuoteFormatError):
        parse_quote_v3(sgx_quote[:length])


def test_every_truncation_is_refused(sgx_quote: bytes) -> None:
    for length in range(0, len(sgx_quote), 7):
        with pytest.raises(QuoteFormatError):
            parse_quote_v3(sgx_quote[:length])
    with pytest.raises(QuoteFormatError, match="truncated"):
        parse_quote_v3(sgx_quote[:-1])


def test_trailing_bytes_are_refused(sgx_quote: bytes) -> None:
    with pytest.raises(QuoteFormatError, match="trailing bytes"):
        parse_quote_v3(sgx_quote + b"\0")


def test_oversized_quote_is_refused_before_parsing(sgx_quote: bytes) -> None:
    with pytest.raises(QuoteFormatError, match="more than the 8192 allowed"):
        parse_quote_v3(sgx_quote + bytes(MAX_QUOTE_BYTES))


@pytest.mark.parametrize(
    "garbage", [b"\0" * 4600, b"\xff" * 4600, b"hello world" * 400, bytes(range(256)) * 18]
)
def test_garbage_is_refused(garbage: bytes) -> None:
    with pytest.raises(QuoteFormatError):
        parse_quote_v3(garbage)


def _patch(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_signature_length_field_inconsistent(sgx_quote: bytes) -> None:
    sig_len = len(sgx_quote) - 436
    with pytest.raises(QuoteFormatError, match="truncated"):
        parse_quote_v3(_patch(sgx_quote, 432, "<I", sig_len + 1))
    with pytest.raises(QuoteFormatError, match="trailing"):
        parse_quote_v3(_patch(sgx_quote, 432, "<I", sig_len - 1))


def test_qe_auth_size_inconsistent(sgx_quote: bytes) -> None:
    with pytest.raises(QuoteFormatError):
        parse_quote_v3(_patch(sgx_quote, 436 + 576, "<H", 33))
    with pytest.raises(QuoteFormatError, match="truncated"):
        parse_quote_v3(_patch(sgx_quote, 436 + 576, "<H", 0xFFFF))


@pytest.mark.parametrize("cert_type", [1, 2, 3, 4, 6, 0xFFFF])
def test_wrong_certification_data_type(sgx_quote: bytes, cert_type: int) -> None:
    with pytest.raises(QuoteFormatError, match=f"certification data type {cert_type} is not supported"):
        parse_quote_v3(_patch(sgx_quote, 436 + 578 + 32, "<H", cert_type))


def test_certification_size_inconsistent(sgx_quote: bytes) -> None:
    size_at = 436 + 578 + 32 + 2
    (size,) = struct.unpack_from("<I", sgx_quote, size_at)
    for wrong in (size - 1, size + 1, 0, 0xFFFFFFFF):
        with pytest.raises(QuoteFormatError, match="certification data size"):
            parse_quote_v3(_patch(sgx_quote, size_at, "<I", wrong))


def test_certification_data_without_pem_is_refused(sgx_quote: bytes) -> None:
    quote = parse_quote_v3(sgx_quote)
    broken = dataclasses.replace(
        quote, signature_data=dataclasses.replace(quote.signature_data, certification_data=b"not a chain")
    )
    with pytest.raises(QuoteFormatError, match="not a PEM certificate chain"):
        parse_quote_v3(broken.to_bytes())


def test_build_report_body_and_quote() -> None:
    body = ReportBody.build(IDENTITY, REPORT_DATA, attributes=bytes(16))
    raw = body.to_bytes()
    assert len(raw) == REPORT_BODY_SIZE
    assert raw[64:96] == IDENTITY.mr_enclave
    assert raw[128:160] == IDENTITY.mr_signer
    assert struct.unpack_from("<HH", raw, 256) == (IDENTITY.isv_prod_id, IDENTITY.isv_svn)
    assert raw[320:384] == REPORT_DATA
    assert ReportBody.parse(raw).identity == IDENTITY


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("report_data", bytes(63), "report_data must be 64 bytes"),
        ("attributes", bytes(17), "attributes must be 16 bytes"),
        ("misc_select", 1 << 32, "misc_select does not fit in 4 bytes"),
        ("isv_svn", -1, "isv_svn does not fit"),
    ],
)
def test_build_refuses_wrong_sizes(field: str, value: object, message: str) -> None:
    body = ReportBody.build(IDENTITY, REPORT_DATA, attributes=bytes(16))
    with pytest.raises(QuoteFormatError, match=message):
        dataclasses.replace(body, **{field: value}).to_bytes()  # type: ignore[arg-type]


def test_report_body_parse_needs_exact_size() -> None:
    with pytest.raises(QuoteFormatError, match="report body must be 384 bytes, got 383"):
        ReportBody.parse(bytes(383))
    with pytest.raises(QuoteFormatError, match="quote header must be 48 bytes"):
        QuoteHeader.parse(bytes(49))


def test_build_refuses_oversized_results(sgx_quote: bytes) -> None:
    quote = parse_quote_v3(sgx_quote)
    sig = quote.signature_data
    with pytest.raises(QuoteFormatError, match="QE authentication data is too long"):
        dataclasses.replace(sig, qe_auth_data=bytes(0x10000)).to_bytes()
    with pytest.raises(QuoteFormatError, match="does not fit in 2 bytes"):
        dataclasses.replace(sig, certification_data_type=0x10000).to_bytes()
    big = dataclasses.replace(sig, certification_data=sig.certification_data + bytes(MAX_QUOTE_BYTES))
    with pytest.raises(QuoteFormatError, match="more than the 8192 allowed"):
        QuoteV3(quote.header, quote.report_body, big).to_bytes()


def test_debug_flag() -> None:
    body = ReportBody.build(IDENTITY, REPORT_DATA, attributes=(0x07).to_bytes(8, "little") + bytes(8))
    assert body.debug
    assert not dataclasses.replace(body, attributes=bytes(16)).debug


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"\n", b"\x0b"),
        (b"BEGIN", b"BEGIn"),
        (b"\x00", b"\x01"),
        (b"\x00", b"\x00\x00"),
        (b"-----\n", b"----- \n"),
    ],
)
def test_certification_data_must_be_strict_pem(sgx_quote: bytes, old: bytes, new: bytes) -> None:
    """dcap-qvl reads PEM leniently; the parser does not, so no byte of the chain is malleable."""
    quote = parse_quote_v3(sgx_quote)
    cert_data = quote.signature_data.certification_data
    at = cert_data.rindex(old)
    changed = cert_data[:at] + new + cert_data[at + len(old) :]
    broken = dataclasses.replace(
        quote, signature_data=dataclasses.replace(quote.signature_data, certification_data=changed)
    )
    with pytest.raises(QuoteFormatError, match="not a PEM certificate chain"):
        parse_quote_v3(broken.to_bytes())


def test_signature_data_shorter_than_its_fixed_part(sgx_quote: bytes) -> None:
    short = sgx_quote[:432] + struct.pack("<I", 100) + bytes(100)
    with pytest.raises(QuoteFormatError, match="signature data is truncated"):
        parse_quote_v3(short)
