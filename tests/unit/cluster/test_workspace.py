"""The workspace's paths name the same files from any working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from confserve.cluster._workspace import Workspace, _owner_only


def test_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ws = Workspace(Path("ws"))
    assert ws.root == tmp_path / "ws"
    assert ws.sim.is_absolute()
    assert ws.wrap_key == tmp_path / "ws" / "owner" / "secret-prov" / "wrap_key"
    # Moving elsewhere afterwards changes nothing: the paths were fixed at construction.
    os.chdir("/")
    assert ws.policy == tmp_path / "ws" / "owner" / "policy.toml"


def test_dot_dot_is_normalised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert Workspace(Path("../ws")).root == tmp_path / "ws"


def test_owner_only_tree(tmp_path: Path) -> None:
    tree = tmp_path / "models"
    (tree / "m" / "1" / "variables").mkdir(parents=True)
    (tree / "m" / "1" / "saved_model.pb").write_bytes(b"graph")
    (tree / "m" / "1" / "variables" / "variables.index").write_bytes(b"index")
    outside = tmp_path / "outside.txt"
    outside.write_text("not the model")
    outside.chmod(0o644)
    (tree / "m" / "link").symlink_to(outside)
    for path in tree.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)

    _owner_only(tree)

    assert tree.stat().st_mode & 0o777 == 0o700
    for path in tree.rglob("*"):
        if path.is_symlink():
            continue
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    assert outside.stat().st_mode & 0o777 == 0o644  # a link is not followed
