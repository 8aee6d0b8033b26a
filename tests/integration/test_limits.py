"""Limits, deadlines and draining on real loopback servers, with a gated servable (no sleeps)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
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

from confserve.frontends import PLAINTEXT, ModelServer, ServerSettings
from confserve.frontends.grpc import GrpcServer, GrpcSettings
from confserve.frontends.rest import RestServer, RestSettings
from confserve.serving import MemoryLimits, ModelConfig, PlainOpener
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
        PLAINTEXT,
        GrpcSettings(address="127.0.0.1:0", max_message_bytes=MAX_MESSAGE_BYTES),
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
    server = RestServer(dataplane, PLAINTEXT, RestSettings(**options))
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
    server = ModelServer(models, PlainOpener(), PLAINTEXT, settings, loader=GatedLoader(servable))
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


# -- request memory (issue 13, F1 and F7) ------------------------------------------------------------------

MiB = 1024 * 1024


def memory_limited_servers(servable: GatedServable, limits: MemoryLimits) -> tuple[GrpcServer, RestServer]:
    dataplane = gated_dataplane(servable, memory_limits=limits)
    settings = GrpcSettings(address="127.0.0.1:0", max_message_bytes=4 * MiB)  # echoes a 1 MB input
    grpc_server = GrpcServer(dataplane, PLAINTEXT, settings)
    grpc_server.start()
    return grpc_server, start_rest(dataplane, max_body_bytes=4 * MiB)


def broadcast_request(elements: int) -> predict_pb2.PredictRequest:
    """A few bytes that decode to `elements` floats: one value and the shape [1, elements]."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    tensor = request.inputs["x"]
    tensor.dtype = tf.float32.as_datatype_enum
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=elements)
    tensor.float_val.append(0.25)
    return request


def test_in_flight_memory_is_shared_by_concurrent_large_requests(
    servable: GatedServable, pool: futures.ThreadPoolExecutor
) -> None:
    """While one request holding 1 MB of decoded input waits at the gate, another large one, over gRPC or
    REST, is refused with RESOURCE_EXHAUSTED / 429 (the in-flight total is 1.25 MiB); small ones still
    run, and once the first has finished the large ones fit again."""
    limits = MemoryLimits(per_request_bytes=MiB, in_flight_bytes=MiB + MiB // 4)
    grpc_server, rest_server = memory_limited_servers(servable, limits)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_server.port}")
    big = broadcast_request(250_000)  # 1,000,000 bytes decoded
    body = json.dumps({"instances": [[0.25] * 40_000]}).encode()  # 240 kB of text, parsed as numbers
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        first = stub.Predict.future(big, timeout=GATE_TIMEOUT_SECONDS)
        servable.wait_entered()
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(big, timeout=GATE_TIMEOUT_SECONDS)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details() == (
            "input 'x' needs 1000000 bytes of memory; requests in flight hold 1000000 of 1310720 bytes; "
            "try again later"
        )
        status, answer = rest_call(rest_server.port, body=body)
        assert status == 429
        assert "requests in flight hold" in answer["error"]
        assert "0.25" not in answer["error"]
        small = pool.submit(stub.Predict, predict_request(), timeout=GATE_TIMEOUT_SECONDS)
        servable.wait_entered()  # a small request still fits beside the large one
        servable.gate.set()
        assert small.result().outputs["y"]
        assert first.result().outputs["y"].ByteSize() >= 1_000_000
        assert stub.Predict(big, timeout=GATE_TIMEOUT_SECONDS)  # released: room again
        assert rest_call(rest_server.port, body=body)[0] == 200
        assert servable.calls == 4  # the refused ones never reached the model
    finally:
        channel.close()
        grpc_server.stop(0)
        rest_server.stop()


def test_request_over_the_per_request_memory_limit_is_invalid_argument_and_400() -> None:
    servable = GatedServable(open_gate=True)
    limits = MemoryLimits(per_request_bytes=32 * 1024, in_flight_bytes=1024 * 1024)
    grpc_server, rest_server = memory_limited_servers(servable, limits)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_server.port}")
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_request(10_000), timeout=GATE_TIMEOUT_SECONDS)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "above the per-request limit of 32768 bytes" in info.value.details()
        body = json.dumps({"instances": [[0.75] * 10_000]}).encode()
        status, answer = rest_call(rest_server.port, body=body)
        assert status == 400
        assert answer["error"].startswith("the request body needs 60")
        assert "above the per-request limit of 32768 bytes" in answer["error"]
        assert servable.calls == 0
    finally:
        channel.close()
        grpc_server.stop(0)
        rest_server.stop()


class Replica:
    """`confserve serve` in its own process (plaintext; the clf test model and the digits CNN), for memory
    measurements."""

    def __init__(self, workdir: Path, *flags: str) -> None:
        from confserve.owner._models import make_digits_model
        from tests.unit.serving.models import make_served_tree

        config = make_served_tree(workdir / "models")
        make_digits_model(workdir / "models" / "digits", epochs=1)
        digits = f'config {{ name: "digits" base_path: "{workdir / "models" / "digits"}" }}\n}}'
        (workdir / "models.config").write_text(config.rstrip().removesuffix("}") + digits)
        ports = []
        for _ in range(2):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                ports.append(probe.getsockname()[1])
        self.grpc_port, self.rest_port = ports
        command = [
            sys.executable,
            "-c",
            "from confserve.cli import main; main()",
            "serve",
            "--host=127.0.0.1",
            "--model_config_file=models.config",
            f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}",
            "--insecure",
            "--allow_plaintext",
            "--file_system_poll_wait_seconds=-1",
            *flags,
        ]
        self.log = workdir / "replica.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        try:
            grpc.channel_ready_future(self.channel).result(timeout=120)
        except grpc.FutureTimeoutError:
            self.stop()
            raise AssertionError(f"replica did not start:\n{self.log.read_text()[-3000:]}") from None
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def memory_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM): resident memory now, and the peak so far."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
        return fields["VmRSS"], fields["VmHWM"]

    def settled_resident_mib(self, window_seconds: float = 2.0) -> float:
        """The lowest resident memory seen over a short window: the replica trims its heap a moment after
        a large request (serving/_memory.py), so a single reading may precede the trim."""
        lowest = self.memory_mib()[0]
        stop = threading.Event()
        for _ in range(int(window_seconds / 0.05)):
            stop.wait(0.05)
            lowest = min(lowest, self.memory_mib()[0])
        return lowest

    def predict_ok(self) -> None:
        request = predict_request()
        request.model_spec.name = "clf"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 4), np.float32)))
        assert self.stub.Predict(request, timeout=60).outputs["probabilities"]

    def stop(self) -> None:
        self.channel.close()
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    server = Replica(tmp_path_factory.mktemp("replica"), "--rest_api_timeout_in_ms=600000")
    try:
        yield server
    finally:
        server.stop()


def test_f1_broadcast_request_is_refused_before_the_replica_allocates(replica: Replica) -> None:
    """F1: 49 bytes asking TensorFlow for a [1048576, 8, 8, 1] float tensor (256 MiB decoded, gigabytes
    inside a model) is refused by the default limits; the replica's peak memory barely moves."""
    replica.predict_ok()
    _, peak_before = replica.memory_mib()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "clf"
    tensor = request.inputs["x"]
    tensor.dtype = tf.float32.as_datatype_enum
    for size in (1048576, 8, 8, 1):
        tensor.tensor_shape.dim.add(size=size)
    tensor.float_val.append(0.123456789)
    assert request.ByteSize() <= 49
    with pytest.raises(grpc.RpcError) as info:
        replica.stub.Predict(request, timeout=60)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert details.startswith("input 'x' needs 268435456 bytes of memory")
    assert "above the per-request limit of" in details
    assert "0.123" not in details  # sizes and limits only, never a value
    _, peak_after = replica.memory_mib()
    assert peak_after - peak_before < 64  # MiB; unrefused it took gigabytes
    replica.predict_ok()


def post(replica: Replica, path: str, body: bytes) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", replica.rest_port, timeout=600)
    try:
        connection.request("POST", path, body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_f7_large_rest_body_memory_is_bounded_and_returned(replica: Replica) -> None:
    """F7: a valid REST body of over 16 MiB (20,000 digits images of 8x8x1 floats in the row format).

    Parsing: its numbers go straight into one array, instead of an object per number and a list per
    pixel (about 130 MB for this body with Python's parser); measured alone (the same body naming a
    signature the model lacks is parsed whole, then refused), the peak grows by about twice the body.
    Serving it: the model's own intermediate tensors come on top, but repeating the request does not grow
    the replica: what a request used is returned or reused (before, each such request added hundreds of
    megabytes and timed out)."""
    images = np.random.default_rng(7).random((20_000, 8, 8, 1))
    text = json.dumps(images.tolist())
    body = f'{{"instances": {text}}}'.encode()
    unknown_signature = f'{{"signature_name": "none", "instances": {text}}}'.encode()
    del text
    body_mib = len(body) / MiB
    assert 16 < body_mib < 40
    replica.predict_ok()
    resident_before, peak_before = replica.memory_mib()
    status, answer = post(replica, "/v1/models/digits:predict", unknown_signature)
    assert (status, answer) == (400, {"error": 'Serving signature name: "none" not found in signature def'})
    _, peak_parsing = replica.memory_mib()
    assert peak_parsing - peak_before < 3 * body_mib, (peak_before, peak_parsing, body_mib)
    resident_after = []
    for _ in range(4):
        status, answer = post(replica, "/v1/models/digits:predict", body)
        assert status == 200, answer
        assert len(answer["predictions"]) == 20_000
        resident_after.append(replica.settled_resident_mib())
    # TensorFlow's oneDNN kernels keep buffers sized for the largest batch seen (about 7x this body for
    # the digits CNN at 20,000 images); Python's parser alone used to leave about as much per request.
    assert max(resident_after) - resident_before < 12 * body_mib, (resident_before, resident_after)
    # Once warm (two requests: TensorFlow's threads each size their buffers), two more requests add less
    # than twice the body (before: hundreds of megabytes each). Not less than once the body: a request that
    # lands on a REST worker thread which has not served one before gets a fresh malloc arena, which
    # was seen to add about one body's size (28 MiB for this 27.5 MiB body) when the machine was busy.
    assert resident_after[-1] - resident_after[1] < 2 * body_mib, resident_after
