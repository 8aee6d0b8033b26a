"""Prometheus metrics on the REST port: TF Serving's path and names, counted for gRPC and REST."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from confserve.cli import main
from confserve.cluster._local import free_port
from confserve.frontends import PLAINTEXT, ModelServer, ServerSettings, TlsConfig
from confserve.frontends.grpc import GrpcSettings
from confserve.frontends.rest import RestSettings
from confserve.serving import ModelConfig, PlainOpener
from tests.integration.test_limits import BODY, predict_request
from tests.integration.test_serve_cli import ssl_cfg
from tests.unit.serving.gated import GATE_TIMEOUT_SECONDS, GatedLoader, GatedServable, gated_model_dir
from tests.unit.serving.models import model_tree

PATH = "/monitoring/prometheus/metrics"


def get(port: int, path: str, context: Any = None, body: bytes | None = None) -> tuple[int, str, str]:
    if context is None:
        connection: http.client.HTTPConnection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=GATE_TIMEOUT_SECONDS
        )
    else:
        connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
    try:
        connection.request("GET" if body is None else "POST", path, body=body)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def start(tmp_path: Path, metrics_path: str | None) -> ModelServer:
    settings = ServerSettings(
        grpc=GrpcSettings(address="127.0.0.1:0"),
        rest=RestSettings(port=0, num_threads=2),
        file_system_poll_wait_seconds=-1,
        metrics_path=metrics_path,
    )
    models = (ModelConfig("m", str(gated_model_dir(tmp_path))),)
    loader = GatedLoader(GatedServable(open_gate=True))
    server = ModelServer(models, PlainOpener(), PLAINTEXT, settings, loader=loader)
    server.start()
    return server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ModelServer]:
    server = start(tmp_path, PATH)
    yield server
    server.stop(0)


def test_requests_are_counted_per_model_status_and_entrypoint(served: ModelServer) -> None:
    assert served.rest is not None
    rest_port = served.rest.port
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc.port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(predict_request(), timeout=30)
        stub.Predict(predict_request(), timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.Predict(predict_pb2.PredictRequest(), timeout=30)  # no ModelSpec
    assert get(rest_port, "/v1/models/m:predict", body=BODY)[0] == 200
    assert get(rest_port, "/v1/models/m:predict", body=b"{")[0] == 400
    status, content_type, text = get(rest_port, PATH)
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    found = samples(text)
    count = ":tensorflow:serving:request_count"
    assert found[(count, frozenset({("model_name", "m"), ("status", "OK")}))] == 3
    assert found[(count, frozenset({("model_name", ""), ("status", "INVALID_ARGUMENT")}))] == 1
    latency = ":tensorflow:serving:request_latency_count"
    for entrypoint, expected in (("GRPC", 2), ("REST", 1)):
        labels = frozenset({("model_name", "m"), ("API", "Predict"), ("entrypoint", entrypoint)})
        assert found[(latency, labels)] == expected
    # The malformed JSON never reached the DataPlane: a parse error is not a model request.
    assert sum(v for (name, _), v in found.items() if name == count) == 4


def test_no_metrics_without_monitoring_config(tmp_path: Path) -> None:
    server = start(tmp_path, None)
    try:
        assert server.rest is not None
        assert server.metrics is None
        status, _, text = get(server.rest.port, PATH)
        assert status != 200
        assert "tensorflow" not in text
    finally:
        server.stop(0)


def test_serve_flag_enables_metrics_at_the_configured_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_tls: TlsConfig, ca: trustme.CA
) -> None:
    from confserve.cli import _serve

    monkeypatch.setattr(_serve, "install_stop_handlers", lambda stop, serving: None)
    started: list[ModelServer] = []
    original_start = ModelServer.start

    def start_and_keep(self: ModelServer) -> None:
        started.append(self)
        original_start(self)

    fetched: list[tuple[int, str, str]] = []

    def fetch_then_stop(stop: Any) -> None:
        import ssl

        context = ssl.create_default_context()
        ca.configure_trust(context)
        port = started[0].rest.port  # type: ignore[union-attr]
        get(port, "/v1/models/clf:predict", context, json.dumps({"instances": [[1, 2, 3, 4]]}).encode())
        fetched.append(get(port, "/metrics/tfs", context))

    monkeypatch.setattr(ModelServer, "start", start_and_keep)
    monkeypatch.setattr(_serve, "wait_for_stop", fetch_then_stop)
    monkeypatch.chdir(tmp_path)
    Path("ssl.cfg").write_bytes(ssl_cfg(server_tls))
    Path("monitoring.cfg").write_text('prometheus_config { enable: true path: "/metrics/tfs" }')
    Path("off.cfg").write_text("prometheus_config { enable: false }")
    Path("bad.cfg").write_text('prometheus_config { enable: true path: "/v1/models/x" }')
    args = [
        "serve",
        "--host=127.0.0.1",
        "--model_name=clf",
        f"--model_base_path={model_tree() / 'clf'}",
        "--port=0",
        f"--rest_api_port={free_port()}",  # 0 would disable REST (TF Serving's meaning)
        "--ssl_config_file=ssl.cfg",
        "--file_system_poll_wait_seconds=-1",
        "--allow_plaintext",
    ]
    result = CliRunner().invoke(main, [*args, "--monitoring_config_file=monitoring.cfg"])
    assert result.exit_code == 0, result.output
    status, _, text = fetched[0]
    assert status == 200
    assert ':tensorflow:serving:request_count{model_name="clf",status="OK"} 1.0' in text
    assert started[0].metrics is not None

    result = CliRunner().invoke(main, [*args, "--monitoring_config_file=off.cfg"])
    assert result.exit_code == 0, result.output
    assert started[1].metrics is None
    result = CliRunner().invoke(main, [*args, "--monitoring_config_file=bad.cfg"])
    assert result.exit_code == 1
    assert "not be under /v1/" in result.output
    result = CliRunner().invoke(main, [*args, "--monitoring_config_file=monitoring.cfg", "--no_rest"])
    assert result.exit_code == 1
    assert "do not disable REST" in result.output
