"""The assembled ModelServer: initial load, hot-added and removed versions, both ports, over TLS."""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
import trustme
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from confserve.frontends import ModelServer, ServerSettings, TlsConfig
from confserve.frontends.grpc import GrpcSettings
from confserve.frontends.rest import RestSettings
from confserve.serving import ModelConfig, PlainOpener
from tests.unit.serving.models import copy_model, model_tree


def grpc_version(port: int, ca: trustme.CA) -> int:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "clf"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 4), np.float32)))
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        return int(response.model_spec.version.value)


def rest_status(port: int, ca: trustme.CA) -> Any:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
    try:
        connection.request("GET", "/v1/models/clf")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def test_server_loads_then_follows_the_file_system(
    tmp_path: Path, server_tls: TlsConfig, ca: trustme.CA
) -> None:
    base = copy_model(tmp_path / "clf", (1,))
    settings = ServerSettings(
        grpc=GrpcSettings(address="127.0.0.1:0", max_workers=2),
        rest=RestSettings(port=0, num_threads=1),
        file_system_poll_wait_seconds=-1,  # the test drives polling
    )
    server = ModelServer([ModelConfig("clf", str(base))], PlainOpener(), server_tls, settings)
    server.start()
    try:
        assert server.rest is not None
        assert grpc_version(server.grpc.port, ca) == 1
        shutil.copytree(model_tree() / "clf" / "1", base / "3")
        server.store.poll_once()
        assert grpc_version(server.grpc.port, ca) == 3
        states = [
            (s["version"], s["state"]) for s in rest_status(server.rest.port, ca)["model_version_status"]
        ]
        assert states == [("3", "AVAILABLE"), ("1", "END")]
    finally:
        server.stop(0)


def test_background_polling_thread_runs_and_stops(
    tmp_path: Path, server_tls: TlsConfig, ca: trustme.CA
) -> None:
    base = copy_model(tmp_path / "clf", (1,))
    settings = ServerSettings(
        grpc=GrpcSettings(address="127.0.0.1:0", max_workers=2), rest=None, file_system_poll_wait_seconds=0.01
    )
    server = ModelServer([ModelConfig("clf", str(base))], PlainOpener(), server_tls, settings)
    server.start()
    try:
        assert server.rest is None
        assert grpc_version(server.grpc.port, ca) == 1
    finally:
        server.stop(0)
