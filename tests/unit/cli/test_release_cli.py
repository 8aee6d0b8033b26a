"""`confserve release`: gen-key, publish (numbering, atomic), verify (every file, by ciphertext hash)."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner, Result

from confserve import pf
from confserve.cli import main

KEY = pf.WrapKey(bytes(range(16)))


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["release", *map(str, args)])


def tree(tmp_path: Path) -> Path:
    plain = tmp_path / "plain"
    (plain / "1" / "variables").mkdir(parents=True)
    (plain / "1" / "saved_model.pb").write_bytes(b"graph v1")
    (plain / "1" / "variables" / "variables.index").write_bytes(b"index")
    base = tmp_path / "host" / "models" / "m"
    pf.encrypt_tree(plain / "1", base / "1", KEY, bind_root="models/m/1")
    return base


def test_gen_key_publish_verify(tmp_path: Path) -> None:
    keys = tmp_path / "release"
    assert run("gen-key", keys).exit_code == 0
    assert stat.S_IMODE((keys / "release.key").stat().st_mode) == 0o600
    assert b"PRIVATE" not in (keys / "release.pub.pem").read_bytes()
    again = run("gen-key", keys)
    assert again.exit_code == 1
    assert "not replacing" in again.output

    base = tree(tmp_path)
    common = ["--model", "m", "--bind-root", "models/m"]
    first = run("publish", base, *common, "--key", keys / "release.key")
    assert first.exit_code == 0, first.output
    assert "release 0 of model 'm'" in first.output
    second = run("publish", base, *common, "--key", keys / "release.key")
    assert "release 1 of model 'm'" in second.output
    backwards = run("publish", base, *common, "--key", keys / "release.key", "--release", "1")
    assert backwards.exit_code == 1
    assert "not above the published release 1" in backwards.output

    verified = run("verify", base, *common, "--public-key", keys / "release.pub.pem")
    assert verified.exit_code == 0, verified.output
    assert "all files match" in verified.output
    floor = run("verify", base, *common, "--public-key", keys / "release.pub.pem", "--floor", "2")
    assert floor.exit_code == 1
    assert "below its floor 2" in floor.output

    # The host swaps a file for another valid protected file at the same path: detected by hash.
    swapped = base / "1" / "saved_model.pb"
    swapped.write_bytes(pf.encrypt_bytes(b"other graph", KEY, bound_path="models/m/1/saved_model.pb"))
    changed = run("verify", base, *common, "--public-key", keys / "release.pub.pem")
    assert changed.exit_code == 1
    assert "differs from release 1" in changed.output


def test_publish_refuses_a_manifest_signed_by_another_key(tmp_path: Path) -> None:
    base = tree(tmp_path)
    assert run("gen-key", tmp_path / "a").exit_code == 0
    assert run("gen-key", tmp_path / "b").exit_code == 0
    common = ["--model", "m", "--bind-root", "models/m"]
    assert run("publish", base, *common, "--key", tmp_path / "a" / "release.key").exit_code == 0
    other = run("publish", base, *common, "--key", tmp_path / "b" / "release.key")
    assert other.exit_code == 1
    assert "not signed by the owner's release key" in other.output
