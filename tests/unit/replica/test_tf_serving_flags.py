"""TF Serving's flags: the harmless ones accepted and mapped, the unsupported ones refused with a reason,
the behavioural ones measured (docs/server.md, "TF Serving flags")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from confserve.cli._serve import serve
from confserve.replica import OptionsError, ServeOptions, measured_args, option_specs, server_settings
from tests.conftest import REPO

# The flags of TF Serving's main.cc that confserve accepts only to keep TF Serving command lines working.
ACCEPTED = {
    "rest_api_num_threads",
    "grpc_max_threads",
    "grpc_channel_arguments",
    "tensorflow_session_parallelism",
    "max_num_load_retries",
    "load_retry_interval_micros",
    "enable_serialization_as_tensor_content",
    "num_load_threads",
    "num_unload_threads",
    "flush_filesystem_caches",
    "allow_version_labels_for_unavailable_models",
    "enable_grpc_healthcheck_service",
    "remove_unused_fields_from_bundle_metagraph",
    "skip_initialize_tpu",
    "per_process_gpu_memory_fraction",
    "num_tflite_pools",
    "num_tflite_interpreters_per_pool",
}
MEASURED = {"saved_model_tags", "enable_signature_method_name_check"}
REFUSED = {spec.name for spec in option_specs() if spec.refused is not None}
BASE: dict[str, Any] = {"model_name": "m", "model_base_path": "/m", "insecure": True}


def parse(argv: list[str]) -> ServeOptions:
    ctx = serve.make_context("serve", list(argv))
    values = dict(ctx.params)
    values.pop("print_measurement")
    values.pop("config", None)
    return ServeOptions(**values)


def test_a_tf_serving_command_line_is_accepted() -> None:
    """tensorflow_model_server_test.py testGoodGrpcChannelArgs and main.cc's flags, unchanged."""
    options = parse(
        [
            "--model_name=m",
            "--model_base_path=/m",
            "--insecure",
            "--saved_model_tags=serve,gpu",
            "--rest_api_num_threads=4",
            "--grpc_max_threads=6",
            "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
            "--num_load_threads=2",
            "--num_unload_threads=2",
            "--max_num_load_retries=1",
            "--load_retry_interval_micros=250000",
            "--tensorflow_session_parallelism=3",
            "--allow_version_labels_for_unavailable_models",
            "--enable_signature_method_name_check",
            "--enable_serialization_as_tensor_content",
            "--enable_grpc_healthcheck_service",
            "--flush_filesystem_caches",
            "--num_request_iterations_for_warmup=1",
        ]
    ).validate()
    settings = server_settings(options)
    assert settings.saved_model_tags == ("gpu", "serve")
    assert settings.enable_signature_method_name_check
    assert settings.serialize_outputs_as_tensor_content
    assert settings.rest is not None
    assert settings.rest.num_threads == 4
    assert settings.grpc.max_workers == 6
    assert settings.grpc.channel_arguments == (
        ("grpc.max_connection_age_ms", 2000),
        ("grpc.lb_policy_name", "grpclb"),
    )
    assert settings.manager.max_load_retries == 1
    assert settings.manager.load_retry_interval_seconds == 0.25
    assert (settings.tensorflow_intra_op_parallelism, settings.tensorflow_inter_op_parallelism) == (3, 3)


def test_defaults_map_to_confserve_defaults() -> None:
    settings = server_settings(ServeOptions(**BASE).validate())
    assert settings.saved_model_tags == ("serve",)
    assert not settings.enable_signature_method_name_check
    assert not settings.serialize_outputs_as_tensor_content
    assert settings.grpc.max_workers == 16
    assert settings.rest is not None
    assert settings.rest.num_threads == 8
    assert settings.grpc.channel_arguments == ()
    assert settings.manager.max_load_retries == 5
    assert settings.manager.load_retry_interval_seconds == 60.0
    explicit = ServeOptions(**BASE, tensorflow_session_parallelism=3, tensorflow_intra_op_parallelism=2)
    assert server_settings(explicit).tensorflow_intra_op_parallelism == 2  # the specific flag wins
    assert (
        server_settings(
            ServeOptions(**BASE, load_retry_interval_micros=-1)
        ).manager.load_retry_interval_seconds
        == 0
    )


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("grpc.max_receive_message_length=1", "may not set grpc.max_receive_message_length"),
        ("novalue", "expected key=value"),
        ("=3", "expected key=value"),
    ],
)
def test_grpc_channel_arguments_errors(value: str, match: str) -> None:
    with pytest.raises(OptionsError, match=match):
        server_settings(ServeOptions(**BASE, grpc_channel_arguments=value))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_flags_are_refused_with_a_reason(name: str) -> None:
    spec = next(s for s in option_specs() if s.name == name)
    value: Any = {bool: True, int: 7, str: "x"}[spec.kind]
    ServeOptions(**BASE).validate()  # at its default the flag is harmless
    with pytest.raises(OptionsError, match=rf"^--{name} is not supported by confserve: \w"):
        ServeOptions(**BASE, **{name: value}).validate()


def test_refused_flags_parse_so_the_refusal_is_ours() -> None:
    with pytest.raises(
        OptionsError, match="--grpc_socket_path is not supported by confserve: gRPC on a UNIX socket"
    ):
        parse(
            ["--model_name=m", "--model_base_path=/m", "--insecure", "--grpc_socket_path=/tmp/s"]
        ).validate()
    assert parse(
        [*_base_argv(), "--num_request_iterations_for_warmup=0"]
    ).validate()  # TF Serving: 0 = default


def _base_argv() -> list[str]:
    return ["--model_name=m", "--model_base_path=/m", "--insecure"]


def test_empty_saved_model_tags_are_refused() -> None:
    with pytest.raises(OptionsError, match="--saved_model_tags names no tag"):
        ServeOptions(**BASE, saved_model_tags=" , ").validate()


def test_measured_classification(tmp_path: Path) -> None:
    specs = {spec.name: spec for spec in option_specs()}
    assert all(specs[name].measured for name in MEASURED)
    assert not any(specs[name].measured for name in ACCEPTED | REFUSED)
    ca = tmp_path / "ca.crt"
    ca.write_text("ca")
    options = ServeOptions(**BASE, secret_provision_ca_chain_path=str(ca))
    args = measured_args(options)
    assert (args["saved_model_tags"], args["signature_method_name_check"]) == ("serve", "false")
    changed = measured_args(
        options.replace(saved_model_tags="gpu, serve", enable_signature_method_name_check=True)
    )
    assert (changed["saved_model_tags"], changed["signature_method_name_check"]) == ("gpu,serve", "true")
    # The harmless flags do not change the identity.
    assert measured_args(options.replace(rest_api_num_threads=3, num_load_threads=4)) == args


def test_docs_list_every_tf_serving_flag() -> None:
    docs = (REPO / "docs" / "server.md").read_text(encoding="utf-8")
    missing = [name for name in sorted(ACCEPTED | MEASURED | REFUSED) if f"`--{name}`" not in docs]
    assert missing == []
