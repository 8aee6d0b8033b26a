"""Files written by real Gramine (gramine-sgx-pf-crypt v1.3.1, v1.8, v1.9) against our reader, and our
writer's layout against theirs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from confserve import pf
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
    """Gramine normalises the host path it opens (A.10), so "./x" and "x//y/../" name the same binding."""
    root, entries, key = vectors
    entry = next(e for e in entries if e["gramine"] == "v1.8" and e["plaintext_size"] == 100)
    for spelling in ("./models/m/1/size-100.bin", "models//m/1/x/../size-100.bin"):
        assert pf.read_protected(root / entry["file"], key, bound_path=spelling) == vector_plaintext(100)
