"""Admission control: the shared concurrency limit of the DataPlane and the drain wait."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

from confserve.errors import Status
from confserve.serving import Admission, ResourceExhaustedError
from tests.unit.serving.gated import GatedServable, gated_dataplane


def test_admission_refuses_beyond_the_limit_without_blocking() -> None:
    admission = Admission(2)
    with admission.admit(), admission.admit():
        assert admission.in_flight == 2
        too_many = r"Too many requests in flight \(limit 2\)"
        with pytest.raises(ResourceExhaustedError, match=too_many) as info, admission.admit():
            pass  # pragma: no cover
        assert info.value.status is Status.RESOURCE_EXHAUSTED
        assert admission.in_flight == 2
    assert admission.in_flight == 0
    with admission.admit():  # room again
        pass


def test_admission_releases_on_error_and_counts_without_limit() -> None:
    admission = Admission()
    with pytest.raises(KeyError), admission.admit():
        raise KeyError("x")
    assert admission.in_flight == 0
    assert admission.wait_idle(0)
    with pytest.raises(ValueError, match="at least 1"):
        Admission(0)


def test_wait_idle_returns_when_the_last_request_ends() -> None:
    admission = Admission()
    inside = threading.Event()
    leave = threading.Event()

    def request() -> None:
        with admission.admit():
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=request)
    thread.start()
    assert inside.wait(30)
    assert not admission.wait_idle(0)  # still running
    leave.set()
    assert admission.wait_idle(30)
    thread.join()


def predict() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 2), np.float32)))
    return request


def test_dataplane_limit_is_shared_and_status_is_not_counted() -> None:
    servable = GatedServable()
    dataplane = gated_dataplane(servable, max_concurrent_requests=1)
    first = threading.Thread(target=dataplane.predict, args=(predict(),))
    first.start()
    servable.wait_entered()
    with pytest.raises(ResourceExhaustedError):
        dataplane.predict(predict())
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "m"
    assert dataplane.get_model_status(status).model_version_status[0].state == 30  # probes still answer
    servable.gate.set()
    first.join()
    assert dataplane.admission.in_flight == 0
    assert tf.make_ndarray(dataplane.predict(predict()).outputs["y"]).shape == (1, 2)
