"""`confserve serve` with the limit, deadline, threading and shutdown flags, as a real process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
import trustme
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from confserve.errors import Status
from confserve.frontends import TlsConfig
from confserve.serving import ServingError, set_tensorflow_threads
from tests.integration.test_serve_cli import predict_version, run_server, ssl_cfg, stop
from tests.unit.serving.models import model_tree


def test_serve_with_limit_flags(tmp_path: Path, server_tls: TlsConfig, ca: trustme.CA) -> None:
    (tmp_path / "ssl.cfg").write_bytes(ssl_cfg(server_tls))
    process, port = run_server(
        [
            "--model_name=clf",
            f"--model_base_path={model_tree() / 'clf'}",
            "--port=0",
            "--rest_api_port=0",
            "--ssl_config_file=ssl.cfg",
            "--allow_plaintext",
            "--file_system_poll_wait_seconds=-1",
            "--grpc_max_message_size=65536",
            "--rest_api_timeout_in_ms=10000",
            "--max_concurrent_requests=4",
            "--tensorflow_intra_op_parallelism=1",
            "--tensorflow_inter_op_parallelism=1",
            "--shutdown_grace_seconds=2",
        ],
        tmp_path,
    )
    try:
        assert predict_version(port, ca) == 2
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "clf"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((5000, 4), np.float32)))  # 80 kB
            with pytest.raises(grpc.RpcError) as info:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert predict_version(port, ca) == 2  # still serving
    finally:
        stop(process, tmp_path)
    log = (tmp_path / "stderr.log").read_text()
    assert "TensorFlow threads: intra-op 1, inter-op 1" in log
    assert "draining in-flight requests" in log


def test_tensorflow_threads_are_set_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    threading = tf.config.threading
    monkeypatch.setattr(threading, "set_intra_op_parallelism_threads", lambda n: calls.append(("intra", n)))
    monkeypatch.setattr(threading, "set_inter_op_parallelism_threads", lambda n: calls.append(("inter", n)))
    set_tensorflow_threads(0, 0)
    assert calls == []
    set_tensorflow_threads(3, 2)
    assert calls == [("intra", 3), ("inter", 2)]

    def too_late(n: Any) -> None:
        raise RuntimeError("Intra op parallelism cannot be modified after initialization.")

    monkeypatch.setattr(threading, "set_intra_op_parallelism_threads", too_late)
    with pytest.raises(ServingError, match="before loading any model") as info:
        set_tensorflow_threads(1, 0)
    assert info.value.status is Status.INVALID_ARGUMENT
