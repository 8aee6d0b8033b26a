"""TF Serving's request metrics, recorded once in the DataPlane (injected clock, no sleeps)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.utils import floatToGoString
from tensorflow_serving.apis import inference_pb2, predict_pb2

from confserve.serving import GRPC, REST, ServingError, ServingMetrics
from tests.unit.serving.gated import GatedServable, gated_dataplane

COUNT = ":tensorflow:serving:request_count"
LATENCY = ":tensorflow:serving:request_latency"


def predict(model: str = "m", alias: str = "x") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(np.ones((1, 2), np.float32)))
    return request


def ticking(step_seconds: float) -> Iterator[float]:
    now = 0.0
    while True:
        yield now
        now += step_seconds


def test_counts_per_model_status_and_entrypoint() -> None:
    metrics = ServingMetrics()
    clock = ticking(0.002)  # every request takes 2 ms by this clock
    dataplane = gated_dataplane(GatedServable(open_gate=True), metrics=metrics, clock=lambda: next(clock))
    dataplane.predict(predict(), entrypoint=GRPC)
    dataplane.predict(predict(), entrypoint=REST)
    dataplane.predict(predict())
    for bad in (predict("nope"), predict(alias="z")):
        with pytest.raises(ServingError):
            dataplane.predict(bad, entrypoint=REST)
    with pytest.raises(ServingError):
        dataplane.multi_inference(inference_pb2.MultiInferenceRequest())
    value = metrics.registry.get_sample_value
    assert value(COUNT, {"model_name": "m", "status": "OK"}) == 3
    assert value(COUNT, {"model_name": "m", "status": "INVALID_ARGUMENT"}) == 1
    # Names no model has are not labels: a client cannot grow the registry.
    assert value(COUNT, {"model_name": "", "status": "NOT_FOUND"}) == 1
    assert value(COUNT, {"model_name": "nope", "status": "NOT_FOUND"}) is None
    assert value(COUNT, {"model_name": "", "status": "INVALID_ARGUMENT"}) == 1  # empty MultiInference
    grpc_labels = {"model_name": "m", "API": "Predict", "entrypoint": "GRPC"}
    rest_labels = {"model_name": "m", "API": "Predict", "entrypoint": "REST"}
    assert value(LATENCY + "_count", grpc_labels) == 2
    assert value(LATENCY + "_count", rest_labels) == 2
    assert value(LATENCY + "_sum", grpc_labels) == pytest.approx(4000.0)  # microseconds
    below, above = (floatToGoString(10 * 1.8**i) for i in (9, 10))  # 1983.6 µs < 2000 µs < 3570.5 µs
    assert value(LATENCY + "_bucket", {**grpc_labels, "le": below}) == 0
    assert value(LATENCY + "_bucket", {**grpc_labels, "le": above}) == 2
    text = metrics.exposition().decode()
    assert '\n:tensorflow:serving:request_count{model_name="m",status="OK"} 3.0\n' in text
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text


def test_refused_requests_are_counted_as_resource_exhausted() -> None:
    metrics = ServingMetrics()
    servable = GatedServable()
    dataplane = gated_dataplane(servable, metrics=metrics, max_concurrent_requests=1)
    first = threading.Thread(target=dataplane.predict, args=(predict(),))
    first.start()
    servable.wait_entered()
    with pytest.raises(ServingError):
        dataplane.predict(predict())
    servable.gate.set()
    first.join()
    value = metrics.registry.get_sample_value
    assert value(COUNT, {"model_name": "m", "status": "RESOURCE_EXHAUSTED"}) == 1
    assert value(COUNT, {"model_name": "m", "status": "OK"}) == 1


def test_no_metrics_without_a_registry() -> None:
    dataplane = gated_dataplane(GatedServable(open_gate=True))
    assert dataplane.predict(predict()).outputs["y"]
