"""The replica configuration file: what the owner writes, ships, and measures, and what the host runs.
The identity depends on what the options mean, not on how a path is spelled or where it is measured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from confserve import replica
from confserve.attestation import generate_signing_key
from confserve.cli import main
from confserve.replica import MAX_CONFIG_BYTES, OptionsError, ServeOptions


@pytest.fixture(scope="module")
def signer_pub(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    key = generate_signing_key()
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def host(tmp_path: Path, signer_pub: bytes) -> Path:
    """The owner's copy of the directory shipped to the host."""
    directory = tmp_path / "host"
    directory.mkdir()
    (directory / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nnot parsed here\n")
    (directory / "signer.pub.pem").write_bytes(signer_pub)
    (directory / "replica.toml").write_text(
        ServeOptions(
            model_name="digits",
            model_base_path="models/digits",
            ssl_config_file="ssl.cfg",
            secret_provision_servers="owner.example:4433",
            secret_provision_ca_chain_path="ca.crt",
            signing_key="signer.pub.pem",
        ).to_toml(comment="replica configuration")
    )
    return directory


def measure(*args: str | Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["serve", *map(str, args), "--print_measurement"])
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_toml_round_trip() -> None:
    options = ServeOptions(model_name="m", model_base_path="p", port=9000, enable_batching=True, isv_svn=2)
    text = options.to_toml(comment="a comment")
    assert text.startswith("# a comment\n")
    assert ServeOptions(**ServeOptions.from_toml(text.encode())) == options


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"model_nme = 'x'", "unknown option 'model_nme'"),
        (b"port = '8500'", "port must be a int"),
        (b"port = 70000", "at most 65535"),
        (b"shutdown_grace_seconds = -1", "at least 0"),
        (b"attestation = 'sgx'", "must be one of auto, gramine, simulated"),
        (b"enable_batching = 1", "must be a bool"),
        (b"model_name = [1]", "must be a str"),
        (b"model_name = '" + b"a" * 5000 + b"'", "not a plain string"),
        (b"model_name = ", "not valid TOML"),
        (b"\xff\xfe", "not UTF-8"),
        (b"#" * (MAX_CONFIG_BYTES + 1), "larger than"),
    ],
)
def test_bad_configuration_is_refused_with_the_name(data: bytes, message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        ServeOptions.from_toml(data)


def test_floats_accept_integers() -> None:
    assert ServeOptions.from_toml(b"shutdown_grace_seconds = 2") == {"shutdown_grace_seconds": 2.0}


def test_owner_measures_without_the_platform_from_anywhere(
    host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    owner_view = measure("--config", host / "replica.toml")
    # The host's copy, in another place, run from inside it, with its own (unmeasured) ports and servers.
    host_copy = tmp_path / "the-host"
    shutil.copytree(host, host_copy)
    monkeypatch.chdir(host_copy)
    host_view = measure(
        "--config", "replica.toml", "--port", "9999", "--secret_provision_servers", "10.0.0.1:1"
    )
    assert host_view["mr_enclave"] == owner_view["mr_enclave"]
    assert host_view["mr_signer"] == owner_view["mr_signer"]


def test_spelling_of_a_path_does_not_change_the_identity(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(host)
    base = ServeOptions.from_toml((host / "replica.toml").read_bytes())
    plain = ServeOptions(**base)
    spelled = plain.replace(ssl_config_file="./ssl.cfg", model_base_path="models//digits/")
    assert replica.identity(plain)[0] == replica.identity(spelled)[0]
    other_model = plain.replace(model_base_path="models/other")
    assert replica.identity(plain)[0].mr_enclave != replica.identity(other_model)[0].mr_enclave
    # File contents count, by hash: another CA is another identity.
    (host / "ca2.crt").write_text("another CA")
    other_ca = plain.replace(secret_provision_ca_chain_path="ca2.crt")
    assert replica.identity(plain)[0].mr_enclave != replica.identity(other_ca)[0].mr_enclave


def test_measured_options_come_from_the_file_only(host: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "serve",
            "--config",
            str(host / "replica.toml"),
            "--model_base_path",
            "models/x",
            "--print_measurement",
        ],
    )
    assert result.exit_code == 2
    assert "--model_base_path is measured" in result.output


def test_measuring_needs_the_signer(host: Path) -> None:
    (host / "bare.toml").write_text(
        "model_name = 'm'\nmodel_base_path = 'p'\nssl_config_file = 'ssl.cfg'\n"
        "secret_provision_ca_chain_path = 'ca.crt'\n"
    )
    result = CliRunner().invoke(main, ["serve", "--config", str(host / "bare.toml"), "--print_measurement"])
    assert result.exit_code == 1
    assert "needs --signing_key" in result.output
