"""Enclave identity: MRENCLAVE of a simulated replica, MRSIGNER of a signing key, Gramine SIGSTRUCT.

Theory of operation
-------------------
An enclave's identity is (MRENCLAVE, MRSIGNER, ISVPRODID, ISVSVN), the fields a quote carries
(docs/formats.md#quote-body) and a policy matches (`_policy.py`).

* **Simulated MRENCLAVE.** There is no SGX hardware to hash enclave pages, so a simulated replica is
  measured as SHA-256 over a canonical description of everything that decides its behaviour: each file of
  the installed `confserve` package (POSIX relative path and SHA-256 of the content, sorted by path;
  `__pycache__` directories and `*.pyc`/`*.pyo` files skipped), the entry point, and the measured
  arguments (the security-relevant flags and environment, chosen by the caller). The description is
  canonical JSON (sorted keys, no whitespace, ASCII) with a format tag, so it is unambiguous, versioned
  and identical on every machine: no absolute paths, mtimes, owners or modes enter it. Argument values
  are normalised to strings (`True` -> "true", `5` -> "5"), the form they have on a command line.
  The interpreter and third-party wheels are *not* measured: they are pinned in pyproject.toml; add
  their versions to the measured arguments to bind them too.
* **MRSIGNER** = SHA-256 of the RSA-3072 modulus as 384 little-endian bytes (docs/formats.md#sigstruct), for
  an enclave signing key with public exponent 3 as EINIT requires.
* **SIGSTRUCT** (the 1808-byte `.sig` Gramine writes next to the manifest) is parsed with the
  (offset, size, name) table `SIGSTRUCT_LAYOUT` (Intel SDM Vol. 3D §38.13, "Enclave Signature Structure").
  `parse_sigstruct` checks: total size 1808; HEADER and HEADER2 constants; VENDOR is 0 or 0x8086;
  EXPONENT is 3; a 3072-bit modulus; SIGNATURE < MODULUS; the RSASSA-PKCS1-v1_5/SHA-256 signature over
  bytes [0, 128) ‖ [900, 1028) (the two signed regions) verifies under MODULUS; and Q1/Q2 equal the
  values EINIT recomputes (Q1 = ⌊S²/M⌋, Q2 = ⌊(S³ - Q1·S·M)/M⌋). It does *not* prove that ENCLAVEHASH
  is the measurement of any particular manifest or binary: that needs the build inputs.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import struct
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from confserve.attestation._errors import AttestationError, QuoteFormatError, VerificationError
from confserve.attestation._structs import ATTRIBUTE_DEBUG, ATTRIBUTE_MODE64BIT
from confserve.attestation._types import EnclaveIdentity
from confserve.errors import Status
from confserve.files import open_input

__all__ = [
    "DEFAULT_ENTRY_POINT",
    "SIGSTRUCT_LAYOUT",
    "SIGSTRUCT_SIZE",
    "SIMULATED_FORMAT",
    "MeasurementError",
    "SigStruct",
    "build_sigstruct",
    "describe_simulated",
    "find_package_root",
    "format_identity",
    "generate_signing_key",
    "identity_to_json",
    "load_measured_args_toml",
    "measure_simulated",
    "mr_signer_from_pem",
    "mr_signer_from_public_key",
    "normalise_measured_args",
    "parse_sigstruct",
    "simulated_identity",
]


class MeasurementError(AttestationError, status=Status.INVALID_ARGUMENT):
    """A measurement input is unusable: wrong key type or size, missing package, bad argument."""


# --------------------------------------------------------------------------------------------------
# Signing key and MRSIGNER (docs/formats.md#sigstruct)

SGX_MODULUS_BITS = 3072
SGX_MODULUS_BYTES = SGX_MODULUS_BITS // 8
SGX_EXPONENT = 3  # EINIT rejects any other public exponent


def generate_signing_key() -> rsa.RSAPrivateKey:
    """A fresh SGX enclave-signing key: RSA-3072 with e = 3 (like `openssl genrsa -3 3072`)."""
    return rsa.generate_private_key(public_exponent=SGX_EXPONENT, key_size=SGX_MODULUS_BITS)


def mr_signer_from_public_key(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> bytes:
    """MRSIGNER = SHA-256(modulus as 384 little-endian bytes). Rejects keys SGX cannot use."""
    if isinstance(key, rsa.RSAPrivateKey):
        key = key.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise MeasurementError("enclave signing key must be an RSA key")
    numbers = key.public_numbers()
    if key.key_size != SGX_MODULUS_BITS:
        raise MeasurementError(f"enclave signing key must be RSA-3072, got {key.key_size} bits")
    if numbers.e != SGX_EXPONENT:
        raise MeasurementError(f"enclave signing key must have public exponent 3, got {numbers.e}")
    return hashlib.sha256(numbers.n.to_bytes(SGX_MODULUS_BYTES, "little")).digest()


def mr_signer_from_pem(pem: bytes) -> bytes:
    """MRSIGNER from a PEM public key or unencrypted PEM private key."""
    key: object
    try:
        if b"PRIVATE KEY-----" in pem:
            key = serialization.load_pem_private_key(pem, password=None)
        else:
            key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise MeasurementError("cannot load the signing key (PEM, unencrypted, RSA expected)") from None
    if not isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        raise MeasurementError("enclave signing key must be an RSA key")
    return mr_signer_from_public_key(key)


# --------------------------------------------------------------------------------------------------
# Simulated MRENCLAVE

SIMULATED_FORMAT = "confserve-simulated-mrenclave/1"
DEFAULT_ENTRY_POINT = "confserve.cli:main"
MeasuredValue = str | int | bool
_SKIPPED_DIRS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def find_package_root() -> Path:
    """The directory of the installed `confserve` package (the one this module was imported from)."""
    return Path(__file__).resolve().parent.parent


def normalise_measured_args(measured_args: Mapping[str, MeasuredValue]) -> dict[str, str]:
    """Measured arguments as the strings that enter the description (see module docstring)."""
    result: dict[str, str] = {}
    for key, value in measured_args.items():
        if not isinstance(key, str) or not key:
            raise MeasurementError("measured argument names must be non-empty strings")
        if isinstance(value, bool):
            result[key] = "true" if value else "false"
        elif isinstance(value, (str, int)):
            result[key] = str(value)
        else:
            raise MeasurementError(f"measured argument {key!r} must be a string, integer or boolean")
    return result


def _package_files(package_root: Path) -> list[tuple[str, str]]:
    if not package_root.is_dir():
        raise MeasurementError(f"package root {package_root} is not a directory")
    entries: list[tuple[str, str]] = []
    for directory, subdirs, files in os.walk(package_root, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        base = Path(directory)
        for sub in subdirs:
            if (base / sub).is_symlink():
                raise MeasurementError(
                    f"symbolic link in package tree: {(base / sub).relative_to(package_root)}"
                )
        for name in files:
            if name.endswith(_SKIPPED_SUFFIXES):
                continue
            path = base / name
            relative = path.relative_to(package_root).as_posix()
            if path.is_symlink() or not path.is_file():
                raise MeasurementError(f"not a regular file in package tree: {relative}")
            with open_input(path) as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            entries.append((relative, digest))
    if not entries:
        raise MeasurementError(f"no files under package root {package_root}")
    entries.sort()
    return entries


def describe_simulated(
    package_root: Path,
    entry_point: str,
    measured_args: Mapping[str, MeasuredValue],
) -> bytes:
    """The canonical description whose SHA-256 is the simulated MRENCLAVE (useful to diff two builds)."""
    if not isinstance(entry_point, str) or not entry_point:
        raise MeasurementError("entry point must be a non-empty string")
    description = {
        "format": SIMULATED_FORMAT,
        "entry_point": entry_point,
        "files": [[path, digest] for path, digest in _package_files(package_root)],
        "measured_args": normalise_measured_args(measured_args),
    }
    return json.dumps(description, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def measure_simulated(
    package_root: Path,
    entry_point: str,
    measured_args: Mapping[str, MeasuredValue],
) -> bytes:
    """Simulated MRENCLAVE (32 bytes): SHA-256 of `describe_simulated(...)`."""
    return hashlib.sha256(describe_simulated(package_root, entry_point, measured_args)).digest()


def simulated_identity(
    package_root: Path,
    entry_point: str,
    measured_args: Mapping[str, MeasuredValue],
    signing_key: rsa.RSAPublicKey | rsa.RSAPrivateKey,
    *,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
) -> EnclaveIdentity:
    """The full identity of a simulated replica (ISVPRODID/ISVSVN are not part of MRENCLAVE, as on SGX)."""
    try:
        return EnclaveIdentity(
            mr_enclave=measure_simulated(package_root, entry_point, measured_args),
            mr_signer=mr_signer_from_public_key(signing_key),
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
        )
    except ValueError as exc:
        raise MeasurementError(str(exc)) from None


# Measured-argument files are small flat settings; bound what we parse.
MAX_MEASURED_ARGS_FILE_BYTES = 1 << 20


def load_measured_args_toml(data: bytes) -> dict[str, str]:
    """Measured arguments from a TOML file: scalar values, nested tables flattened to dotted keys."""
    if len(data) > MAX_MEASURED_ARGS_FILE_BYTES:
        raise MeasurementError(f"measured-arguments file larger than {MAX_MEASURED_ARGS_FILE_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MeasurementError(f"measured-arguments file is not valid TOML: {exc}") from None
    except RecursionError:
        raise MeasurementError("measured-arguments file is nested too deeply") from None
    flat: dict[str, MeasuredValue] = {}

    def walk(table: Mapping[str, object], prefix: str) -> None:
        for key, value in table.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, f"{name}.")
            elif isinstance(value, (str, int, bool)):
                flat[name] = value
            else:
                raise MeasurementError(f"measured argument {name!r} must be a string, integer or boolean")

    walk(doc, "")
    return normalise_measured_args(flat)


# --------------------------------------------------------------------------------------------------
# SIGSTRUCT (Intel SDM Vol. 3D §38.13; docs/formats.md#sigstruct)

SIGSTRUCT_SIZE = 1808

# (offset, size, name). "signed" regions: [0, 128) and [900, 1028).
SIGSTRUCT_LAYOUT: tuple[tuple[int, int, str], ...] = (
    (0, 16, "header"),  # constant, SIGSTRUCT_HEADER
    (16, 4, "vendor"),  # u32: 0x8086 for Intel enclaves, 0 otherwise
    (20, 4, "date"),  # Gramine: year u16 ‖ month u8 ‖ day u8 (binary); SDM/Intel SDK: BCD u32 0xYYYYMMDD
    (24, 16, "header2"),  # constant, SIGSTRUCT_HEADER2
    (40, 4, "swdefined"),  # u32, software-defined (Gramine: hw_version, 0)
    (44, 84, "reserved1"),
    (128, 384, "modulus"),  # RSA-3072 modulus, little-endian (not signed)
    (512, 4, "exponent"),  # u32, must be 3 (not signed)
    (516, 384, "signature"),  # RSA signature, little-endian (not signed)
    (900, 4, "miscselect"),
    (904, 4, "miscmask"),
    (908, 4, "reserved2"),  # CET attributes on recent CPUs; opaque here
    (912, 16, "isvfamilyid"),  # KSS
    (928, 16, "attributes"),  # flags u64 ‖ xfrm u64
    (944, 16, "attributemask"),  # flags mask u64 ‖ xfrm mask u64
    (960, 32, "enclavehash"),  # MRENCLAVE
    (992, 16, "reserved3"),
    (1008, 16, "isvextprodid"),  # KSS
    (1024, 2, "isvprodid"),  # u16
    (1026, 2, "isvsvn"),  # u16
    (1028, 12, "reserved4"),
    (1040, 384, "q1"),  # little-endian (not signed)
    (1424, 384, "q2"),  # little-endian (not signed)
)
_FIELD = {name: (offset, size) for offset, size, name in SIGSTRUCT_LAYOUT}
SIGNED_REGIONS = ((0, 128), (900, 1028))
SIGSTRUCT_HEADER = bytes.fromhex("06000000E10000000000010000000000")
SIGSTRUCT_HEADER2 = bytes.fromhex("01010000600000006000000001000000")
VENDOR_INTEL = 0x8086


def _field(blob: bytes, name: str) -> bytes:
    offset, size = _FIELD[name]
    return blob[offset : offset + size]


def _u(blob: bytes, name: str) -> int:
    return int.from_bytes(_field(blob, name), "little")


@dataclass(frozen=True, slots=True)
class SigStruct:
    """A parsed and signature-checked SIGSTRUCT."""

    vendor: int
    date: int  # the 4 DATE bytes as a little-endian u32 (see `date_iso`)
    swdefined: int
    modulus: int
    exponent: int
    signature: int
    misc_select: int
    misc_mask: int
    attributes_flags: int
    attributes_xfrm: int
    attribute_mask_flags: int
    attribute_mask_xfrm: int
    enclave_hash: bytes
    isv_prod_id: int
    isv_svn: int

    @property
    def mr_signer(self) -> bytes:
        return hashlib.sha256(self.modulus.to_bytes(SGX_MODULUS_BYTES, "little")).digest()

    @property
    def debug(self) -> bool:
        return bool(self.attributes_flags & ATTRIBUTE_DEBUG)

    @property
    def identity(self) -> EnclaveIdentity:
        return EnclaveIdentity(
            mr_enclave=self.enclave_hash,
            mr_signer=self.mr_signer,
            isv_prod_id=self.isv_prod_id,
            isv_svn=self.isv_svn,
        )

    @property
    def date_iso(self) -> str | None:
        """The build date as YYYY-MM-DD, or None if DATE is neither Gramine's nor the SDM's form.

        Hardware does not interpret DATE. Gramine writes year u16 ‖ month u8 ‖ day u8; the SDM and Intel's
        signing tool use BCD 0xYYYYMMDD. A valid date in one form is never a valid date in the other.
        """
        raw = self.date.to_bytes(4, "little")
        gramine = (int.from_bytes(raw[:2], "little"), raw[2], raw[3])
        text = f"{self.date:08x}"
        bcd = (int(text[:4]), int(text[4:6]), int(text[6:])) if text.isdigit() else (0, 0, 0)
        for year, month, day in (gramine, bcd):
            try:
                return datetime.date(year, month, day).isoformat()
            except ValueError:
                continue
        return None


def _signed_bytes(blob: bytes) -> bytes:
    return b"".join(blob[start:end] for start, end in SIGNED_REGIONS)


def _quotients(signature: int, modulus: int) -> tuple[int, int]:
    q1 = signature * signature // modulus
    q2 = (signature * signature * signature - q1 * signature * modulus) // modulus
    return q1, q2


def parse_sigstruct(blob: bytes) -> SigStruct:
    """Parse and check a SIGSTRUCT (what is checked: module docstring).

    Raises `QuoteFormatError` for a malformed structure, `VerificationError` for a bad signature or Q1/Q2.
    """
    if not isinstance(blob, bytes) or len(blob) != SIGSTRUCT_SIZE:
        size = len(blob) if isinstance(blob, (bytes, bytearray)) else "?"
        raise QuoteFormatError(f"SIGSTRUCT must be {SIGSTRUCT_SIZE} bytes, got {size}")
    if _field(blob, "header") != SIGSTRUCT_HEADER or _field(blob, "header2") != SIGSTRUCT_HEADER2:
        raise QuoteFormatError("SIGSTRUCT header constants do not match")
    vendor = _u(blob, "vendor")
    if vendor not in (0, VENDOR_INTEL):
        raise QuoteFormatError(f"SIGSTRUCT vendor must be 0 or 0x8086, got {vendor:#x}")
    exponent = _u(blob, "exponent")
    if exponent != SGX_EXPONENT:
        raise QuoteFormatError(f"SIGSTRUCT exponent must be 3, got {exponent}")
    modulus = _u(blob, "modulus")
    if modulus.bit_length() != SGX_MODULUS_BITS:
        raise QuoteFormatError("SIGSTRUCT modulus is not 3072 bits")
    signature = _u(blob, "signature")
    if signature >= modulus:
        raise VerificationError("SIGSTRUCT signature is not below the modulus")
    public_key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
    try:
        public_key.verify(
            signature.to_bytes(SGX_MODULUS_BYTES, "big"),
            _signed_bytes(blob),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except InvalidSignature:
        raise VerificationError("SIGSTRUCT signature does not verify") from None
    if (_u(blob, "q1"), _u(blob, "q2")) != _quotients(signature, modulus):
        raise VerificationError("SIGSTRUCT Q1/Q2 do not match the signature")
    flags, xfrm = struct.unpack("<QQ", _field(blob, "attributes"))
    mask_flags, mask_xfrm = struct.unpack("<QQ", _field(blob, "attributemask"))
    return SigStruct(
        vendor=vendor,
        date=_u(blob, "date"),
        swdefined=_u(blob, "swdefined"),
        modulus=modulus,
        exponent=exponent,
        signature=signature,
        misc_select=_u(blob, "miscselect"),
        misc_mask=_u(blob, "miscmask"),
        attributes_flags=flags,
        attributes_xfrm=xfrm,
        attribute_mask_flags=mask_flags,
        attribute_mask_xfrm=mask_xfrm,
        enclave_hash=_field(blob, "enclavehash"),
        isv_prod_id=_u(blob, "isvprodid"),
        isv_svn=_u(blob, "isvsvn"),
    )


def build_sigstruct(
    key: rsa.RSAPrivateKey,
    *,
    enclave_hash: bytes,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
    debug: bool = False,
    date: datetime.date = datetime.date(2026, 1, 1),
    vendor: int = 0,
    swdefined: int = 0,
    misc_select: int = 0,
    misc_mask: int = 0xFFFFFFFF,
    xfrm: int = 0x3,  # x87 and SSE state, the legacy minimum
    attribute_mask_flags: int = 0xFFFFFFFFFFFFFFFF,
    attribute_mask_xfrm: int = 0xFFFFFFFFFFFFFFFC,
) -> bytes:
    """A signed SIGSTRUCT for `enclave_hash`, as a signing tool would write it (for tests and tools).

    ATTRIBUTES.flags is MODE64BIT, plus DEBUG if `debug`. The default masks are illustrative, not
    Gramine's exact choices; nothing here checks masks.
    """
    mr_signer_from_public_key(key)  # the SGX key constraints
    if len(enclave_hash) != 32:
        raise MeasurementError("enclave hash must be 32 bytes")
    flags = ATTRIBUTE_MODE64BIT | (ATTRIBUTE_DEBUG if debug else 0)
    blob = bytearray(SIGSTRUCT_SIZE)

    def put(name: str, value: bytes) -> None:
        offset, size = _FIELD[name]
        assert len(value) == size, name
        blob[offset : offset + size] = value

    put("header", SIGSTRUCT_HEADER)
    put("vendor", struct.pack("<I", vendor))
    put("date", struct.pack("<HBB", date.year, date.month, date.day))  # Gramine's form
    put("header2", SIGSTRUCT_HEADER2)
    put("swdefined", struct.pack("<I", swdefined))
    put("miscselect", struct.pack("<I", misc_select))
    put("miscmask", struct.pack("<I", misc_mask))
    put("attributes", struct.pack("<QQ", flags, xfrm))
    put("attributemask", struct.pack("<QQ", attribute_mask_flags, attribute_mask_xfrm))
    put("enclavehash", enclave_hash)
    put("isvprodid", struct.pack("<H", isv_prod_id))
    put("isvsvn", struct.pack("<H", isv_svn))
    modulus = key.public_key().public_numbers().n
    signature = int.from_bytes(
        key.sign(_signed_bytes(bytes(blob)), padding.PKCS1v15(), hashes.SHA256()), "big"
    )
    q1, q2 = _quotients(signature, modulus)
    put("modulus", modulus.to_bytes(SGX_MODULUS_BYTES, "little"))
    put("exponent", struct.pack("<I", SGX_EXPONENT))
    put("signature", signature.to_bytes(SGX_MODULUS_BYTES, "little"))
    put("q1", q1.to_bytes(SGX_MODULUS_BYTES, "little"))
    put("q2", q2.to_bytes(SGX_MODULUS_BYTES, "little"))
    return bytes(blob)


# --------------------------------------------------------------------------------------------------
# Output, in the form of the reference's enclave.mr / get_image_enclave_mr.sh (last four lines)


def format_identity(identity: EnclaveIdentity) -> str:
    """Four lines, as the reference's `get_image_enclave_mr.sh` prints them: its enclave.mr holds the lines
    of Gramine's `gramine-sgx-get-token` output (4-space indent, aligned values) and it shows the last 4."""
    return (
        f"    mr_enclave:  {identity.mr_enclave.hex()}\n"
        f"    mr_signer:   {identity.mr_signer.hex()}\n"
        f"    isv_prod_id: {identity.isv_prod_id}\n"
        f"    isv_svn:     {identity.isv_svn}\n"
    )


def identity_to_json(identity: EnclaveIdentity, **extra: object) -> str:
    """The identity as one JSON object (hex strings, decimal integers) plus `extra` keys."""
    document: dict[str, object] = {
        "mr_enclave": identity.mr_enclave.hex(),
        "mr_signer": identity.mr_signer.hex(),
        "isv_prod_id": identity.isv_prod_id,
        "isv_svn": identity.isv_svn,
    }
    document.update(extra)
    return json.dumps(document, sort_keys=True, indent=2) + "\n"
