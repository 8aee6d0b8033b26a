"""Limits, deadlines and draining on real loopback servers, with a gated servable (no sleeps)."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from confserve.frontends import ModelServer, ServerSettings
from confserve.frontends.grpc import GrpcServer, GrpcSettings
from confserve.frontends.rest import RestServer, RestSettings
from confserve.serving import ModelConfig, PlainOpener
from tests.unit.serving.gated import (
    GATE_TIMEOUT_SECONDS,
    GatedLoader,
    GatedServable,
    gated_dataplane,
    gated_model_dir,
)

MAX_MESSAGE_BYTES = 256 * 1024
BODY = json.dumps({"instances": [[1.0, 2.0]]}).encode()


def predict_request(elements: int = 2) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, elements), np.float32)))
    return request


def rest_call(port: int, path: str = "/v1/models/m:predict", body: bytes = BODY) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=GATE_TIMEOUT_SECONDS)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture
def pool() -> Iterator[futures.ThreadPoolExecutor]:
    with futures.ThreadPoolExecutor(4) as executor:
        yield executor


@pytest.fixture
def servable() -> Iterator[GatedServable]:
    servable = GatedServable()
    yield servable
    servable.gate.set()  # never leave a worker blocked


def start_grpc(dataplane: Any) -> tuple[GrpcServer, Any]:
    server = GrpcServer(
        dataplane,
        None,
        GrpcSettings(address="127.0.0.1:0", max_message_bytes=MAX_MESSAGE_BYTES),
        allow_insecure=True,
    )
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    return server, channel


def test_grpc_over_the_concurrency_limit_is_resource_exhausted(servable: GatedServable) -> None:
    server, channel = start_grpc(gated_dataplane(servable, max_concurrent_requests=1))
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        first = stub.Predict.future(predict_request(), timeout=GATE_TIMEOUT_SECONDS)
        servable.wait_entered()
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_request(), timeout=GATE_TIMEOUT_SECONDS)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Too many requests in flight (limit 1)" in info.value.details()
        servable.gate.set()
        assert tf.make_ndarray(first.result().outputs["y"]).tolist() == [[1.0, 1.0]]
        stub.Predict(predict_request(), timeout=GATE_TIMEOUT_SECONDS)  # still serving
    finally:
        channel.close()
        server.stop(0)


def test_grpc_oversized_message_is_resource_exhausted() -> None:
    server, channel = start_grpc(gated_dataplane(GatedServable(open_gate=True)))
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_request(MAX_MESSAGE_BYTES // 4 + 1), timeout=GATE_TIMEOUT_SECONDS)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Predict(predict_request(), timeout=GATE_TIMEOUT_SECONDS).outputs["y"]
    finally:
        channel.close()
        server.stop(0)


def start_rest(dataplane: Any, **settings: Any) -> RestServer:
    options = {"port": 0, "num_threads": 4, "max_body_bytes": MAX_MESSAGE_BYTES, **settings}
    server = RestServer(dataplane, None, RestSettings(**options), allow_insecure=True)
    server.start()
    return server


def test_rest_over_the_concurrency_limit_is_429(
    servable: GatedServable, pool: futures.ThreadPoolExecutor
) -> None:
    server = start_rest(gated_dataplane(servable, max_concurrent_requests=1))
    try:
        first = pool.submit(rest_call, server.port)
        servable.wait_entered()
        status, body = rest_call(server.port)
        assert status == 429
        assert body == {"error": "Too many requests in flight (limit 1); try again later"}
        servable.gate.set()
        assert first.result() == (200, {"predictions": [[1.0, 2.0]]})
        assert rest_call(server.port)[0] == 200
    finally:
        server.stop()


def test_rest_oversized_body_is_413() -> None:
    server = start_rest(gated_dataplane(GatedServable(open_gate=True)))
    try:
        big = json.dumps({"instances": [[1.0] * (MAX_MESSAGE_BYTES // 4)]}).encode()
        status, body = rest_call(server.port, body=big)
        assert (status, body) == (413, {"error": "request body too large"})
        assert rest_call(server.port)[0] == 200
    finally:
        server.stop()


def test_rest_deadline_is_504(servable: GatedServable) -> None:
    # The deadline passes while the servable is held at its gate, so no timing race is possible.
    server = start_rest(gated_dataplane(servable), request_timeout_seconds=0.05)
    try:
        status, body = rest_call(server.port)
        assert (status, body) == (504, {"error": "request timed out"})
        servable.gate.set()
        assert rest_call(server.port)[0] == 200
    finally:
        server.stop()


def test_stop_drains_in_flight_requests(
    tmp_path: Path, servable: GatedServable, pool: futures.ThreadPoolExecutor
) -> None:
    """What SIGTERM runs: new requests are refused, the running ones finish, then the ports close."""
    settings = ServerSettings(
        grpc=GrpcSettings(address="127.0.0.1:0"),
        rest=RestSettings(port=0, num_threads=2),
        file_system_poll_wait_seconds=-1,
        shutdown_grace_seconds=GATE_TIMEOUT_SECONDS,
    )
    models = (ModelConfig("m", str(gated_model_dir(tmp_path))),)
    server = ModelServer(
        models, PlainOpener(), None, settings, allow_insecure=True, loader=GatedLoader(servable)
    )
    server.start()
    assert server.rest is not None
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc.port}")
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        in_grpc = stub.Predict.future(predict_request(), timeout=GATE_TIMEOUT_SECONDS)
        in_rest = pool.submit(rest_call, server.rest.port)
        servable.wait_entered(2)
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        assert server.rest.draining.wait(GATE_TIMEOUT_SECONDS)
        assert rest_call(server.rest.port) == (503, {"error": "server is shutting down"})
        assert stopping.is_alive()  # waiting for the two requests at the gate
        servable.gate.set()
        assert in_rest.result() == (200, {"predictions": [[1.0, 2.0]]})
        assert tf.make_ndarray(in_grpc.result().outputs["y"]).tolist() == [[1.0, 1.0]]
        stopping.join(GATE_TIMEOUT_SECONDS)
        assert not stopping.is_alive()
    finally:
        channel.close()
        servable.gate.set()
        server.stop(0)
