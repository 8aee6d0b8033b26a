"""Enclave identity: simulated MRENCLAVE, MRSIGNER of a signing key, SIGSTRUCT build/parse/verify."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from confserve.attestation import (
    EnclaveIdentity,
    MeasurementError,
    QuoteFormatError,
    VerificationError,
    build_sigstruct,
    describe_simulated,
    find_package_root,
    generate_signing_key,
    measure_simulated,
    mr_signer_from_pem,
    mr_signer_from_public_key,
    parse_sigstruct,
    simulated_identity,
)
from confserve.attestation._measure import (
    SIGSTRUCT_LAYOUT,
    SIGSTRUCT_SIZE,
    SIMULATED_FORMAT,
    format_identity,
    identity_to_json,
    load_measured_args_toml,
    normalise_measured_args,
)

ENCLAVE_HASH = bytes(range(32))


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return generate_signing_key()


@pytest.fixture(scope="module")
def sigstruct(key: rsa.RSAPrivateKey) -> bytes:
    return build_sigstruct(key, enclave_hash=ENCLAVE_HASH, isv_prod_id=7, isv_svn=3)


# --------------------------------------------------------------------------------------------------
# MRSIGNER


def test_generated_key_is_sgx_shaped(key: rsa.RSAPrivateKey) -> None:
    assert key.key_size == 3072
    assert key.public_key().public_numbers().e == 3


def test_mr_signer_known_answer_independent_formulation(key: rsa.RSAPrivateKey) -> None:
    # Independent route: modulus from the DER SubjectPublicKeyInfo via the PKCS#1 big-endian bytes,
    # reversed to little-endian (docs/formats.md#sigstruct: SHA-256 of the 384-byte little-endian modulus).
    n = key.private_numbers().public_numbers.n
    big_endian = n.to_bytes(384, "big")
    expected = hashlib.sha256(big_endian[::-1]).digest()
    assert mr_signer_from_public_key(key) == expected
    assert mr_signer_from_public_key(key.public_key()) == expected


def test_mr_signer_from_pem_private_and_public(key: rsa.RSAPrivateKey) -> None:
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert mr_signer_from_pem(private_pem) == mr_signer_from_pem(public_pem) == mr_signer_from_public_key(key)


def test_mr_signer_rejects_wrong_sizes_and_exponents() -> None:
    small = rsa.generate_private_key(public_exponent=3, key_size=2048)
    with pytest.raises(MeasurementError, match="RSA-3072, got 2048 bits"):
        mr_signer_from_public_key(small)
    wrong_e = rsa.RSAPublicNumbers(65537, small.public_key().public_numbers().n << 1024 | 1).public_key()
    assert wrong_e.key_size == 3072
    with pytest.raises(MeasurementError, match="exponent 3, got 65537"):
        mr_signer_from_public_key(wrong_e)
    with pytest.raises(MeasurementError, match="must be an RSA key"):
        mr_signer_from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())  # type: ignore[arg-type]


def test_mr_signer_from_pem_rejects_garbage_and_other_keys(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(MeasurementError, match="cannot load"):
        mr_signer_from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(MeasurementError, match="cannot load"):
        mr_signer_from_pem(b"not a key")
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(MeasurementError, match="cannot load"):
        mr_signer_from_pem(encrypted)
    ec_pem = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(MeasurementError, match="must be an RSA key"):
        mr_signer_from_pem(ec_pem)


# --------------------------------------------------------------------------------------------------
# Simulated MRENCLAVE


def make_tree(root: Path) -> Path:
    package = root / "confserve"
    (package / "sub").mkdir(parents=True)
    (package / "__pycache__").mkdir()
    (package / "__init__.py").write_text("x = 1\n")
    (package / "sub" / "mod.py").write_text("y = 2\n")
    (package / "py.typed").write_bytes(b"")
    (package / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"compiled")
    (package / "stale.pyc").write_bytes(b"old")
    return package


ARGS = {"model_name": "resnet", "rest_api_port": "0", "ssl": "on"}


def test_description_known_answer(tmp_path: Path) -> None:
    package = make_tree(tmp_path)
    files = [
        ["__init__.py", hashlib.sha256(b"x = 1\n").hexdigest()],
        ["py.typed", hashlib.sha256(b"").hexdigest()],
        ["sub/mod.py", hashlib.sha256(b"y = 2\n").hexdigest()],
    ]
    expected = (
        '{"entry_point":"confserve.cli:main","files":'
        + json.dumps(files, separators=(",", ":"))
        + ',"format":"'
        + SIMULATED_FORMAT
        + '","measured_args":{"model_name":"resnet","rest_api_port":"0","ssl":"on"}}'
    ).encode()
    assert describe_simulated(package, "confserve.cli:main", ARGS) == expected
    assert measure_simulated(package, "confserve.cli:main", ARGS) == hashlib.sha256(expected).digest()


def test_stable_and_independent_of_location_and_metadata(tmp_path: Path) -> None:
    first = make_tree(tmp_path / "one")
    second = tmp_path / "elsewhere" / "deeper" / "confserve"
    shutil.copytree(first, second)
    os.utime(second / "__init__.py", (1, 1))
    (second / "sub" / "mod.py").chmod(0o600)
    shutil.rmtree(second / "__pycache__")
    (second / "sub" / "__pycache__").mkdir()
    (second / "sub" / "__pycache__" / "x.pyc").write_bytes(b"other")
    (second / "sub" / "mod.pyo").write_bytes(b"other")
    mr_one = measure_simulated(first, "e", ARGS)
    assert mr_one == measure_simulated(first, "e", ARGS)
    assert mr_one == measure_simulated(second, "e", dict(reversed(ARGS.items())))
    assert str(tmp_path).encode() not in describe_simulated(second, "e", ARGS)


def test_real_package_copied_to_two_places(tmp_path: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    one = shutil.copytree(find_package_root(), tmp_path / "a" / "confserve", ignore=ignore)
    two = shutil.copytree(one, tmp_path / "b" / "x" / "confserve")
    assert measure_simulated(one, "confserve.cli:main", {}) == measure_simulated(
        two, "confserve.cli:main", {}
    )
    paths = [path for path, _ in json.loads(describe_simulated(one, "e", {}))["files"]]
    assert "attestation/_measure.py" in paths
    assert paths == sorted(paths)


def test_find_package_root_is_the_imported_package() -> None:
    root = find_package_root()
    assert (root / "attestation" / "_measure.py").is_file()
    assert (root / "__init__.py").is_file()


@pytest.mark.parametrize(
    "change",
    [
        lambda p: (p / "sub" / "mod.py").write_text("y = 3\n"),  # one byte of content
        lambda p: (p / "py.typed").write_bytes(b"\n"),
        lambda p: (p / "sub" / "mod.py").rename(p / "sub" / "mod2.py"),
        lambda p: (p / "sub" / "mod.py").rename(p / "mod.py"),
        lambda p: (p / "new.py").write_text(""),
        lambda p: (p / "sub" / "mod.py").unlink(),
        lambda p: (p / "data.so").write_bytes(b"\x7fELF"),
    ],
)
def test_any_file_change_changes_mr_enclave(tmp_path: Path, change: object) -> None:
    package = make_tree(tmp_path)
    before = measure_simulated(package, "e", ARGS)
    change(package)  # type: ignore[operator]
    assert measure_simulated(package, "e", ARGS) != before


@pytest.mark.parametrize(
    "args",
    [
        {**ARGS, "model_name": "resnet2"},
        {**ARGS, "ssl": "off"},
        {**ARGS, "extra": ""},
        {k: v for k, v in ARGS.items() if k != "ssl"},
        {"model_name": "resnet", "rest_api_port": "0", "SSL": "on"},
    ],
)
def test_measured_argument_change_changes_mr_enclave(tmp_path: Path, args: dict[str, str]) -> None:
    package = make_tree(tmp_path)
    assert measure_simulated(package, "e", args) != measure_simulated(package, "e", ARGS)


def test_entry_point_is_measured(tmp_path: Path) -> None:
    package = make_tree(tmp_path)
    assert measure_simulated(package, "a", {}) != measure_simulated(package, "b", {})


def test_encoding_is_unambiguous(tmp_path: Path) -> None:
    package = make_tree(tmp_path)
    # Values that would collide under naive concatenation.
    assert measure_simulated(package, "e", {"a": "b=c"}) != measure_simulated(package, "e", {"a=b": "c"})
    assert measure_simulated(package, "e", {"a": 'x","b":"y'}) != measure_simulated(
        package, "e", {"a": "x", "b": "y"}
    )


def test_argument_values_normalised_to_strings() -> None:
    assert normalise_measured_args({"a": True, "b": False, "c": 5, "d": "x"}) == {
        "a": "true",
        "b": "false",
        "c": "5",
        "d": "x",
    }
    for bad in ({"a": 1.5}, {"a": None}, {"a": ["x"]}, {"": "x"}, {5: "x"}):
        with pytest.raises(MeasurementError):
            normalise_measured_args(bad)  # type: ignore[arg-type]


def test_bad_trees_rejected(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match="not a directory"):
        measure_simulated(tmp_path / "missing", "e", {})
    (tmp_path / "empty" / "__pycache__").mkdir(parents=True)
    with pytest.raises(MeasurementError, match="no files"):
        measure_simulated(tmp_path / "empty", "e", {})
    package = make_tree(tmp_path / "links")
    (package / "link.py").symlink_to(package / "__init__.py")
    with pytest.raises(MeasurementError, match=r"not a regular file in package tree: link\.py"):
        measure_simulated(package, "e", {})
    (package / "link.py").unlink()
    (package / "linkdir").symlink_to(package / "sub")
    with pytest.raises(MeasurementError, match="symbolic link in package tree: linkdir"):
        measure_simulated(package, "e", {})
    with pytest.raises(MeasurementError, match="entry point"):
        measure_simulated(make_tree(tmp_path / "ok"), "", {})


def test_simulated_identity(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    package = make_tree(tmp_path)
    identity = simulated_identity(package, "e", ARGS, key.public_key(), isv_prod_id=2, isv_svn=9)
    assert identity == EnclaveIdentity(
        measure_simulated(package, "e", ARGS), mr_signer_from_public_key(key), 2, 9
    )
    with pytest.raises(MeasurementError, match="16-bit"):
        simulated_identity(package, "e", ARGS, key, isv_svn=0x10000)


def test_measured_args_toml() -> None:
    data = (
        b'model_name = "resnet"\nport = 8500\ntls = true\n[batching]\nmax_batch_size = 32\n[a.b]\nc = "d"\n'
    )
    assert load_measured_args_toml(data) == {
        "model_name": "resnet",
        "port": "8500",
        "tls": "true",
        "batching.max_batch_size": "32",
        "a.b.c": "d",
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"x = 1.5", "string, integer or boolean"),
        (b"x = [1]", "string, integer or boolean"),
        (b"[t]\nx = 2024-01-01", "string, integer or boolean"),
        (b"x = ", "not valid TOML"),
        (b"x = " + b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"x = '\xff'", "not valid TOML"),
        (b"#" * ((1 << 20) + 1), "larger than"),
    ],
)
def test_measured_args_toml_rejects(data: bytes, message: str) -> None:
    with pytest.raises(MeasurementError, match=message):
        load_measured_args_toml(data)


# --------------------------------------------------------------------------------------------------
# SIGSTRUCT


def test_layout_tiles_the_structure_and_matches_the_spec() -> None:
    position = 0
    for offset, size, _name in SIGSTRUCT_LAYOUT:
        assert offset == position
        position += size
    assert position == SIGSTRUCT_SIZE == 1808
    fields = {name: (offset, size) for offset, size, name in SIGSTRUCT_LAYOUT}
    # docs/formats.md#sigstruct
    assert fields["modulus"] == (128, 384)
    assert fields["exponent"] == (512, 4)
    assert fields["signature"] == (516, 384)
    assert fields["miscselect"][0] == 900
    assert fields["attributes"][0] == 928
    assert fields["enclavehash"] == (960, 32)
    assert fields["isvprodid"][0] == 1024
    assert fields["isvsvn"][0] == 1026
    assert fields["q1"][0] == 1040
    assert fields["q2"][0] == 1424


def test_round_trip(key: rsa.RSAPrivateKey, sigstruct: bytes) -> None:
    parsed = parse_sigstruct(sigstruct)
    assert parsed.identity == EnclaveIdentity(ENCLAVE_HASH, mr_signer_from_public_key(key), 7, 3)
    assert not parsed.debug
    assert parsed.exponent == 3
    assert parsed.vendor == 0
    assert parsed.date_iso == "2026-01-01"
    assert parsed.attributes_flags == 0x04
    assert parsed.attributes_xfrm == 0x03
    # docs/formats.md#sigstruct: MRSIGNER is the hash of bytes [128, 512) as stored.
    assert parsed.mr_signer == hashlib.sha256(sigstruct[128:512]).digest()


def test_signature_checked_independently(key: rsa.RSAPrivateKey, sigstruct: bytes) -> None:
    # Independent check: little-endian signature over header [0,128) + body [900,1028), PKCS#1 v1.5 SHA-256.
    signature = sigstruct[516:900][::-1]
    key.public_key().verify(
        signature, sigstruct[:128] + sigstruct[900:1028], padding.PKCS1v15(), hashes.SHA256()
    )
    assert struct.unpack_from("<HBB", sigstruct, 20) == (2026, 1, 1)  # Gramine's date form
    assert sigstruct[:16] == bytes.fromhex("06000000E10000000000010000000000")
    assert sigstruct[24:40] == bytes.fromhex("01010000600000006000000001000000")


def test_debug_vendor_and_date(key: rsa.RSAPrivateKey) -> None:
    blob = build_sigstruct(
        key,
        enclave_hash=ENCLAVE_HASH,
        debug=True,
        vendor=0x8086,
        date=datetime.date(2022, 9, 28),
        isv_prod_id=0xFFFF,
        isv_svn=0xFFFF,
    )
    parsed = parse_sigstruct(blob)
    assert parsed.debug
    assert parsed.attributes_flags == 0x06
    assert parsed.vendor == 0x8086
    assert parsed.date_iso == "2022-09-28"
    assert (parsed.isv_prod_id, parsed.isv_svn) == (0xFFFF, 0xFFFF)


def resign(blob: bytearray, key: rsa.RSAPrivateKey) -> bytes:
    """Re-sign a modified structure so that only the property under test is wrong."""
    n = key.public_key().public_numbers().n
    s = int.from_bytes(
        key.sign(bytes(blob[:128] + blob[900:1028]), padding.PKCS1v15(), hashes.SHA256()), "big"
    )
    q1 = s * s // n
    q2 = (s**3 - q1 * s * n) // n
    blob[516:900] = s.to_bytes(384, "little")
    blob[1040:1424] = q1.to_bytes(384, "little")
    blob[1424:1808] = q2.to_bytes(384, "little")
    return bytes(blob)


@pytest.mark.parametrize(
    ("date", "iso"),
    [
        (struct.pack("<HBB", 2022, 9, 28), "2022-09-28"),  # Gramine: binary year, month, day
        (struct.pack("<I", 0x20220928), "2022-09-28"),  # SDM / Intel SDK: BCD yyyymmdd
        (struct.pack("<I", 0x2026139A), None),  # not BCD, not a date
        (struct.pack("<I", 0x20261301), None),  # BCD digits, month 13
        (struct.pack("<HBB", 2022, 2, 30), None),
        (bytes(4), None),
    ],
)
def test_date_forms(key: rsa.RSAPrivateKey, sigstruct: bytes, date: bytes, iso: str | None) -> None:
    blob = bytearray(sigstruct)
    blob[20:24] = date
    assert parse_sigstruct(resign(blob, key)).date_iso == iso


@pytest.mark.parametrize("offset", [0, 16, 20, 40, 100, 900, 904, 928, 944, 960, 991, 1024, 1026, 1027])
def test_tampered_signed_byte_rejected(sigstruct: bytes, offset: int) -> None:
    blob = bytearray(sigstruct)
    blob[offset] ^= 0x01
    with pytest.raises((VerificationError, QuoteFormatError)):
        parse_sigstruct(bytes(blob))


@pytest.mark.parametrize("offset", [128, 300, 516, 899, 1040, 1423, 1424, 1807])
def test_tampered_unsigned_parts_rejected(sigstruct: bytes, offset: int) -> None:
    # Modulus, signature, Q1, Q2 are outside the signed regions but bound by the verification.
    blob = bytearray(sigstruct)
    blob[offset] ^= 0x01
    with pytest.raises(VerificationError):
        parse_sigstruct(bytes(blob))


def test_modulus_of_another_key_rejected(sigstruct: bytes) -> None:
    other = generate_signing_key()
    blob = bytearray(sigstruct)
    blob[128:512] = other.public_key().public_numbers().n.to_bytes(384, "little")
    with pytest.raises(VerificationError):
        parse_sigstruct(bytes(blob))


def test_structural_errors(key: rsa.RSAPrivateKey, sigstruct: bytes) -> None:
    with pytest.raises(QuoteFormatError, match="1808 bytes, got 1807"):
        parse_sigstruct(sigstruct[:-1])
    with pytest.raises(QuoteFormatError, match="1808 bytes, got 1809"):
        parse_sigstruct(sigstruct + b"\0")
    with pytest.raises(QuoteFormatError, match="got 0"):
        parse_sigstruct(b"")
    with pytest.raises(QuoteFormatError, match="got 1808"):
        parse_sigstruct(bytearray(sigstruct))  # type: ignore[arg-type]
    with pytest.raises(QuoteFormatError, match=r"got \?"):
        parse_sigstruct(None)  # type: ignore[arg-type]
    blob = bytearray(sigstruct)
    blob[25] ^= 1
    with pytest.raises(QuoteFormatError, match="header constants"):
        parse_sigstruct(bytes(blob))
    blob = bytearray(sigstruct)
    blob[16:20] = struct.pack("<I", 0x1234)
    with pytest.raises(QuoteFormatError, match="vendor"):
        parse_sigstruct(resign(blob, key))
    blob = bytearray(sigstruct)
    blob[512:516] = struct.pack("<I", 65537)
    with pytest.raises(QuoteFormatError, match="exponent must be 3, got 65537"):
        parse_sigstruct(bytes(blob))
    blob = bytearray(sigstruct)
    blob[511] = 0x00  # top byte of the little-endian modulus
    with pytest.raises(QuoteFormatError, match="3072 bits"):
        parse_sigstruct(bytes(blob))
    blob = bytearray(sigstruct)
    blob[516:900] = b"\xff" * 384
    with pytest.raises(VerificationError, match="below the modulus"):
        parse_sigstruct(bytes(blob))


def test_wrong_quotients_rejected_even_with_valid_signature(key: rsa.RSAPrivateKey, sigstruct: bytes) -> None:
    blob = bytearray(resign(bytearray(sigstruct), key))
    blob[1424] ^= 0x80
    with pytest.raises(VerificationError, match="Q1/Q2"):
        parse_sigstruct(bytes(blob))


def test_builder_rejects_bad_inputs(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(MeasurementError, match="32 bytes"):
        build_sigstruct(key, enclave_hash=b"short")
    small = rsa.generate_private_key(public_exponent=3, key_size=2048)
    with pytest.raises(MeasurementError, match="RSA-3072"):
        build_sigstruct(small, enclave_hash=ENCLAVE_HASH)


# --------------------------------------------------------------------------------------------------
# Output formats


def test_text_and_json_output() -> None:
    identity = EnclaveIdentity(b"\x01" * 32, b"\x02" * 32, 3, 4)
    lines = format_identity(identity).splitlines()
    assert lines == [  # byte for byte as gramine-sgx-get-token prints them (and enclave.mr keeps them)
        "    mr_enclave:  " + "01" * 32,
        "    mr_signer:   " + "02" * 32,
        "    isv_prod_id: 3",
        "    isv_svn:     4",
    ]
    parsed = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    assert parsed["mr_enclave"] == "01" * 32
    document = json.loads(identity_to_json(identity, debug=False))
    assert document == {
        "mr_enclave": "01" * 32,
        "mr_signer": "02" * 32,
        "isv_prod_id": 3,
        "isv_svn": 4,
        "debug": False,
    }
