"""`confserve release`: gen-key, publish (numbering, atomic), verify (every file, by ciphertext hash)."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner, Result

from confserve import owner, pf
from confserve.cli import main
from confserve.releases import ReleaseKey

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


def test_verify_reports_a_file_added_to_a_version(tmp_path: Path) -> None:
    base = tree(tmp_path)
    assert run("gen-key", tmp_path / "k").exit_code == 0
    common = ["--model", "m", "--bind-root", "models/m"]
    assert run("publish", base, *common, "--key", tmp_path / "k" / "release.key").exit_code == 0
    (base / "1" / "variables" / "extra").write_bytes(b"x")
    result = run("verify", base, *common, "--public-key", tmp_path / "k" / "release.pub.pem")
    assert result.exit_code == 1
    assert "models/m/1/variables/extra: not in the release" in result.output


def test_publish_records_the_key_id(tmp_path: Path) -> None:
    base = tree(tmp_path)
    assert run("gen-key", tmp_path / "k").exit_code == 0
    key = ReleaseKey.from_pem((tmp_path / "k" / "release.key").read_bytes())
    common: list[str | Path] = [
        "--model",
        "m",
        "--bind-root",
        "models/m",
        "--key",
        tmp_path / "k" / "release.key",
    ]
    assert run("publish", base, *common).exit_code == 0
    assert owner.current_release(base, "m", key).key_id == "default"  # type: ignore[union-attr]
    result = run("publish", base, *common, "--key-id", "m")
    assert "(key 'm')" in result.output
    assert run("publish", base, *common).exit_code == 0  # the key id carries over
    assert owner.current_release(base, "m", key).key_id == "m"  # type: ignore[union-attr]


def test_rotate_reencrypts_as_new_versions_under_the_new_key(tmp_path: Path) -> None:
    base = tree(tmp_path)
    assert run("gen-key", tmp_path / "k").exit_code == 0
    key = ReleaseKey.from_pem((tmp_path / "k" / "release.key").read_bytes())
    old, new = tmp_path / "old", tmp_path / "new"
    KEY.save(old)
    pf.WrapKey.generate().save(new)
    common: list[str | Path] = [
        "--model",
        "m",
        "--bind-root",
        "models/m",
        "--key",
        tmp_path / "k" / "release.key",
    ]
    assert run("publish", base, *common, "--key-id", "m").exit_code == 0
    rotated = run(
        "rotate", base, *common, "--old-wrap-key", old, "--new-wrap-key", new, "--new-key-id", "m-2"
    )
    assert rotated.exit_code == 0, rotated.output
    assert "release 1 of model 'm': key 'm-2', versions 1 -> 2" in rotated.output
    release = owner.current_release(base, "m", key)
    assert release is not None
    assert (release.release, release.key_id, sorted(release.versions)) == (1, "m-2", [2])
    new_key = pf.WrapKey.load(new)
    pb = base / "2" / "saved_model.pb"
    assert pf.decrypt_bytes(pb.read_bytes(), new_key, bound_path="models/m/2/saved_model.pb") == b"graph v1"
    release.check_file(2, "models/m/2/saved_model.pb", pb.read_bytes())
    assert (base / "1").is_dir()  # the old version stays until the replicas have moved
    assert not list(base.glob(".*partial*"))
    # The same key again, a wrong old key, or a tree without a release: refused, nothing written.
    again = run("rotate", base, *common, "--old-wrap-key", new, "--new-wrap-key", new, "--new-key-id", "m-2")
    assert again.exit_code == 1
    assert "already uses key 'm-2'" in again.output
    wrong = run("rotate", base, *common, "--old-wrap-key", old, "--new-wrap-key", new, "--new-key-id", "m-3")
    assert wrong.exit_code == 1
    assert not (base / "3").exists()
    assert not list(base.glob(".*partial*"))


def test_rotate_refuses_a_file_that_differs_from_the_release(tmp_path: Path) -> None:
    base = tree(tmp_path)
    assert run("gen-key", tmp_path / "k").exit_code == 0
    old, new = tmp_path / "old", tmp_path / "new"
    KEY.save(old)
    pf.WrapKey.generate().save(new)
    common: list[str | Path] = [
        "--model",
        "m",
        "--bind-root",
        "models/m",
        "--key",
        tmp_path / "k" / "release.key",
    ]
    assert run("publish", base, *common).exit_code == 0
    swapped = base / "1" / "saved_model.pb"
    swapped.write_bytes(pf.encrypt_bytes(b"older graph", KEY, bound_path="models/m/1/saved_model.pb"))
    result = run("rotate", base, *common, "--old-wrap-key", old, "--new-wrap-key", new, "--new-key-id", "x")
    assert result.exit_code == 1
    assert "differs from release 0" in result.output
    assert not (base / "2").exists()


def test_model_encrypt_publishes_a_release_with_the_key_id(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    (plain / "1").mkdir(parents=True)
    (plain / "1" / "saved_model.pb").write_bytes(b"graph")
    assert run("gen-key", tmp_path / "k").exit_code == 0
    KEY.save(tmp_path / "digits")
    out = tmp_path / "host" / "models" / "digits"
    args = ["model", "encrypt", str(plain), "-w", str(tmp_path / "digits"), "--out", str(out),
            "--bind-root", "models/digits", "--release-key", str(tmp_path / "k" / "release.key")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "release 0 of model 'digits' (key 'digits') published" in result.output
    key = ReleaseKey.from_pem((tmp_path / "k" / "release.key").read_bytes())
    release = owner.current_release(out, "digits", key)
    assert release is not None
    assert list(release.versions[1]) == ["models/digits/1/saved_model.pb"]
    alone = CliRunner().invoke(main, ["model", "encrypt", str(plain), "-w", str(tmp_path / "digits"),
                                      "--out", str(tmp_path / "o2"), "--key-id", "x"])  # fmt: skip
    assert alone.exit_code == 2
    assert "give --release-key" in alone.output
