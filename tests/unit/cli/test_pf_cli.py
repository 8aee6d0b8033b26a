"""`confserve pf`: each command, each error path, and no partial output after a failed decrypt."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from confserve import pf
from confserve.cli import main


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def _run(cli: CliRunner, *args: str, code: int = 0) -> str:
    result = cli.invoke(main, ["pf", *args])
    assert result.exit_code == code, result.output
    return result.output


def test_gen_key(cli: CliRunner) -> None:
    out = _run(cli, "gen-key", "-w", "wrap-key")
    assert "fingerprint" in out
    assert len(Path("wrap-key").read_bytes()) == 16
    assert stat.S_IMODE(Path("wrap-key").stat().st_mode) == 0o600
    assert Path("wrap-key").read_bytes().hex() not in out
    err = _run(cli, "gen-key", "-w", "wrap-key", code=1)
    assert "already exists" in err
    before = Path("wrap-key").read_bytes()
    _run(cli, "gen-key", "--wrap-key", "wrap-key", "--force")
    assert Path("wrap-key").read_bytes() != before


def test_reference_commands_work_with_the_program_name_swapped(cli: CliRunner) -> None:
    """The reference runs: gramine-sgx-pf-crypt encrypt -w files/wrap-key -i plain -o models/.../x.pb"""
    Path("files").mkdir()
    _run(cli, "gen-key", "-w", "files/wrap-key")
    Path("plaintext").mkdir()
    Path("plaintext/saved_model.pb").write_bytes(os.urandom(50_000))
    Path("models/resnet50-v15-fp32/1").mkdir(parents=True)
    out = _run(
        cli,
        "encrypt",
        "-w",
        "files/wrap-key",
        "-i",
        "plaintext/saved_model.pb",
        "-o",
        "models/resnet50-v15-fp32/1/saved_model.pb",
    )
    assert "models/resnet50-v15-fp32/1/saved_model.pb" in out
    key = pf.WrapKey.load("files/wrap-key")
    assert (
        pf.read_protected(
            "models/resnet50-v15-fp32/1/saved_model.pb",
            key,
            bound_path="models/resnet50-v15-fp32/1/saved_model.pb",
        )
        == Path("plaintext/saved_model.pb").read_bytes()
    )
    _run(
        cli,
        "decrypt",
        "-w",
        "files/wrap-key",
        "-i",
        "models/resnet50-v15-fp32/1/saved_model.pb",
        "-o",
        "back.pb",
        "-V",
    )
    assert Path("back.pb").read_bytes() == Path("plaintext/saved_model.pb").read_bytes()
    assert stat.S_IMODE(Path("back.pb").stat().st_mode) == 0o600


def test_directory_mode_and_verify(cli: CliRunner) -> None:
    _run(cli, "gen-key", "-w", "k")
    Path("plain/variables").mkdir(parents=True)
    Path("plain/saved_model.pb").write_bytes(b"pb" * 3000)
    Path("plain/variables/variables.index").write_bytes(b"idx")
    out = _run(
        cli,
        "encrypt",
        "-w",
        "k",
        "-i",
        "plain",
        "-o",
        "enc",
        "--bound-path",
        "/models/m/1",
        "-v",
        "--format-version",
        "2",
    )
    assert "encrypted 2 files" in out
    assert "bound to /models/m/1/variables/variables.index" in out
    out = _run(cli, "verify", "-w", "k", "-i", "enc", "--bound-path", "/models/m/1")
    assert out.count("ok ") == 2
    assert "format v2" in out
    _run(cli, "verify", "-w", "k", "-i", "enc", "--bound-path", "/models/other", code=1)
    out = _run(cli, "decrypt", "-w", "k", "-i", "enc", "-o", "dec", "--bound-path", "/models/m/1", "-v")
    assert "decrypted 2 files" in out
    assert Path("dec/variables/variables.index").read_bytes() == b"idx"


def test_decrypt_failure_leaves_nothing(cli: CliRunner) -> None:
    _run(cli, "gen-key", "-w", "k")
    Path("plain").write_bytes(os.urandom(40_000))
    _run(cli, "encrypt", "-w", "k", "-i", "plain", "-o", "enc")
    data = bytearray(Path("enc").read_bytes())
    data[5 * 4096 + 7] ^= 0x40
    Path("enc").write_bytes(data)
    out = _run(cli, "decrypt", "-w", "k", "-i", "enc", "-o", "out", code=1)
    assert out.startswith("confserve: error: ")
    assert out.count("\n") == 1
    assert "authentication" in out
    assert not Path("out").exists()
    assert not [p for p in Path().iterdir() if "partial" in p.name]
    out = _run(cli, "verify", "-w", "k", "-i", "enc", code=1)
    assert "authentication" in out


def test_error_paths(cli: CliRunner) -> None:
    Path("short-key").write_bytes(b"0123")
    Path("plain").write_bytes(b"x")
    assert "16 raw bytes" in _run(cli, "encrypt", "-w", "short-key", "-i", "plain", "-o", "e", code=1)
    _run(cli, "gen-key", "-w", "k")
    _run(cli, "encrypt", "-w", "k", "-i", "plain", "-o", "e")
    other = pf.WrapKey.generate()
    other.save("k2")
    assert "authentication" in _run(cli, "decrypt", "-w", "k2", "-i", "e", "-o", "d", code=1)
    out = _run(cli, "decrypt", "-w", "k", "-i", "e", "-o", "d", "--bound-path", "elsewhere", code=1)
    assert "bound to path 'e'" in out
    assert "not a protected file" in _run(cli, "decrypt", "-w", "k", "-i", "plain", "-o", "d", code=1)
    Path("dir").mkdir()
    assert "is a directory" in _run(cli, "encrypt", "-w", "k", "-i", "plain", "-o", "dir", code=1)
    assert "is a directory" in _run(cli, "decrypt", "-w", "k", "-i", "e", "-o", "dir", code=1)
    assert "No such file" in _run(cli, "encrypt", "-w", "k", "-i", "plain", "-o", "no/such/dir/x", code=1)
    assert _run(cli, "encrypt", "-w", "k", "-i", "missing", "-o", "x", code=2)  # usage error from click
    assert not Path("d").exists()


def test_info(cli: CliRunner) -> None:
    key = pf.WrapKey.generate()
    Path("e").write_bytes(pf.encrypt_bytes(b"x" * 10_000, key, bound_path="e", format_version=2))
    data = json.loads(_run(cli, "info", "-i", "e", "--json"))
    assert data["format_version"] == 2
    assert data["host_size"] == pf.host_size(10_000)
    assert "v1.9" in data["readable_by"]
    out = _run(cli, "info", "-i", "e")
    assert "format_version: 2" in out
    Path("junk").write_bytes(b"junk")
    assert "not a protected file" in _run(cli, "info", "-i", "junk", code=1)


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.as_posix(): (None if p.is_dir() or p.is_symlink() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def test_decrypt_refuses_to_write_over_its_input_file(cli: CliRunner) -> None:
    _run(cli, "gen-key", "-w", "k")
    Path("plain").write_bytes(os.urandom(20_000))
    _run(cli, "encrypt", "-w", "k", "-i", "plain", "-o", "enc")
    Path("d").mkdir()
    Path("link").symlink_to("enc")
    before = _tree(Path())
    for same in ("enc", "./enc", "d/../enc", os.path.abspath("enc"), "link"):
        out = _run(cli, "decrypt", "-w", "k", "-i", "enc", "-o", same, code=1)
        assert out == f"confserve: error: output {same!r} is the input file itself; name another output\n"
        out = _run(cli, "decrypt", "-w", "k", "-i", same, "-o", "enc", code=1)
        assert "is the input file itself" in out
    assert _tree(Path()) == before  # the encrypted file is intact, nothing was written beside it


def test_encrypt_refuses_to_write_over_its_input_file(cli: CliRunner) -> None:
    _run(cli, "gen-key", "-w", "k")
    Path("plain").write_bytes(b"model bytes" * 100)
    before = _tree(Path())
    out = _run(cli, "encrypt", "-w", "k", "-i", "plain", "-o", "plain", code=1)
    assert "is the input file itself" in out
    out = _run(cli, "encrypt", "-w", "k", "-i", "plain", "-o", "./plain", "--bound-path", "p", code=1)
    assert "is the input file itself" in out
    assert _tree(Path()) == before


def test_directory_decrypt_refuses_an_output_in_the_input_tree(cli: CliRunner) -> None:
    _run(cli, "gen-key", "-w", "k")
    Path("plain/variables").mkdir(parents=True)
    Path("plain/saved_model.pb").write_bytes(os.urandom(9000))
    Path("plain/variables/variables.index").write_bytes(b"idx")
    _run(cli, "encrypt", "-w", "k", "-i", "plain", "-o", "enc")
    Path("enc-link").symlink_to("enc")
    Path("plain-link").symlink_to("plain")
    before = _tree(Path())
    for inside in ("enc", "enc/", "./enc", "enc/variables", "enc/new", "enc-link", "enc-link/out"):
        out = _run(cli, "decrypt", "-w", "k", "-i", "enc", "-o", inside, code=1)
        assert out.startswith(f"confserve: error: output directory {inside!r} is, or is inside, the input")
        out = _run(cli, "encrypt", "-w", "k", "-i", "plain", "-o", inside.replace("enc", "plain"), code=1)
        assert "inside, the input directory" in out
    assert _tree(Path()) == before
