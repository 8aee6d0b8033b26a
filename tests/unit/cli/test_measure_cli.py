"""`confserve measure`: simulated deployments, Gramine SIGSTRUCT files, signing-key generation."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from confserve.attestation import (
    build_sigstruct,
    generate_signing_key,
    measure_simulated,
    mr_signer_from_pem,
    mr_signer_from_public_key,
)
from confserve.attestation._measure import DEFAULT_ENTRY_POINT
from confserve.cli import main


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return generate_signing_key()


@pytest.fixture
def key_pem(tmp_path: Path, key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "enclave-key.pub.pem"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "pkg" / "confserve"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("VERSION = 1\n")
    return root


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["measure", *args])
    return result.exit_code, result.stdout, result.stderr


def parse_lines(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def test_simulated_text_output(package: Path, key_pem: Path, key: rsa.RSAPrivateKey) -> None:
    code, out, err = run(
        "--signing-key", str(key_pem), "--package-root", str(package), "--arg", "model=a", "--arg", "tls=on",
        "--isv-prod-id", "2", "--isv-svn", "5",
    )  # fmt: skip
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 4
    assert [line.split(":")[0].strip() for line in lines] == [
        "mr_enclave",
        "mr_signer",
        "isv_prod_id",
        "isv_svn",
    ]
    values = parse_lines(out)
    expected = measure_simulated(package, DEFAULT_ENTRY_POINT, {"model": "a", "tls": "on"})
    assert values == {
        "mr_enclave": expected.hex(),
        "mr_signer": mr_signer_from_public_key(key).hex(),
        "isv_prod_id": "2",
        "isv_svn": "5",
    }


def test_simulated_json_and_config_file(tmp_path: Path, package: Path, key_pem: Path) -> None:
    config = tmp_path / "measured.toml"
    config.write_text('model = "a"\n[tls]\nenabled = true\n')
    code, out, _ = run(
        "--signing-key", str(key_pem), "--package-root", str(package), "--config", str(config), "--json",
        "--entry-point", "confserve.serving:main",
    )  # fmt: skip
    assert code == 0
    document = json.loads(out)
    assert document["measured_args"] == {"model": "a", "tls.enabled": "true"}
    assert document["entry_point"] == "confserve.serving:main"
    assert (document["isv_prod_id"], document["isv_svn"]) == (0, 0)
    code, out_args, _ = run(
        "--signing-key", str(key_pem), "--package-root", str(package), "--arg", "model=a",
        "--arg", "tls.enabled=true", "--entry-point", "confserve.serving:main",
    )  # fmt: skip
    assert code == 0
    assert parse_lines(out_args)["mr_enclave"] == document["mr_enclave"]


def test_argument_change_changes_output(package: Path, key_pem: Path) -> None:
    common = ("--signing-key", str(key_pem), "--package-root", str(package))
    _, one, _ = run(*common, "--arg", "port=8500")
    _, two, _ = run(*common, "--arg", "port=8501")
    _, empty_value, _ = run(*common, "--arg", "port=")
    assert len({parse_lines(x)["mr_enclave"] for x in (one, two, empty_value)}) == 3


def test_installed_package_is_the_default(key_pem: Path) -> None:
    code, out, _ = run("--signing-key", str(key_pem), "--json")
    assert code == 0
    assert len(json.loads(out)["mr_enclave"]) == 64


def test_describe(package: Path) -> None:
    code, out, _ = run("--package-root", str(package), "--describe", "--arg", "a=b")
    assert code == 0
    document = json.loads(out)
    assert document["files"][0][0] == "__init__.py"
    assert document["measured_args"] == {"a": "b"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--arg", "novalue"), "KEY=VALUE"),
        (("--arg", "=x"), "KEY=VALUE"),
        (("--arg", "a=1", "--arg", "a=2"), "given twice"),
        (("--arg", "a=1", "--config", "x.toml"), "either --config or --arg"),
        (("--arg", "a=1"), "--signing-key is required"),
        (("--sigstruct", "a.sig", "--arg", "a=1"), "cannot be combined"),
        (
            (
                "--isv-svn",
                "65536",
            ),
            "65536",
        ),
        (("--json", "gen-signing-key", "k.pem"), "cannot be combined with a subcommand"),
    ],
)
def test_usage_errors(args: tuple[str, ...], message: str) -> None:
    code, _, err = run(*args)
    assert code == 2
    assert message in err


def test_runtime_errors_exit_1(tmp_path: Path, package: Path, key_pem: Path) -> None:
    code, _, err = run("--signing-key", str(tmp_path / "missing.pem"), "--package-root", str(package))
    assert code == 1
    assert err.startswith("confserve: error: ")
    bad_key = tmp_path / "bad.pem"
    bad_key.write_bytes(b"nope")
    code, _, err = run("--signing-key", str(bad_key), "--package-root", str(package))
    assert (code, "cannot load the signing key" in err) == (1, True)
    code, _, err = run("--signing-key", str(key_pem), "--package-root", str(tmp_path / "nothing"))
    assert (code, "not a directory" in err) == (1, True)
    config = tmp_path / "bad.toml"
    config.write_text("x = 1.5\n")
    code, _, err = run("--signing-key", str(key_pem), "--config", str(config))
    assert (code, "string, integer or boolean" in err) == (1, True)


def test_sigstruct(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    sig = tmp_path / "app.sig"
    sig.write_bytes(build_sigstruct(key, enclave_hash=b"\xaa" * 32, isv_prod_id=1, isv_svn=2))
    code, out, err = run("--sigstruct", str(sig))
    assert (code, err) == (0, "")
    assert parse_lines(out) == {
        "mr_enclave": "aa" * 32,
        "mr_signer": mr_signer_from_public_key(key).hex(),
        "isv_prod_id": "1",
        "isv_svn": "2",
    }
    code, out, _ = run("--sigstruct", str(sig), "--json")
    document = json.loads(out)
    assert document["debug"] is False
    assert document["date"] == "2026-01-01"
    assert document["attributes_flags"] == "0x0000000000000004"


def test_debug_sigstruct_warns(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    sig = tmp_path / "debug.sig"
    sig.write_bytes(build_sigstruct(key, enclave_hash=bytes(32), debug=True))
    code, out, err = run("--sigstruct", str(sig))
    assert code == 0
    assert "DEBUG enclave" in err
    assert len(out.splitlines()) == 4


def test_tampered_or_truncated_sigstruct_fails(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    blob = bytearray(build_sigstruct(key, enclave_hash=bytes(32)))
    blob[960] ^= 1
    sig = tmp_path / "bad.sig"
    sig.write_bytes(bytes(blob))
    code, out, err = run("--sigstruct", str(sig))
    assert (code, out) == (1, "")
    assert "signature does not verify" in err
    sig.write_bytes(bytes(blob[:100]))
    code, _, err = run("--sigstruct", str(sig))
    assert (code, "1808 bytes" in err) == (1, True)
    code, _, err = run("--sigstruct", str(tmp_path / "missing.sig"))
    assert code == 1


def test_gen_signing_key(tmp_path: Path) -> None:
    out_path = tmp_path / "enclave-key.pem"
    code, out, _ = run("gen-signing-key", str(out_path))
    assert code == 0
    pem = out_path.read_bytes()
    assert stat.S_IMODE(out_path.stat().st_mode) == 0o600
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert loaded.key_size == 3072
    assert loaded.public_key().public_numbers().e == 3
    assert parse_lines(out) == {"mr_signer": mr_signer_from_pem(pem).hex()}

    code, _, err = run("gen-signing-key", str(out_path))
    assert code == 1
    assert "exists (use --force" in err
    assert out_path.read_bytes() == pem

    out_path.chmod(0o644)
    code, _, _ = run("gen-signing-key", "--force", str(out_path))
    assert code == 0
    assert out_path.read_bytes() != pem
    assert stat.S_IMODE(out_path.stat().st_mode) == 0o600


def test_gen_signing_key_unwritable(tmp_path: Path) -> None:
    code, _, err = run("gen-signing-key", str(tmp_path / "no" / "such" / "dir.pem"))
    assert code == 1
    assert err.startswith("confserve: error: ")


def test_gen_signing_key_public_part(tmp_path: Path) -> None:
    private, public = tmp_path / "signer.pem", tmp_path / "signer.pub.pem"
    code, out, _ = run("gen-signing-key", str(private), "--public", str(public))
    assert code == 0
    assert b"PRIVATE" not in public.read_bytes()
    key = serialization.load_pem_public_key(public.read_bytes())
    assert isinstance(key, rsa.RSAPublicKey)
    assert mr_signer_from_pem(public.read_bytes()) == mr_signer_from_pem(private.read_bytes())
    assert f"public key:  {public}" in out
