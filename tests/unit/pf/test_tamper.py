"""Every modification of a protected file is rejected, and no unauthenticated plaintext escapes.

The format authenticates everything but three things, as in Gramine: the padding after the encrypted
header (never read), and, in v2, the feature_flags byte (we refuse any set flag). Replacing a whole file
by an older one under the same key and path is not detectable by the format (docs/threat-model.md).
"""

from __future__ import annotations

import io
import os

import pytest

from confserve import pf
from confserve.pf._crypto import derive_metadata_key, gcm_encrypt

KEY = pf.WrapKey(bytes(range(16)))
PATH = "models/m/1/variables/variables.data-00000-of-00001"
# 3265 data nodes, 35 MHT nodes: MHT 33 and 34 hang below MHT 1, a second level of the tree.
SIZE = 3072 + 34 * 96 * 4096 + 77
PLAIN = os.urandom(SIZE)


@pytest.fixture(scope="module", params=[1, 2])
def blob(request: pytest.FixtureRequest) -> bytes:
    return pf.encrypt_bytes(PLAIN, KEY, bound_path=PATH, format_version=request.param)


def _read_all(data: bytes | bytearray) -> bytearray:
    return pf.decrypt_bytes(bytes(data), KEY, bound_path=PATH)


def _flip(data: bytes, offset: int) -> bytearray:
    out = bytearray(data)
    out[offset] ^= 0x01
    return out


def _node(data: bytes | bytearray, p: int) -> bytes:
    return bytes(data[p * 4096 : (p + 1) * 4096])


def _with_node(data: bytes | bytearray, p: int, node: bytes) -> bytearray:
    out = bytearray(data)
    out[p * 4096 : (p + 1) * 4096] = node
    return out


def test_untampered_reads(blob: bytes) -> None:
    assert _read_all(blob) == PLAIN


@pytest.mark.parametrize("version", [1, 2])
def test_every_authenticated_metadata_byte(version: int) -> None:
    small = pf.encrypt_bytes(PLAIN[:5000], KEY, bound_path=PATH, format_version=version)
    end = (58 if version == 1 else 59) + 3884
    for offset in range(end):
        with pytest.raises((pf.FormatError, pf.IntegrityError)):
            pf.ProtectedFileReader(io.BytesIO(bytes(_flip(small, offset))), KEY, bound_path=PATH)


def test_metadata_padding_is_not_authenticated(blob: bytes) -> None:
    """Documented format property (as in Gramine): the padding after the header is never read."""
    assert _read_all(_flip(blob, 4095)) == PLAIN


@pytest.mark.parametrize(
    ("physical", "what"),
    [
        (1, "root MHT"),
        (98, "MHT 1"),
        (1 + 97 * 33, "MHT 33 (second level)"),
        (1 + 97 * 34, "last MHT"),
        (2, "first data node"),
        (2 + 97 * 17 + 40, "middle data node"),
        (-1, "last data node"),
    ],
)
@pytest.mark.parametrize("where", [0, 2047, 4095])
def test_flipped_byte_in_tree_or_data_node(blob: bytes, physical: int, what: str, where: int) -> None:
    p = physical if physical >= 0 else len(blob) // 4096 - 1
    with pytest.raises(pf.IntegrityError):
        _read_all(_flip(blob, p * 4096 + where))


def test_truncation_and_extension(blob: bytes) -> None:
    with pytest.raises(pf.IntegrityError, match="truncated"):
        _read_all(blob[:-4096])
    with pytest.raises(pf.IntegrityError, match="extended"):
        _read_all(blob + bytes(4096))
    with pytest.raises(pf.FormatError):
        _read_all(blob[:-1])
    with pytest.raises(pf.FormatError):
        _read_all(blob + b"\0")
    with pytest.raises(pf.FormatError):
        _read_all(b"")
    with pytest.raises(pf.FormatError):
        _read_all(blob[:100])


def test_swapped_nodes(blob: bytes) -> None:
    swapped = _with_node(_with_node(blob, 2, _node(blob, 3)), 3, _node(blob, 2))
    with pytest.raises(pf.IntegrityError):
        _read_all(swapped)
    swapped = _with_node(_with_node(blob, 98, _node(blob, 195)), 195, _node(blob, 98))
    with pytest.raises(pf.IntegrityError):
        _read_all(swapped)


def test_node_from_another_file_under_the_same_key_and_path(blob: bytes) -> None:
    other = pf.encrypt_bytes(PLAIN, KEY, bound_path=PATH, format_version=blob[8])
    for p in (1, 2, 98, 500):
        with pytest.raises(pf.IntegrityError):
            _read_all(_with_node(blob, p, _node(other, p)))
    # Metadata node of a shorter file on top of this file's tree.
    short = pf.encrypt_bytes(PLAIN[:10_000], KEY, bound_path=PATH, format_version=blob[8])
    with pytest.raises(pf.IntegrityError):
        _read_all(_with_node(blob, 0, _node(short, 0)))


def test_unauthenticated_plaintext_never_reaches_the_callers_buffer(blob: bytes) -> None:
    tampered = _flip(blob, 3 * 4096 + 10)  # data node 1
    reader = pf.ProtectedFileReader(io.BytesIO(bytes(tampered)), KEY, bound_path=PATH)
    buf = bytearray(b"\xaa" * SIZE)
    with pytest.raises(pf.IntegrityError):
        reader.readinto(buf)
    assert buf[3072 + 4096 : 3072 + 8192] == bytes(4096)
    reader.seek(3072 + 4096 + 100)
    with pytest.raises(pf.IntegrityError):
        reader.read(10)


@pytest.mark.parametrize(
    ("start", "length"),
    [
        (3072 + 4096 + 100, 10),  # inside the tampered node
        (3072 + 4096 + 100, 3 * 4096),  # from inside it on, across whole nodes
        (3072, 4096 + 50),  # a whole node, then the start of the tampered one
        (3072 + 4096, 4096),  # exactly the tampered node
    ],
)
def test_tampered_node_leaves_no_plaintext_in_a_partial_read(blob: bytes, start: int, length: int) -> None:
    tampered = _flip(blob, 3 * 4096 + 10)  # data node 1: plaintext [3072 + 4096, 3072 + 8192)
    reader = pf.ProtectedFileReader(io.BytesIO(bytes(tampered)), KEY, bound_path=PATH)
    reader.seek(start)
    buf = bytearray(b"\xaa" * length)
    with pytest.raises(pf.IntegrityError):
        reader.readinto(buf)
    node = slice(max(0, 3072 + 4096 - start), min(length, 3072 + 8192 - start))
    assert set(buf[node]) <= {0x00, 0xAA}  # wiped or untouched, never decrypted
    assert buf[: node.start] in (PLAIN[start : start + node.start], b"\xaa" * node.start)


def test_wrong_key_and_bad_versions(blob: bytes) -> None:
    with pytest.raises(pf.IntegrityError):
        pf.decrypt_bytes(blob, pf.WrapKey(bytes(16)), bound_path=PATH)
    for version in (0, 3, 255):
        bad = bytearray(blob)
        bad[8] = version
        with pytest.raises(pf.VersionError):
            _read_all(bad)
    bad = bytearray(blob)
    bad[9] = 1
    with pytest.raises(pf.VersionError, match="minor"):
        _read_all(bad)


@pytest.mark.parametrize(("flags", "message"), [(0x01, "pending write"), (0x80, "unknown feature flags")])
def test_v2_feature_flags_are_refused(flags: int, message: str) -> None:
    blob = bytearray(pf.encrypt_bytes(b"x" * 5000, KEY, bound_path=PATH, format_version=2))
    blob[58] = flags
    with pytest.raises(pf.FormatError, match=message):
        _read_all(blob)


def test_authentic_header_without_nul_terminated_path() -> None:
    """A header that authenticates but breaks the format (only a buggy writer with the key can make it)."""
    nonce = bytes(32)
    header = bytearray(3884)
    header[:772] = b"a" * 772
    sealed = gcm_encrypt(derive_metadata_key(KEY.raw(), nonce), header)
    node0 = bytearray(4096)
    node0[0:10] = b"GRAFS_PF\x01\x00"
    node0[10:42] = nonce
    node0[42:58] = sealed[3884:]
    node0[58 : 58 + 3884] = sealed[:3884]
    with pytest.raises(pf.FormatError, match="NUL"):
        pf.decrypt_bytes(bytes(node0), KEY, bound_path=None)


def test_non_normalised_stored_path_is_explained() -> None:
    """Files from gramine-sgx-pf-crypt v1.3.1 with `-o ./x` store "./x", which Gramine never matches."""
    nonce = bytes(32)
    header = bytearray(3884)
    header[:5] = b"./x/y"
    sealed = gcm_encrypt(derive_metadata_key(KEY.raw(), nonce), header)
    node0 = bytearray(4096)
    node0[0:10] = b"GRAFS_PF\x01\x00"
    node0[10:42] = nonce
    node0[42:58] = sealed[3884:]
    node0[58 : 58 + 3884] = sealed[:3884]
    assert pf.decrypt_bytes(bytes(node0), KEY, bound_path=None) == b""
    with pytest.raises(pf.PathMismatchError, match="never open"):
        pf.decrypt_bytes(bytes(node0), KEY, bound_path="x/y")
