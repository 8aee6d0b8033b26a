"""SGX report bodies and Intel DCAP ECDSA quotes (v3): strict parsing and byte-exact building.

Theory of operation
-------------------
Every binary layout is an (offset, size, name, kind) table; `kind` is `int` (unsigned little-endian) or
`bytes`. `_decode` and `_encode` walk a table, so the table is the single statement of the format and the
code cannot drift from it. The layouts are described in docs/formats.md#quote (after
Intel's `sgx_quote_3.h` / `sgx_report.h` and the SGX SDM vol. 3D 38.15).

A v3 quote is `header(48) || report_body(384) || u32 sig_len || signature_data(sig_len)`. The parser is
strict: the quote must be exactly as long as its length fields say (no trailing bytes), the header must say v3
/ ECDSA-P256 / SGX, and the certification data must be type 5 (the PEM PCK chain that Gramine's QE3 emits,
docs/formats.md#dev-attestation). Anything else raises `QuoteFormatError` with a short message that names the
offending field. v4/v5 headers are read only far enough to refuse TDX and non-v3 SGX quotes with a clear
message. Parsing proves nothing about authenticity: only `_verify` does.

Re-encoding a parsed quote gives the identical bytes (reserved fields and the certification data,
including any trailing NUL after the PEM chain, are kept verbatim).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any, Final, Self

from confserve.attestation._errors import QuoteFormatError
from confserve.attestation._types import EnclaveIdentity

__all__ = [
    "ATTRIBUTE_DEBUG",
    "ATTRIBUTE_EINITTOKEN_KEY",
    "ATTRIBUTE_INIT",
    "ATTRIBUTE_MODE64BIT",
    "ATTRIBUTE_PROVISION_KEY",
    "CERT_DATA_TYPE_PCK_CHAIN",
    "INTEL_QE_VENDOR_ID",
    "MAX_QUOTE_BYTES",
    "QUOTE_HEADER_SIZE",
    "QUOTE_SIGNED_SIZE",
    "REPORT_BODY_SIZE",
    "TEE_TYPE_SGX",
    "TEE_TYPE_TDX",
    "EcdsaSignatureData",
    "QuoteHeader",
    "QuoteV3",
    "ReportBody",
    "parse_quote_header",
    "parse_quote_v3",
]

# --- constants ------------------------------------------------------------------------------------

QUOTE_HEADER_SIZE: Final = 48  # E.1
REPORT_BODY_SIZE: Final = 384  # sgx_report_body_t (docs/formats.md#quote-body)
QUOTE_SIGNED_SIZE: Final = QUOTE_HEADER_SIZE + REPORT_BODY_SIZE  # 432: the ISV signature covers [0, 432)
_SIG_LEN_SIZE: Final = 4  # u32 signature_data_len at quote offset 432 (docs/formats.md#quote-body)
_SIG_DATA_FIXED_SIZE: Final = (
    576  # sig 64 + attest key 64 + QE report 384 + QE report sig 64 (docs/formats.md#quote-signature)
)
# Gramine's /dev/attestation/quote buffer holds at most 8192 bytes (SGX_QUOTE_MAX_SIZE;
# docs/formats.md#dev-attestation); real type-5 quotes are 4.4-5 KB. A larger input is refused before anything
# else is looked at.
MAX_QUOTE_BYTES: Final = 8192

QUOTE_VERSION_3: Final = 3  # SGX ECDSA quotes from QE3 (docs/formats.md#quote-header)
ATT_KEY_TYPE_ECDSA_P256: Final = 2  # 2 = ECDSA-256-with-P-256 (3 = P-384, unsupported by dcap-qvl)
TEE_TYPE_SGX: Final = 0x00000000  # E.1 (v4/v5 header offset 4)
TEE_TYPE_TDX: Final = 0x00000081
CERT_DATA_TYPE_PCK_CHAIN: Final = 5  # PEM: PCK leaf, PCK CA, root
# Intel's QE vendor ID; dcap-qvl refuses any other ("Unknown QE vendor ID", docs/formats.md#dcap-checks).
INTEL_QE_VENDOR_ID: Final = bytes.fromhex("939A7233F79C4CA9940A0DB3957F0607")

# ATTRIBUTES.flags bits (docs/formats.md#quote-body) (u64 at report-body offset 48).
ATTRIBUTE_INIT: Final = 0x01
ATTRIBUTE_DEBUG: Final = 0x02
ATTRIBUTE_MODE64BIT: Final = 0x04
ATTRIBUTE_PROVISION_KEY: Final = 0x10  # may use the provisioning key: only Intel's architectural enclaves
ATTRIBUTE_EINITTOKEN_KEY: Final = 0x20  # may use the launch key: only the launch enclave

# --- tables ---------------------------------------------------------------------------------------

_Table = tuple[tuple[int, int, str, type], ...]

# E.1 Quote header, 48 bytes. In v3 offset 4 is reserved (0); v4/v5 put the TEE type there.
_HEADER: Final[_Table] = (
    (0, 2, "version", int),
    (2, 2, "att_key_type", int),
    (4, 4, "tee_type", int),
    (8, 2, "qe_svn", int),
    (10, 2, "pce_svn", int),
    (12, 16, "qe_vendor_id", bytes),
    (28, 20, "user_data", bytes),
)

# E.2 Report body (sgx_report_body_t), 384 bytes; SDM vol. 3D 38.15 "REPORT".
_REPORT_BODY: Final[_Table] = (
    (0, 16, "cpu_svn", bytes),
    (16, 4, "misc_select", int),
    (20, 12, "reserved1", bytes),
    (32, 16, "isv_ext_prod_id", bytes),
    (48, 16, "attributes", bytes),  # flags u64 LE || xfrm u64 LE
    (64, 32, "mr_enclave", bytes),
    (96, 32, "reserved2", bytes),
    (128, 32, "mr_signer", bytes),
    (160, 32, "reserved3", bytes),
    (192, 64, "config_id", bytes),
    (256, 2, "isv_prod_id", int),
    (258, 2, "isv_svn", int),
    (260, 2, "config_svn", int),
    (262, 42, "reserved4", bytes),
    (304, 16, "isv_family_id", bytes),
    (320, 64, "report_data", bytes),
)

# E.3 Fixed part of the v3 ECDSA signature data (sgx_ql_ecdsa_sig_data_t), offsets relative to quote
# offset 436. It is followed by u16 qe_auth_size || qe_auth || u16 cert_type || u32 cert_size || cert.
_SIG_DATA: Final[_Table] = (
    (0, 64, "isv_signature", bytes),  # r || s, big-endian, by the attestation key over quote[0:432]
    (64, 64, "attestation_key", bytes),  # X || Y, big-endian, no 0x04 prefix
    (128, 384, "qe_report", bytes),  # a report body (table above) of the QE
    (512, 64, "qe_report_signature", bytes),  # r || s by the PCK leaf key over qe_report
)


def _check_table(table: _Table, size: int) -> None:
    """Import-time proof that a table is contiguous, in order and exactly `size` bytes long."""
    offset = 0
    for field_offset, field_size, _name, _kind in table:
        assert field_offset == offset, table
        offset += field_size
    assert offset == size, table


_check_table(_HEADER, QUOTE_HEADER_SIZE)
_check_table(_REPORT_BODY, REPORT_BODY_SIZE)
_check_table(_SIG_DATA, _SIG_DATA_FIXED_SIZE)


def _decode(table: _Table, data: bytes | memoryview) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for offset, size, name, kind in table:
        raw = bytes(data[offset : offset + size])
        values[name] = int.from_bytes(raw, "little") if kind is int else raw
    return values


def _encode(table: _Table, obj: object) -> bytes:
    out = bytearray()
    for _offset, size, name, kind in table:
        value = getattr(obj, name)
        if kind is int:
            if not (isinstance(value, int) and 0 <= value < 1 << (8 * size)):
                raise QuoteFormatError(f"{name} does not fit in {size} bytes")
            out += value.to_bytes(size, "little")
        else:
            if not (isinstance(value, bytes) and len(value) == size):
                raise QuoteFormatError(f"{name} must be {size} bytes")
            out += value
    return bytes(out)


def _need(data: bytes | memoryview, size: int, what: str) -> None:
    if len(data) != size:
        raise QuoteFormatError(f"{what} must be {size} bytes, got {len(data)}")


# --- header ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    """The 48-byte quote header (docs/formats.md#quote-header); shared by v3, v4 and v5 quotes."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    @classmethod
    def parse(cls, data: bytes | memoryview) -> Self:
        _need(data, QUOTE_HEADER_SIZE, "quote header")
        return cls(**_decode(_HEADER, data))

    def to_bytes(self) -> bytes:
        return _encode(_HEADER, self)

    @property
    def is_tdx(self) -> bool:
        return self.version >= 4 and self.tee_type == TEE_TYPE_TDX


def parse_quote_header(quote: bytes) -> QuoteHeader:
    """Read just the header of any DCAP quote (v3, v4 or v5), to route or refuse it."""
    if len(quote) > MAX_QUOTE_BYTES:
        raise QuoteFormatError(f"quote is {len(quote)} bytes, more than the {MAX_QUOTE_BYTES} allowed")
    if len(quote) < QUOTE_HEADER_SIZE:
        raise QuoteFormatError(f"quote is truncated: {len(quote)} bytes, shorter than its header")
    return QuoteHeader.parse(memoryview(quote)[:QUOTE_HEADER_SIZE])


# --- report body ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportBody:
    """An SGX report body (docs/formats.md#quote-body): the enclave's measured identity plus 64 bytes it chose
    (report_data)."""

    cpu_svn: bytes
    misc_select: int
    reserved1: bytes
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    reserved2: bytes
    mr_signer: bytes
    reserved3: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    reserved4: bytes
    isv_family_id: bytes
    report_data: bytes

    @classmethod
    def parse(cls, data: bytes | memoryview) -> Self:
        _need(data, REPORT_BODY_SIZE, "report body")
        return cls(**_decode(_REPORT_BODY, data))

    @classmethod
    def build(
        cls,
        identity: EnclaveIdentity,
        report_data: bytes,
        *,
        attributes: bytes,
        cpu_svn: bytes = bytes(16),
        misc_select: int = 0,
    ) -> Self:
        """A report body with zero reserved/config/family fields, as a fresh enclave has them."""
        body = cls(
            cpu_svn=cpu_svn,
            misc_select=misc_select,
            reserved1=bytes(12),
            isv_ext_prod_id=bytes(16),
            attributes=attributes,
            mr_enclave=identity.mr_enclave,
            reserved2=bytes(32),
            mr_signer=identity.mr_signer,
            reserved3=bytes(32),
            config_id=bytes(64),
            isv_prod_id=identity.isv_prod_id,
            isv_svn=identity.isv_svn,
            config_svn=0,
            reserved4=bytes(42),
            isv_family_id=bytes(16),
            report_data=report_data,
        )
        body.to_bytes()  # validates every field size now rather than at first use
        return body

    def to_bytes(self) -> bytes:
        return _encode(_REPORT_BODY, self)

    @property
    def flags(self) -> int:
        """ATTRIBUTES.flags (u64 LE at body offset 48)."""
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def xfrm(self) -> int:
        """ATTRIBUTES.xfrm (u64 LE at body offset 56)."""
        return int.from_bytes(self.attributes[8:16], "little")

    @property
    def debug(self) -> bool:
        """The DEBUG attribute: the host can read and modify the enclave's memory."""
        return bool(self.flags & ATTRIBUTE_DEBUG)

    @property
    def identity(self) -> EnclaveIdentity:
        return EnclaveIdentity(
            mr_enclave=self.mr_enclave,
            mr_signer=self.mr_signer,
            isv_prod_id=self.isv_prod_id,
            isv_svn=self.isv_svn,
        )


# --- signature data -------------------------------------------------------------------------------

# Type-5 data (docs/formats.md#quote-signature) is PEM certificates back to back, optionally ended by one NUL
# (as QE3 writes it). Nothing else is tolerated: dcap-qvl's own PEM reading is lenient (it accepts e.g. a
# vertical tab for a line feed), and a quote must not verify after any byte of it changed.
_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n(?:[A-Za-z0-9+/]+={0,2}\r?\n)+-----END CERTIFICATE-----(?:\r?\n)?"
)
_CERT_CHAIN = re.compile(rb"(?:" + _PEM_CERT.pattern + rb")+\x00?")


@dataclass(frozen=True, slots=True)
class EcdsaSignatureData:
    """The v3 ECDSA signature data (docs/formats.md#quote-signature) with type-5 certification data."""

    isv_signature: bytes
    attestation_key: bytes
    qe_report: ReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data: bytes  # type 5: PEM chain, kept verbatim (may end with a NUL)
    certification_data_type: int = CERT_DATA_TYPE_PCK_CHAIN

    @classmethod
    def parse(cls, data: bytes | memoryview) -> Self:
        view = memoryview(data)
        if len(view) < _SIG_DATA_FIXED_SIZE + 2:
            raise QuoteFormatError("signature data is truncated")
        fixed = _decode(_SIG_DATA, view)
        qe_report = ReportBody.parse(fixed.pop("qe_report"))
        pos = _SIG_DATA_FIXED_SIZE
        (auth_size,) = struct.unpack_from("<H", view, pos)
        pos += 2
        if len(view) < pos + auth_size + 6:
            raise QuoteFormatError("QE authentication data or certification header is truncated")
        qe_auth_data = bytes(view[pos : pos + auth_size])
        pos += auth_size
        cert_type, cert_size = struct.unpack_from("<HI", view, pos)
        pos += 6
        if cert_type != CERT_DATA_TYPE_PCK_CHAIN:
            raise QuoteFormatError(
                f"certification data type {cert_type} is not supported (only 5, the PEM PCK chain)"
            )
        if len(view) - pos != cert_size:
            raise QuoteFormatError(
                f"certification data size field says {cert_size} bytes but {len(view) - pos} follow"
            )
        cert_data = bytes(view[pos:])
        if not _CERT_CHAIN.fullmatch(cert_data):
            raise QuoteFormatError("certification data is not a PEM certificate chain")
        return cls(
            qe_report=qe_report,
            qe_auth_data=qe_auth_data,
            certification_data=cert_data,
            **fixed,
        )

    def to_bytes(self) -> bytes:
        fixed = _encode(
            _SIG_DATA,
            SimpleNamespace(
                isv_signature=self.isv_signature,
                attestation_key=self.attestation_key,
                qe_report=self.qe_report.to_bytes(),
                qe_report_signature=self.qe_report_signature,
            ),
        )
        if len(self.qe_auth_data) > 0xFFFF:
            raise QuoteFormatError("QE authentication data is too long")
        if not 0 <= self.certification_data_type <= 0xFFFF:
            raise QuoteFormatError("certification data type does not fit in 2 bytes")
        return b"".join(
            (
                fixed,
                struct.pack("<H", len(self.qe_auth_data)),
                self.qe_auth_data,
                struct.pack("<HI", self.certification_data_type, len(self.certification_data)),
                self.certification_data,
            )
        )

    def pck_chain_pem(self) -> list[bytes]:
        """The PEM certificates of the type-5 chain, leaf first (leaf, PCK CA, root)."""
        return [m.group(0) for m in _PEM_CERT.finditer(self.certification_data)]


# --- quote ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuoteV3:
    """An SGX DCAP ECDSA quote, version 3 (docs/formats.md#quote)."""

    header: QuoteHeader
    report_body: ReportBody
    signature_data: EcdsaSignatureData

    @classmethod
    def parse(cls, quote: bytes) -> Self:
        header = parse_quote_header(quote)
        _check_v3_header(header)
        if len(quote) < QUOTE_SIGNED_SIZE + _SIG_LEN_SIZE:
            raise QuoteFormatError(f"quote is truncated: {len(quote)} bytes, shorter than its report body")
        view = memoryview(quote)
        (sig_len,) = struct.unpack_from("<I", view, QUOTE_SIGNED_SIZE)
        start = QUOTE_SIGNED_SIZE + _SIG_LEN_SIZE
        if len(quote) - start != sig_len:
            problem = "truncated" if len(quote) - start < sig_len else "followed by trailing bytes"
            raise QuoteFormatError(
                f"quote is {problem}: signature data length field says {sig_len}, "
                f"{len(quote) - start} bytes follow"
            )
        return cls(
            header=header,
            report_body=ReportBody.parse(view[QUOTE_HEADER_SIZE:QUOTE_SIGNED_SIZE]),
            signature_data=EcdsaSignatureData.parse(view[start:]),
        )

    def to_bytes(self) -> bytes:
        sig = self.signature_data.to_bytes()
        out = self.signed_bytes() + struct.pack("<I", len(sig)) + sig
        if len(out) > MAX_QUOTE_BYTES:
            raise QuoteFormatError(
                f"quote would be {len(out)} bytes, more than the {MAX_QUOTE_BYTES} allowed"
            )
        return out

    def signed_bytes(self) -> bytes:
        """quote[0:432], the bytes the attestation key signs (docs/formats.md#quote-signature)."""
        return self.header.to_bytes() + self.report_body.to_bytes()


def _check_v3_header(header: QuoteHeader) -> None:
    if header.version in (4, 5):
        if header.tee_type == TEE_TYPE_TDX:
            raise QuoteFormatError(f"TDX quote (version {header.version}): only SGX quotes are supported")
        raise QuoteFormatError(f"SGX quote version {header.version} is not supported (only version 3)")
    if header.version != QUOTE_VERSION_3:
        raise QuoteFormatError(f"unknown quote version {header.version}")
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise QuoteFormatError(f"attestation key type {header.att_key_type} is not ECDSA P-256 (2)")
    if header.tee_type != TEE_TYPE_SGX:
        raise QuoteFormatError("reserved header field at offset 4 must be zero in a version 3 quote")


def parse_quote_v3(quote: bytes) -> QuoteV3:
    """Parse an SGX DCAP v3 quote strictly; raise `QuoteFormatError` on anything else."""
    return QuoteV3.parse(quote)


# Keep the dataclass field order and the tables in step (a field added to one but not the other breaks
# `cls(**_decode(...))` at first use; this turns it into an import-time failure).
assert tuple(f.name for f in fields(QuoteHeader)) == tuple(n for _o, _s, n, _k in _HEADER)
assert tuple(f.name for f in fields(ReportBody)) == tuple(n for _o, _s, n, _k in _REPORT_BODY)
