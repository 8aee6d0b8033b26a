"""Format details: KDF, path normalisation, node geometry and the exact layout of what we write."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confserve import pf
from confserve.pf import _format as fmt
from confserve.pf._crypto import derive_metadata_key, gcm_decrypt

KEY = pf.WrapKey(bytes.fromhex("ffeeddccbbaa99887766554433221100"))


def test_kdf_self_check_vector() -> None:
    # docs/formats.md#pf-kdf: KDK ffeedd..00, nonce 00..1f.
    assert derive_metadata_key(KEY.raw(), bytes(range(32))).hex() == "13023cb37e5faf2da6ea64ba7c79cc62"


@pytest.mark.parametrize(
    ("path", "normalized"),
    [
        ("models/m/1/saved_model.pb", "models/m/1/saved_model.pb"),
        ("./models//m/./1/", "models/m/1"),
        ("/models/../models/x", "/models/x"),
        ("/..", "/"),
        ("/../a", "/a"),
        ("../a/b", "../a/b"),
        ("a/../../b", "../b"),
        ("a/b/..", "a"),
        ("//a///b", "/a/b"),
        (".", ""),
        ("", ""),
        ("../..", "../.."),
    ],
)
def test_normalize_path_follows_gramine(path: str, normalized: str) -> None:
    assert pf.normalize_path(path) == normalized


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "cc"]), max_size=8), st.booleans())
def test_normalize_path_is_idempotent_and_keeps_absoluteness(parts: list[str], absolute: bool) -> None:
    path = ("/" if absolute else "") + "/".join(parts)
    once = pf.normalize_path(path)
    assert pf.normalize_path(once) == once
    assert once.startswith("/") == path.startswith("/")
    assert "//" not in once
    assert not once.endswith("/") or once == "/"


@pytest.mark.parametrize("bad", ["", ".", "/", "a/..", "x" * 772, "a\x00b"])
def test_unbindable_paths_are_refused(bad: str) -> None:
    with pytest.raises(pf.InvalidPathError):
        pf.bind_path(bad)
    with pytest.raises(pf.InvalidPathError):
        pf.encrypt_bytes(b"x", KEY, bound_path=bad)


def test_longest_bindable_path() -> None:
    path = "p" * 771
    assert pf.decrypt_bytes(pf.encrypt_bytes(b"ok", KEY, bound_path=path), KEY, bound_path=path) == b"ok"


@pytest.mark.parametrize(
    ("size", "nodes"),
    [
        (0, 1),
        (1, 1),
        (3072, 1),
        (3073, 3),
        (3072 + 4096, 3),
        (3072 + 4096 + 1, 4),
        (3072 + 96 * 4096, 98),
        (3072 + 96 * 4096 + 1, 100),
        (1048576, 260),
    ],
)
def test_host_size(size: int, nodes: int) -> None:
    assert pf.host_size(size) == nodes * 4096


def test_physical_placement() -> None:
    assert [fmt.data_node_physical(d) for d in (0, 95, 96, 191, 192)] == [2, 97, 99, 194, 196]
    assert [fmt.mht_node_physical(m) for m in (0, 1, 2)] == [1, 98, 195]
    assert fmt.mht_parent(1) == (0, 0)
    assert fmt.mht_parent(32) == (0, 31)
    assert fmt.mht_parent(33) == (1, 0)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size", [0, 5, 3072, 3073, 500_000])
def test_written_metadata_node_layout(version: int, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    blob = pf.encrypt_bytes(data, KEY, bound_path="models/x/1/saved_model.pb", format_version=version)
    node0 = blob[:4096]
    assert node0[0:8] == b"GRAFS_PF"
    assert node0[8] == version
    assert node0[9] == 0
    off = 58 if version == 1 else 59
    if version == 2:
        assert node0[58] == 0  # feature_flags: never HAS_PENDING_WRITE
    assert node0[off + 3884 :] == bytes(4096 - off - 3884)  # padding is zero
    # Decrypt the header by hand from the table in A.5.
    header = gcm_decrypt(derive_metadata_key(KEY.raw(), node0[10:42]), node0[off : off + 3884] + node0[42:58])
    assert header[:772].rstrip(b"\0") == b"models/x/1/saved_model.pb"
    assert int.from_bytes(header[772:780], "little") == size
    assert header[812 : 812 + min(size, 3072)] == data[:3072]
    assert header[812 + min(size, 3072) :] == bytes(3072 - min(size, 3072))
    if size <= 3072:
        assert header[780:812] == bytes(32)  # no root MHT node
    else:
        root = gcm_decrypt(header[780:796], blob[4096:8192] + header[796:812])
        first = gcm_decrypt(root[:16], blob[8192:12288] + root[16:32])
        assert first[: min(4096, size - 3072)] == data[3072 : 3072 + 4096]


def test_nonce_and_node_keys_are_fresh_per_write() -> None:
    a = pf.encrypt_bytes(b"same" * 2000, KEY, bound_path="p")
    b = pf.encrypt_bytes(b"same" * 2000, KEY, bound_path="p")
    assert a[10:42] != b[10:42]
    assert a[4096:] != b[4096:]


def test_reader_reports_header_facts() -> None:
    blob = pf.encrypt_bytes(b"abc", KEY, bound_path="p", format_version=2)
    facts = pf.ProtectedFileReader(io.BytesIO(blob), KEY, bound_path=None)
    assert facts.format_version == 2
    assert facts.stored_path == "p"
    assert facts.size == 3
