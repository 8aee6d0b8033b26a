"""The batch scheduler end to end: concurrent DataPlane requests are merged into one model run."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent import futures
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from confserve.serving import (
    AspiredVersions,
    DataPlane,
    ModelManager,
    ModelUnavailableError,
    ServingError,
)
from confserve.serving.batching import BatchingLoader, BatchingServable, BatchingSettings
from tests.unit.serving.gated import GATE_TIMEOUT_SECONDS, signature


class Counting:
    """Records the batch size of every run; y = 2x. Raises for inputs containing -1."""

    def __init__(self) -> None:
        self.signature_defs = {"serving_default": signature()}
        self.batches: list[int] = []
        self.unloaded = False

    def run(
        self, signature_name: str, inputs: Mapping[str, Any], output_keys: Sequence[str]
    ) -> dict[str, Any]:
        x = inputs["x"]
        self.batches.append(int(x.shape[0]) if np.ndim(x) else 0)
        if (x == -1).any():
            raise ServingError("model execution failed (InvalidArgumentError)")
        return {"y": x * 2}


class Once:
    def __init__(self, servable: Counting) -> None:
        self.servable = servable

    def load(self, model: str, version: int, path: str) -> Counting:
        return self.servable

    def unload(self, servable: Counting) -> None:
        servable.unloaded = True


def dataplane(counting: Counting, settings: BatchingSettings) -> tuple[DataPlane, ModelManager[Any]]:
    manager: ModelManager[Any] = ModelManager(BatchingLoader(Once(counting), settings))
    manager.set_aspired_versions(AspiredVersions("m", {1: "/m/1"}))
    manager.reconcile()
    return DataPlane(manager), manager


def request(value: float, rows: int = 1) -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = "m"
    message.inputs["x"].CopyFrom(tf.make_tensor_proto(np.full((rows, 2), value, np.float32)))
    return message


def test_concurrent_requests_are_merged_into_one_run() -> None:
    counting = Counting()
    # A batch runs when full (4 rows); the timeout is far away, so the merge does not depend on timing.
    settings = BatchingSettings(max_batch_size=4, batch_timeout_micros=600_000_000, num_batch_threads=1)
    plane, manager = dataplane(counting, settings)
    with futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(plane.predict, [request(1), request(2), request(3, rows=2)]))
    assert counting.batches == [4]
    for value, rows, response in zip((1, 2, 3), (1, 1, 2), results, strict=True):
        y = tf.make_ndarray(response.outputs["y"])
        np.testing.assert_array_equal(y, np.full((rows, 2), 2.0 * value, np.float32))
    manager.set_aspired_versions(AspiredVersions("m", {}))
    manager.reconcile()
    assert counting.unloaded


def test_a_failing_batch_fails_each_of_its_requests_and_the_server_goes_on() -> None:
    counting = Counting()
    settings = BatchingSettings(max_batch_size=2, batch_timeout_micros=600_000_000, num_batch_threads=2)
    plane, _ = dataplane(counting, settings)
    with futures.ThreadPoolExecutor(2) as pool:
        outcomes = [pool.submit(plane.predict, request(v)) for v in (-1, 5)]
        errors = [f.exception(GATE_TIMEOUT_SECONDS) for f in outcomes]
    assert all(isinstance(e, ServingError) and "InvalidArgumentError" in str(e) for e in errors)
    assert errors[0] is not errors[1]
    with futures.ThreadPoolExecutor(2) as pool:
        ok = list(pool.map(plane.predict, [request(1), request(1)]))
    assert len(ok) == 2
    assert counting.batches == [2, 2]


def test_timeout_zero_runs_at_once_and_close_drains() -> None:
    counting = Counting()
    settings = BatchingSettings(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1)
    plane, manager = dataplane(counting, settings)
    response = plane.predict(request(4))
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), [[8.0, 8.0]])
    assert counting.batches == [1]
    manager.set_aspired_versions(AspiredVersions("m", {}))
    manager.reconcile()
    with pytest.raises(ServingError):
        plane.predict(request(1))


def test_close_runs_what_is_queued_then_refuses() -> None:
    counting = Counting()
    settings = BatchingSettings(max_batch_size=4, batch_timeout_micros=600_000_000, num_batch_threads=1)
    queued = threading.Event()

    def clock() -> float:
        if threading.current_thread().name == "caller":
            queued.set()  # `run` reads the clock under the queue lock, right before queueing
        return 0.0

    servable = BatchingServable(counting, settings, clock=clock)
    x = np.ones((1, 2), np.float32)
    result: list[Any] = []
    caller = threading.Thread(target=lambda: result.append(servable.run("s", {"x": x}, ["y"])), name="caller")
    caller.start()
    assert queued.wait(GATE_TIMEOUT_SECONDS)
    servable.close()  # the half-full batch still runs
    caller.join(GATE_TIMEOUT_SECONDS)
    np.testing.assert_array_equal(result[0]["y"], x * 2)
    assert counting.batches == [1]
    with pytest.raises(ModelUnavailableError, match="unloading"):
        servable.run("s", {"x": x}, ["y"])
    assert servable.run("s", {"x": np.float32(1)}, ["y"])["y"] == 2  # scalars bypass the queue


def test_a_lone_request_does_not_wait_for_the_batch_timeout() -> None:
    """Adaptive closing: with a 100 s timeout and a clock that never moves, a request runs at once when it
    is the only one in flight, and two concurrent ones run together once both have joined."""
    counting = Counting()
    settings = BatchingSettings(max_batch_size=8, batch_timeout_micros=100_000_000, num_batch_threads=1)
    in_flight = [1]
    servable = BatchingServable(counting, settings, clock=lambda: 0.0, in_flight=lambda: in_flight[0])
    x = np.ones((1, 2), np.float32)
    try:
        with futures.ThreadPoolExecutor(2) as pool:
            alone = pool.submit(servable.run, "serving_default", {"x": x}, ["y"])
            assert alone.result(GATE_TIMEOUT_SECONDS)["y"].tolist() == [[2.0, 2.0]]
            in_flight[0] = 2
            first = pool.submit(servable.run, "serving_default", {"x": x}, ["y"])
            second = pool.submit(servable.run, "serving_default", {"x": x * 3}, ["y"])
            assert second.result(GATE_TIMEOUT_SECONDS)["y"].tolist() == [[6.0, 6.0]]
            assert first.result(GATE_TIMEOUT_SECONDS)["y"].tolist() == [[2.0, 2.0]]
        assert counting.batches == [1, 2]
    finally:
        servable.close()


def test_a_request_waits_while_others_in_flight_may_join() -> None:
    """Without adaptive closing's condition (a request in flight has not joined), the timeout rules: the
    batch runs only when the clock passes it."""
    counting = Counting()
    settings = BatchingSettings(max_batch_size=8, batch_timeout_micros=1_000_000, num_batch_threads=1)
    now = [0.0]
    servable = BatchingServable(counting, settings, clock=lambda: now[0], in_flight=lambda: 2)
    try:
        with futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(servable.run, "serving_default", {"x": np.ones((1, 2), np.float32)}, ["y"])
            with pytest.raises(futures.TimeoutError):
                waiting.result(0.2)
            assert counting.batches == []
            now[0] = 1.0
            with servable._changed:  # wake the batch thread, as a new task would
                servable._changed.notify_all()
            assert waiting.result(GATE_TIMEOUT_SECONDS)["y"].tolist() == [[2.0, 2.0]]
        assert counting.batches == [1]
    finally:
        servable.close()
