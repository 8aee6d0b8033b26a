"""The one secret-file writer: mode 0600 before any byte, atomic (no partial file under the target's
name, ever), no symlink followed, an existing file refused unless asked, file and directory fsynced."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from confserve import pf


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A umask that would strip the owner's write bit from open()'s mode: only fchmod gives 0600."""
    old = os.umask(0o277)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_private_file_is_0600_whatever_the_umask(tmp_path: Path, strict_umask: None) -> None:
    target = tmp_path / "key"
    pf.write_private_file(target, b"secret")
    assert target.read_bytes() == b"secret"
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no temporary file left behind


def test_public_file_is_0644(tmp_path: Path, strict_umask: None) -> None:
    pf.write_public_file(tmp_path / "ca.crt", b"cert")
    assert _mode(tmp_path / "ca.crt") == 0o644


def test_mode_is_set_before_the_first_byte(tmp_path: Path, strict_umask: None) -> None:
    with pf.atomic_output(tmp_path / "key") as handle:
        assert stat.S_IMODE(os.fstat(handle.fileno()).st_mode) == 0o600
        assert os.fstat(handle.fileno()).st_size == 0
        handle.write(b"secret")


def test_nothing_appears_until_the_block_ends(tmp_path: Path) -> None:
    target = tmp_path / "key"
    with pf.atomic_output(target) as handle:
        handle.write(b"half")
        assert not target.exists()
    assert target.read_bytes() == b"half"


def _write_then_fail(target: Path, *, replace: bool = False) -> None:
    with pf.atomic_output(target, replace=replace) as handle:
        handle.write(b"partial plaintext")
        raise RuntimeError("disk on fire")


def test_a_failure_leaves_no_partial_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="disk on fire"):
        _write_then_fail(tmp_path / "plain")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_keeps_the_old_file_when_replacing(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        _write_then_fail(target, replace=True)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_an_existing_file_is_refused_unless_asked(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"old")
    target.chmod(0o644)
    with pytest.raises(FileExistsError) as caught:
        pf.write_private_file(target, b"new")
    assert caught.value.filename == str(target)  # the error names the file asked for
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]
    pf.write_private_file(target, b"new", replace=True)
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600  # a replaced file gets the new mode, not the old one


def test_a_symlink_at_the_target_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    link = tmp_path / "key"
    link.symlink_to(victim)
    with pytest.raises(FileExistsError):
        pf.write_private_file(link, b"secret")
    assert victim.read_bytes() == b"not yours"
    assert link.is_symlink()
    pf.write_private_file(link, b"secret", replace=True)  # replaces the link itself
    assert not link.is_symlink()
    assert link.read_bytes() == b"secret"
    assert victim.read_bytes() == b"not yours"


def test_a_dangling_symlink_is_not_followed_either(tmp_path: Path) -> None:
    link = tmp_path / "key"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        pf.write_private_file(link, b"secret")
    assert not (tmp_path / "elsewhere").exists()


def test_file_and_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    pf.write_private_file(tmp_path / "key", b"secret")
    assert synced == ["file", "dir"]


def test_a_missing_directory_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        pf.write_private_file(tmp_path / "no" / "key", b"secret")
    assert caught.value.filename == str(tmp_path / "no" / "key")


def test_wrap_key_save_uses_it(tmp_path: Path, strict_umask: None) -> None:
    key = pf.WrapKey.generate()
    key.save(tmp_path / "wrap_key")
    assert _mode(tmp_path / "wrap_key") == 0o600
    assert pf.WrapKey.load(tmp_path / "wrap_key") == key
    with pytest.raises(pf.WrapKeyError, match="already exists"):
        pf.WrapKey.generate().save(tmp_path / "wrap_key")
    assert pf.WrapKey.load(tmp_path / "wrap_key") == key
