"""ServeOptions: one declaration of every serve flag; argv rendering round-trips through the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest

from confserve.cli._serve import serve
from confserve.replica import OptionsError, ServeOptions, option_specs


def parse(argv: list[str]) -> ServeOptions:
    """What `confserve serve ARGV` parses into (without running it)."""
    ctx = serve.make_context("serve", list(argv))
    values = dict(ctx.params)
    values.pop("print_measurement")
    values.pop("config")
    return ServeOptions(**values)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name in ("ssl.cfg", "ca.crt", "monitoring.cfg", "batching.cfg", "models.cfg", "key"):
        (tmp_path / name).write_text("x")
        out[name] = str(tmp_path / name)
    (tmp_path / "sim").mkdir()
    out["sim"] = str(tmp_path / "sim")
    return out


def test_every_field_is_a_flag_and_defaults_match() -> None:
    assert parse([]) == ServeOptions()
    flags = {p.opts[0] for p in serve.params}
    assert {f"--{spec.name}" for spec in option_specs()} <= flags


def test_to_argv_round_trips(files: dict[str, str]) -> None:
    options = ServeOptions(
        model_name="digits",
        model_base_path="models/digits",
        host="127.0.0.1",
        port=9000,
        rest_api_port=0,
        ssl_config_file=files["ssl.cfg"],
        ssl_config_bound_path="ssl.cfg",
        secret_provision_servers="a:1;b:2",
        secret_provision_ca_chain_path=files["ca.crt"],
        attestation="simulated",
        sim_platform=files["sim"],
        isv_svn=3,
        grpc_max_message_size=2048,
        max_concurrent_requests=4,
        shutdown_grace_seconds=0.5,
        monitoring_config_file=files["monitoring.cfg"],
        enable_model_warmup=True,
        enable_batching=True,
        batching_parameters_file=files["batching.cfg"],
    )
    argv = options.to_argv()
    assert "--port=9000" in argv
    assert "--enable_batching" in argv  # a flag, no value
    assert not any(a.startswith("--no_rest") for a in argv)  # defaults are left out
    assert parse(argv) == options


def test_dash_spelling_is_accepted() -> None:
    assert parse(["--model-name", "m", "--rest-api-port", "0"]) == ServeOptions(
        model_name="m", rest_api_port=0
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "give --model_config_file, or --model_name"),
        ({"model_name": "m"}, "give --model_config_file, or --model_name"),
        ({"model_config_file": "c", "model_name": "m"}, "either --model_config_file"),
        ({"model_name": "m", "model_base_path": "p"}, "--ssl_config_file, or --insecure"),
        ({"model_name": "m", "model_base_path": "p", "insecure": True, "secret_provision_servers": "a:1",
          "wrap_key": "k"}, "not both"),
        ({"model_name": "m", "model_base_path": "p", "insecure": True, "secret_provision_servers": "a:1"},
         "--secret_provision_ca_chain_path is required"),
        ({"model_name": "m", "model_base_path": "p", "insecure": True, "batching_parameters_file": "b"},
         "needs --enable_batching"),
        ({"model_name": "m", "model_base_path": "p", "insecure": True, "model_config_file_poll_wait_seconds": 1.0},
         "needs --model_config_file"),
        ({"model_name": "m", "model_base_path": "p", "insecure": True, "secret_provision_set_key": "k"},
         "needs --secret_provision_servers"),
        ({"model_name": "m", "model_base_path": "p", "insecure": True, "attestation": "sgx"}, "--attestation"),
    ],
)  # fmt: skip
def test_validate_refuses_what_cannot_work(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        ServeOptions(**changes).validate()


def test_validate_accepts_a_complete_replica(files: dict[str, str]) -> None:
    options = ServeOptions(
        model_name="m",
        model_base_path="p",
        ssl_config_file=files["ssl.cfg"],
        secret_provision_servers="a:1",
        secret_provision_ca_chain_path=files["ca.crt"],
    )
    assert options.validate() is options


def test_measured_flags_are_the_behavioural_ones() -> None:
    measured = {spec.name for spec in option_specs() if spec.measured}
    # Availability (where it listens, how long it waits, how much it takes) is not measured ...
    assert not measured & {"host", "port", "rest_api_port", "secret_provision_servers", "max_concurrent_requests",
                           "grpc_max_message_size", "file_system_poll_wait_seconds", "shutdown_grace_seconds"}  # fmt: skip
    # ... what it does with data is.
    assert {"model_name", "model_base_path", "ssl_config_file", "secret_provision_ca_chain_path", "insecure",
            "allow_plaintext", "enable_batching", "monitoring_config_file"} <= measured  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--enable_batching=true"], True),
        (["--enable_batching=True"], True),
        (["--enable-batching=1"], True),
        (["--enable_batching=false"], False),
        (["--noenable_batching"], False),
        (["--enable_batching"], True),
        ([], False),
    ],
)
def test_tf_serving_boolean_spellings(argv: list[str], expected: bool) -> None:
    assert parse(argv).enable_batching is expected


def test_boolean_spelling_errors_and_no_rest_untouched() -> None:
    assert parse(["--no_rest"]).no_rest is True
    with pytest.raises(click.BadParameter, match="'maybe' is not true or false"):
        parse(["--enable_batching=maybe"])
