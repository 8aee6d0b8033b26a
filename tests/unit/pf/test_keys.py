"""Wrap keys: generation, strict loading, safe saving, no leaks through repr."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest

from confserve import pf


def test_generate_save_load(tmp_path: Path) -> None:
    key = pf.WrapKey.generate()
    assert key != pf.WrapKey.generate()
    key.save(tmp_path / "k")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k").read_bytes() == key.raw()
    assert pf.WrapKey.load(tmp_path / "k") == key
    assert [p.name for p in tmp_path.iterdir()] == ["k"]  # no temporary left behind


def test_save_refuses_to_replace_an_existing_key(tmp_path: Path) -> None:
    first = pf.WrapKey.generate()
    first.save(tmp_path / "k")
    with pytest.raises(pf.WrapKeyError, match="already exists"):
        pf.WrapKey.generate().save(tmp_path / "k")
    assert pf.WrapKey.load(tmp_path / "k") == first
    second = pf.WrapKey.generate()
    second.save(tmp_path / "k", overwrite=True)
    assert pf.WrapKey.load(tmp_path / "k") == second
    assert len(list(tmp_path.iterdir())) == 1


def test_save_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(pf.WrapKeyError, match="cannot write"):
        pf.WrapKey.generate().save(tmp_path / "no" / "k")


@pytest.mark.parametrize(
    "content", [b"", b"x" * 15, b"x" * 17, b"00112233445566778899aabbccddeeff", b"x" * 16 + b"\n"]
)
def test_load_rejects_wrong_sizes(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "k").write_bytes(content)
    with pytest.raises(pf.WrapKeyError, match="exactly 16 raw bytes"):
        pf.WrapKey.load(tmp_path / "k")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(pf.WrapKeyError, match="cannot read"):
        pf.WrapKey.load(tmp_path / "missing")
    with pytest.raises(pf.WrapKeyError, match="cannot read"):
        pf.WrapKey.load(tmp_path)


@pytest.mark.parametrize("value", [b"short", bytes(17), "0123456789abcdef", 16])
def test_constructor_validates(value: object) -> None:
    with pytest.raises(pf.WrapKeyError):
        pf.WrapKey(value)  # type: ignore[arg-type]


def test_key_bytes_never_show() -> None:
    raw = bytes(range(16))
    key = pf.WrapKey(raw)
    for text in (repr(key), str(key), f"{key}"):
        assert raw.hex() not in text
        assert "fingerprint" in text
    assert key.fingerprint() == pf.WrapKey(raw).fingerprint()
    assert hash(key) == hash(pf.WrapKey(raw))
    assert key != raw
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_key_file_is_created_without_a_window_of_wider_permissions(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        pf.WrapKey.generate().save(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
