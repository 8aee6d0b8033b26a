"""Whole files and directory trees: atomic outputs, bound paths of every file, refusal of odd inputs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from confserve import pf

KEY = pf.WrapKey(bytes(range(16)))


def _model_tree(root: Path) -> dict[str, bytes]:
    files = {
        "1/saved_model.pb": os.urandom(20_000),
        "1/variables/variables.index": os.urandom(300),
        "1/variables/variables.data-00000-of-00001": os.urandom(500_000),
        "1/assets/vocab.txt": b"a\nb\n",
        "1/fingerprint.pb": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_encrypt_tree_binds_each_file_below_the_root(tmp_path: Path) -> None:
    files = _model_tree(tmp_path / "plain")
    entries = pf.encrypt_tree(tmp_path / "plain", tmp_path / "enc", KEY, bind_root="/srv/models/resnet")
    assert {e.relative_path for e in entries} == set(files)
    for entry in entries:
        assert entry.bound_path == f"/srv/models/resnet/{entry.relative_path}"
        assert entry.size == len(files[entry.relative_path])
        path = tmp_path / "enc" / entry.relative_path
        assert pf.is_protected(path)
        assert pf.read_protected(path, KEY, bound_path=entry.bound_path) == files[entry.relative_path]


def test_encrypt_tree_default_root_is_the_output_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _model_tree(tmp_path / "plain")
    entries = pf.encrypt_tree("plain", "./models//m/", KEY)
    assert {e.bound_path for e in entries} >= {"models/m/1/saved_model.pb"}


def test_decrypt_tree_round_trip_and_path_check(tmp_path: Path) -> None:
    files = _model_tree(tmp_path / "plain")
    pf.encrypt_tree(tmp_path / "plain", tmp_path / "enc", KEY, bind_root="models/m")
    pf.decrypt_tree(tmp_path / "enc", tmp_path / "out", KEY, bind_root="models/m")
    for rel, data in files.items():
        assert (tmp_path / "out" / rel).read_bytes() == data
        assert stat.S_IMODE((tmp_path / "out" / rel).stat().st_mode) == 0o600
    with pytest.raises(pf.PathMismatchError):
        pf.decrypt_tree(tmp_path / "enc", tmp_path / "out2", KEY, bind_root="models/other")
    assert not any(p.is_file() for p in (tmp_path / "out2").rglob("*"))


def test_decrypt_tree_is_all_or_nothing(tmp_path: Path) -> None:
    _model_tree(tmp_path / "plain")
    pf.encrypt_tree(tmp_path / "plain", tmp_path / "enc", KEY, bind_root="m")
    victim = tmp_path / "enc/1/variables/variables.data-00000-of-00001"
    data = bytearray(victim.read_bytes())
    data[-100] ^= 1  # last node of the file sorted last but one
    victim.write_bytes(data)
    with pytest.raises(pf.IntegrityError):
        pf.decrypt_tree(tmp_path / "enc", tmp_path / "out", KEY, bind_root="m")
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_failed_decrypt_leaves_no_output(tmp_path: Path) -> None:
    src = tmp_path / "plain"
    src.write_bytes(os.urandom(100_000))
    pf.encrypt_file(src, tmp_path / "enc", KEY, bound_path="x")
    data = bytearray((tmp_path / "enc").read_bytes())
    data[-1] ^= 1
    (tmp_path / "enc").write_bytes(data)
    with pytest.raises(pf.IntegrityError):
        pf.decrypt_file(tmp_path / "enc", tmp_path / "out", KEY, bound_path="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc", "plain"]


def test_encrypt_file_default_binding_and_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("plain").write_bytes(b"hello" * 1000)
    Path("models/m/1").mkdir(parents=True)
    assert pf.encrypt_file("plain", "./models/m/1/saved_model.pb", KEY) == "models/m/1/saved_model.pb"
    reader = pf.verify_file("models/m/1/saved_model.pb", KEY, bound_path="models/m/1/saved_model.pb")
    assert reader.size == 5000
    assert reader.stored_path == "models/m/1/saved_model.pb"


def test_trees_refuse_symlinks_and_special_files(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "secret").write_bytes(b"s")
    (tmp_path / "plain/link").symlink_to(tmp_path / "secret")
    with pytest.raises(pf.PfError, match="symbolic link"):
        pf.encrypt_tree(tmp_path / "plain", tmp_path / "enc", KEY)
    (tmp_path / "plain/link").unlink()
    os.mkfifo(tmp_path / "plain/fifo")
    with pytest.raises(pf.PfError, match="not a regular file"):
        pf.encrypt_tree(tmp_path / "plain", tmp_path / "enc", KEY)


def test_is_protected(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"GRAFS_PF\x01\x00" + bytes(4086))
    assert pf.is_protected(tmp_path / "plain")  # magic and size only, documented as a heuristic
    (tmp_path / "other").write_bytes(bytes(4096))
    assert not pf.is_protected(tmp_path / "other")
    (tmp_path / "v9").write_bytes(b"GRAFS_PF\x09\x00" + bytes(4086))
    assert not pf.is_protected(tmp_path / "v9")
    assert not pf.is_protected(tmp_path / "missing")


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry below `root` (files with their bytes, directories and links as None)."""
    return {
        os.fspath(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
        for p in sorted(root.rglob("*"))
    }


def test_decrypt_and_encrypt_refuse_the_input_file_as_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("plain").write_bytes(os.urandom(30_000))
    pf.encrypt_file("plain", "enc", KEY)
    Path("sub").mkdir()
    Path("link").symlink_to("enc")
    os.link("enc", "hard")
    before = _snapshot(tmp_path)
    for same in ("enc", "./enc", "sub/../enc", os.fspath(tmp_path / "enc"), "link", "hard"):
        with pytest.raises(pf.OutputIsInputError, match="is the input file itself"):
            pf.decrypt_file("enc", same, KEY, bound_path=None)
    for same in ("plain", "./plain", os.fspath(tmp_path / "plain")):
        with pytest.raises(pf.OutputIsInputError):
            pf.encrypt_file("plain", same, KEY, bound_path="p")
    assert _snapshot(tmp_path) == before
    # a dangling link or another file is not the input: decrypted as usual
    Path("dangling").symlink_to("nowhere")
    assert pf.decrypt_file("link", "dangling", KEY, bound_path=None) == 30_000
    assert Path("dangling").read_bytes() == Path("plain").read_bytes()


def test_decrypt_tree_refuses_an_output_inside_the_input_tree(tmp_path: Path) -> None:
    _model_tree(tmp_path / "plain")
    pf.encrypt_tree(tmp_path / "plain", tmp_path / "enc", KEY, bind_root="m")
    (tmp_path / "enc-link").symlink_to(tmp_path / "enc")
    before = _snapshot(tmp_path)
    inside = [
        tmp_path / "enc",
        tmp_path / "enc/",
        tmp_path / "enc/1",
        tmp_path / "enc/new/deeper",
        tmp_path / "enc/1/../x",
        tmp_path / "enc-link",
        tmp_path / "enc-link/out",
    ]
    for dst in inside:
        with pytest.raises(pf.OutputIsInputError, match="inside, the input directory"):
            pf.decrypt_tree(tmp_path / "enc", dst, KEY, bind_root="m")
        with pytest.raises(pf.OutputIsInputError):
            pf.encrypt_tree(tmp_path / "enc", dst, KEY)
    assert _snapshot(tmp_path) == before
    # beside the tree (even sharing a name prefix) is fine
    pf.decrypt_tree(tmp_path / "enc", tmp_path / "enc-out", KEY, bind_root="m")
    assert _snapshot(tmp_path / "enc-out") == _snapshot(tmp_path / "plain")


def test_trees_refuse_an_output_file_that_is_an_input_file(tmp_path: Path) -> None:
    """The output tree holding the input tree: output `a` for input `a/enc` would write the file
    `enc/x` of the tree to a/enc/x, which is the input file `x`."""
    (tmp_path / "a/enc/enc").mkdir(parents=True)
    for rel in ("enc/x", "x"):
        (tmp_path / "a/enc" / rel).write_bytes(pf.encrypt_bytes(b"data", KEY, bound_path=rel))
    before = _snapshot(tmp_path)
    with pytest.raises(pf.OutputIsInputError, match="is one of the input files"):
        pf.decrypt_tree(tmp_path / "a/enc", tmp_path / "a", KEY, bind_root=None)
    with pytest.raises(pf.OutputIsInputError, match="is one of the input files"):
        pf.encrypt_tree(tmp_path / "a/enc", tmp_path / "a", KEY)
    assert _snapshot(tmp_path) == before
