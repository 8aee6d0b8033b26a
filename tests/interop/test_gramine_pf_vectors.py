"""Files written by real Gramine (gramine-sgx-pf-crypt v1.3.1, v1.8, v1.9) against our reader, and our
writer's layout against theirs."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from confserve import pf
from confserve.pf._crypto import derive_metadata_key, gcm_decrypt
from confserve.pf._format import (
    ATTACHED_DATA_NODES,
    CHILD_MHT_NODES,
    CRYPTO_ENTRY_SIZE,
    ENCRYPTED_HEADER_OFFSET,
    HDR_OFF_ROOT_KEY,
    HDR_OFF_SIZE,
    HEADER_SIZE,
    KDF_NONCE_SIZE,
    KEY_SIZE,
    MD_USER_DATA_SIZE,
    MHT_OFF_CHILDREN,
    NODE_SIZE,
    OFF_MAJOR,
    OFF_META_MAC,
    OFF_NONCE,
    SIZE_STRUCT,
    mht_node_physical,
)
from tests.unit.pf.helpers import vector_plaintext


def _manifest(testvectors: Path) -> tuple[Path, list[dict[str, Any]]]:
    root = testvectors / "gramine-pf"
    entries = json.loads((root / "manifest.json").read_text())["entries"]
    assert len(entries) >= 30  # three Gramine versions, a dozen sizes each
    return root, entries


@pytest.fixture(scope="module")
def vectors(testvectors: Path) -> tuple[Path, list[dict[str, Any]], pf.WrapKey]:
    root, entries = _manifest(testvectors)
    key = pf.WrapKey.load(root / "wrap_key")
    manifest_key = json.loads((root / "manifest.json").read_text())["wrap_key_hex"]
    assert key.raw().hex() == manifest_key
    return root, entries, key


def test_every_vector_decrypts_to_its_plaintext(
    vectors: tuple[Path, list[dict[str, Any]], pf.WrapKey],
) -> None:
    root, entries, key = vectors
    versions = set()
    for entry in entries:
        data = pf.read_protected(root / entry["file"], key, bound_path=entry["bound_path"])
        assert len(data) == entry["plaintext_size"]
        assert hashlib.sha256(data).hexdigest() == entry["plaintext_sha256"], entry["file"]
        assert data == vector_plaintext(entry["plaintext_size"])
        facts = pf.header_facts(root / entry["file"])
        assert facts.major_version == entry["format_major_version"]
        assert facts.feature_flags == 0
        versions.add(entry["gramine"])
    assert versions == {"v1.3.1", "v1.8", "v1.9"}


def test_encrypted_sizes_equal_gramines(vectors: tuple[Path, list[dict[str, Any]], pf.WrapKey]) -> None:
    root, entries, key = vectors
    for entry in entries:
        size = entry["plaintext_size"]
        assert (root / entry["file"]).stat().st_size == entry["encrypted_size"] == pf.host_size(size)
        version = entry["format_major_version"]
        ours = pf.encrypt_bytes(
            vector_plaintext(size), key, bound_path=entry["bound_path"], format_version=version
        )
        assert len(ours) == entry["encrypted_size"]
        assert ours[:10] == (root / entry["file"]).read_bytes()[:10]  # magic, major, minor


@pytest.mark.parametrize("gramine", ["v1.3.1", "v1.8", "v1.9"])
def test_wrong_key_is_an_integrity_error(
    vectors: tuple[Path, list[dict[str, Any]], pf.WrapKey], gramine: str
) -> None:
    root, entries, _ = vectors
    wrong = pf.WrapKey(bytes(range(16)))
    for entry in (e for e in entries if e["gramine"] == gramine):
        with pytest.raises(pf.IntegrityError):
            pf.read_protected(root / entry["file"], wrong, bound_path=entry["bound_path"])


@pytest.mark.parametrize(
    "wrong_path",
    [
        "/models/m/1/size-100.bin",  # absolute vs relative
        "size-100.bin",  # basename
        "models/m/2/size-100.bin",
    ],
)
def test_wrong_bound_path_is_refused(
    vectors: tuple[Path, list[dict[str, Any]], pf.WrapKey], wrong_path: str
) -> None:
    root, entries, key = vectors
    entry = next(e for e in entries if e["gramine"] == "v1.3.1" and e["plaintext_size"] == 100)
    with pytest.raises(pf.PathMismatchError) as info:
        pf.read_protected(root / entry["file"], key, bound_path=wrong_path)
    assert info.value.stored == entry["bound_path"]


def test_our_v1_files_open_where_gramines_do(
    vectors: tuple[Path, list[dict[str, Any]], pf.WrapKey], tmp_path: Path
) -> None:
    """What we write under a bound path, read back under that path, is byte-identical in layout terms."""
    _, _, key = vectors
    plain = vector_plaintext(396289)
    out = tmp_path / "x.bin"
    src = tmp_path / "plain"
    src.write_bytes(plain)
    bound = pf.encrypt_file(src, out, key, bound_path="models/m/1/size-396289.bin")
    assert bound == "models/m/1/size-396289.bin"
    assert pf.read_protected(out, key, bound_path=bound) == plain


def test_bound_path_is_compared_after_normalisation(
    vectors: tuple[Path, list[dict[str, Any]], pf.WrapKey],
) -> None:
    """Gramine normalises the host path it opens (docs/formats.md#pf-path), so "./x" and "x//y/../" name the same binding."""
    root, entries, key = vectors
    entry = next(e for e in entries if e["gramine"] == "v1.8" and e["plaintext_size"] == 100)
    for spelling in ("./models/m/1/size-100.bin", "models//m/1/x/../size-100.bin"):
        assert pf.read_protected(root / entry["file"], key, bound_path=spelling) == vector_plaintext(100)


# -- byte-for-byte reproduction through the writer's randomness seam ------------------------------


def _values_gramine_drew(data: bytes, key: pf.WrapKey) -> list[bytes]:
    """Every random value in a protected file, read back with the wrap key, in the order our writer draws
    them (pf/_writer.py's docstring): for each MHT group its data-node keys then its MHT key, then a new
    key for each MHT node with children (highest first), then the nonce. The nonce is stored in the
    clear; every node's key is stored in its parent, the root's in the header, so none is lost."""
    version = data[OFF_MAJOR]
    nonce = data[OFF_NONCE : OFF_NONCE + KDF_NONCE_SIZE]
    sealed = data[ENCRYPTED_HEADER_OFFSET[version] :][:HEADER_SIZE] + data[OFF_META_MAC : OFF_META_MAC + 16]
    header = gcm_decrypt(derive_metadata_key(key.raw(), nonce), sealed)
    (size,) = SIZE_STRUCT.unpack_from(header, HDR_OFF_SIZE)
    if size <= MD_USER_DATA_SIZE:
        return [nonce]
    data_nodes = -(-(size - MD_USER_DATA_SIZE) // NODE_SIZE)
    mht_nodes = (data_nodes - 1) // ATTACHED_DATA_NODES + 1
    entries = {0: header[HDR_OFF_ROOT_KEY : HDR_OFF_ROOT_KEY + CRYPTO_ENTRY_SIZE]}  # MHT m -> key || tag
    plain: dict[int, bytes] = {}
    for m in range(mht_nodes):  # a parent, (m - 1) // 32, always comes before its children
        if m:
            child = MHT_OFF_CHILDREN + ((m - 1) % CHILD_MHT_NODES) * CRYPTO_ENTRY_SIZE
            entries[m] = plain[(m - 1) // CHILD_MHT_NODES][child : child + CRYPTO_ENTRY_SIZE]
        start = mht_node_physical(m) * NODE_SIZE
        plain[m] = gcm_decrypt(entries[m][:KEY_SIZE], data[start : start + NODE_SIZE] + entries[m][KEY_SIZE:])
    with_children = range((mht_nodes - 2) // CHILD_MHT_NODES, -1, -1) if mht_nodes > 1 else range(0)
    drawn: list[bytes] = []
    for m in range(mht_nodes):
        in_group = min(ATTACHED_DATA_NODES, data_nodes - ATTACHED_DATA_NODES * m)
        drawn += [plain[m][i * CRYPTO_ENTRY_SIZE :][:KEY_SIZE] for i in range(in_group)]
        # a node with children is keyed again at close; the first key encrypts nothing that stays
        drawn.append(bytes(KEY_SIZE) if m in with_children else entries[m][:KEY_SIZE])
    drawn += [entries[m][:KEY_SIZE] for m in with_children]
    drawn.append(nonce)
    return drawn


def test_our_writer_reproduces_every_gramine_vector_byte_for_byte(
    vectors: tuple[Path, list[dict[str, Any]], pf.WrapKey],
) -> None:
    """Given the random values Gramine drew (all recoverable with the wrap key: the nonce in the clear,
    each node key in its parent), our writer writes Gramine's file exactly: same layout, same padding,
    same ciphertext and tags, for every version and size, 13 MB with two MHT levels included. Gramine
    re-keys nodes its cache evicts while writing; only the last key of each node survives, and that is
    the one replayed."""
    root, entries, key = vectors
    for entry in entries:
        theirs = (root / entry["file"]).read_bytes()
        values = _values_gramine_drew(theirs, key)
        replay = iter(values)
        asked: list[int] = []

        def random_bytes(n: int, replay: Iterator[bytes] = replay, asked: list[int] = asked) -> bytes:
            asked.append(n)
            return next(replay)

        out = io.BytesIO()
        with pf.ProtectedFileWriter(
            out,
            key,
            bound_path=entry["bound_path"],
            format_version=entry["format_major_version"],
            random_bytes=random_bytes,
        ) as writer:
            writer.write(vector_plaintext(entry["plaintext_size"]))
        assert next(replay, None) is None, f"{entry['file']}: the writer drew fewer values than replayed"
        assert asked == [len(v) for v in values]
        assert out.getvalue() == theirs, entry["file"]


def test_the_replay_is_what_makes_the_bytes_equal(
    vectors: tuple[Path, list[dict[str, Any]], pf.WrapKey],
) -> None:
    """The check above can fail: with one replayed key changed, the output differs from Gramine's."""
    root, entries, key = vectors
    entry = next(e for e in entries if e["gramine"] == "v1.9" and e["plaintext_size"] == 7169)
    theirs = (root / entry["file"]).read_bytes()
    values = _values_gramine_drew(theirs, key)
    values[0] = bytes(a ^ 1 for a in values[0])  # the first data node's key
    replay = iter(values)
    out = io.BytesIO()
    with pf.ProtectedFileWriter(
        out, key, bound_path=entry["bound_path"], format_version=2, random_bytes=lambda n: next(replay)
    ) as writer:
        writer.write(vector_plaintext(entry["plaintext_size"]))
    assert out.getvalue() != theirs
    assert pf.decrypt_bytes(out.getvalue(), key, bound_path=entry["bound_path"]) == vector_plaintext(7169)


def test_a_random_source_of_the_wrong_size_is_refused() -> None:
    with (
        pytest.raises(pf.PfError, match="random source"),
        pf.ProtectedFileWriter(
            io.BytesIO(), pf.WrapKey(bytes(16)), bound_path="x", random_bytes=lambda n: bytes(n - 1)
        ) as writer,
    ):
        writer.write(b"short")
