"""Server-side batching end to end: concurrent gRPC and REST requests merged into one model run."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from tensorflow_serving.apis import prediction_service_pb2_grpc

from confserve.cli import main
from confserve.frontends import PLAINTEXT, ModelServer, ServerSettings, TlsConfig
from confserve.frontends.grpc import GrpcSettings
from confserve.frontends.rest import RestSettings
from confserve.serving import ModelConfig, PlainOpener
from confserve.serving.batching import BatchingSettings
from tests.integration.test_limits import BODY, predict_request, rest_call
from tests.integration.test_serve_cli import ssl_cfg
from tests.unit.serving.batching.test_scheduler import Counting, Once
from tests.unit.serving.gated import gated_model_dir
from tests.unit.serving.models import model_tree


def test_concurrent_grpc_and_rest_requests_share_one_run(tmp_path: Path) -> None:
    counting = Counting()
    settings = ServerSettings(
        grpc=GrpcSettings(address="127.0.0.1:0"),
        rest=RestSettings(port=0, num_threads=2),
        file_system_poll_wait_seconds=-1,
        # Runs when 4 rows are queued; the timeout is far away, so nothing depends on timing (adaptive
        # closing off: it would run the first ones as soon as they were all the requests in flight).
        batching=BatchingSettings(
            max_batch_size=4, batch_timeout_micros=600_000_000, num_batch_threads=1, adaptive=False
        ),
    )
    models = (ModelConfig("m", str(gated_model_dir(tmp_path))),)
    server = ModelServer(models, PlainOpener(), PLAINTEXT, settings, loader=Once(counting))
    server.start()
    assert server.rest is not None
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{server.grpc.port}") as channel,
            futures.ThreadPoolExecutor(4) as pool,
        ):
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            grpc_calls = [pool.submit(stub.Predict, predict_request(), timeout=30) for _ in range(3)]
            rest = pool.submit(rest_call, server.rest.port, "/v1/models/m:predict", BODY)
            assert rest.result() == (200, {"predictions": [[2.0, 4.0]]})
            for call in grpc_calls:
                assert tf.make_ndarray(call.result().outputs["y"]).tolist() == [[2.0, 2.0]]
        assert counting.batches == [4]
    finally:
        server.stop(0)


def test_serve_flags_batch_a_real_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_tls: TlsConfig
) -> None:
    from confserve.cli import _serve

    monkeypatch.setattr(_serve, "install_stop_handlers", lambda stop, serving: None)
    monkeypatch.chdir(tmp_path)
    seen: list[Any] = []

    def predict_then_stop(self: ModelServer, grace_seconds: float | None = None) -> None:
        seen.append(self.settings.batching)
        request = predict_request()
        request.model_spec.name = "clf"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((3, 4), np.float32)))
        seen.append(tf.make_ndarray(self.dataplane.predict(request).outputs["probabilities"]).shape)

    monkeypatch.setattr(ModelServer, "stop", predict_then_stop)
    monkeypatch.setattr(_serve, "wait_for_stop", lambda stop: None)
    Path("ssl.cfg").write_bytes(ssl_cfg(server_tls))
    Path("batching.cfg").write_text(
        "max_batch_size { value: 8 } batch_timeout_micros { value: 0 } num_batch_threads { value: 2 } "
        "allowed_batch_sizes: 4 allowed_batch_sizes: 8"
    )
    Path("bad.cfg").write_text("max_batch_size { value: 8 } allowed_batch_sizes: 4")
    args = [
        "serve",
        "--host=127.0.0.1",
        "--model_name=clf",
        f"--model_base_path={model_tree() / 'clf'}",
        "--port=0",
        "--no_rest",
        "--ssl_config_file=ssl.cfg",
        "--file_system_poll_wait_seconds=-1",
        "--allow_plaintext",
    ]
    result = CliRunner().invoke(main, [*args, "--enable_batching", "--batching_parameters_file=batching.cfg"])
    assert result.exit_code == 0, result.output
    assert seen[0] == BatchingSettings(
        max_batch_size=8, batch_timeout_micros=0, num_batch_threads=2, allowed_batch_sizes=(4, 8)
    )
    assert seen[1] == (3, 3)  # padded to 4 for the model, split back to the request's 3 rows
    result = CliRunner().invoke(main, [*args, "--enable_batching", "--batching_parameters_file=bad.cfg"])
    assert result.exit_code == 1
    assert "must equal max_batch_size" in result.output
    result = CliRunner().invoke(main, [*args, "--batching_parameters_file=batching.cfg"])
    assert result.exit_code == 1
    assert "needs --enable_batching" in result.output
