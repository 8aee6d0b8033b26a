"""The request memory budget: charges before allocation, per-request and in-flight limits, release, and
the DataPlane charging each input's decoded size (broadcast fill included) before decoding it."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, predict_pb2

from confserve.errors import Status
from confserve.serving import (
    MemoryBudget,
    MemoryLimits,
    RequestTooLargeError,
    ResourceExhaustedError,
    ServingError,
    _memory,
    default_memory_limits,
    replica_memory_bytes,
    trim_heap,
)
from confserve.tensor_proto import decoded_nbytes
from tests.unit.serving.gated import GatedServable, gated_dataplane
from tests.unit.serving.models import make_dataplane

MiB = 1024 * 1024


def test_per_request_limit_is_invalid_argument_and_names_sizes_only() -> None:
    budget = MemoryBudget(MemoryLimits(per_request_bytes=100, in_flight_bytes=1000))
    with budget.request() as memory:
        memory.charge(60, "input 'x'")
        with pytest.raises(RequestTooLargeError) as info:
            memory.charge(41, "input 'y'")
        assert info.value.status is Status.INVALID_ARGUMENT
        assert str(info.value) == (
            "input 'y' needs 41 bytes of memory; this request would hold 101 bytes, "
            "above the per-request limit of 100 bytes"
        )
        assert memory.charged == 60
        assert budget.in_flight_bytes == 60
        memory.charge(40, "input 'y'")  # exactly the limit fits
    assert budget.in_flight_bytes == 0


def test_in_flight_limit_is_resource_exhausted_and_released_on_close() -> None:
    budget = MemoryBudget(MemoryLimits(per_request_bytes=100, in_flight_bytes=150))
    first = budget.request()
    first.charge(100, "the request body")
    with budget.request() as second:
        with pytest.raises(ResourceExhaustedError, match=r"requests in flight hold 100 of 150 bytes") as info:
            second.charge(51, "input 'x'")
        assert info.value.status is Status.RESOURCE_EXHAUSTED
        second.charge(50, "input 'x'")
        assert budget.in_flight_bytes == 150
    first.close()
    first.close()  # idempotent
    assert budget.in_flight_bytes == 0
    with budget.request() as third:
        third.charge(100, "input 'x'")  # room again


def test_unlimited_budget_counts_and_negative_charges_are_refused() -> None:
    budget = MemoryBudget()
    with budget.request() as memory:
        memory.charge(10**15, "input 'x'")
        assert budget.in_flight_bytes == 10**15
        with pytest.raises(ValueError, match="negative"):
            memory.charge(-1, "input 'x'")
    assert budget.in_flight_bytes == 0


def test_concurrent_charges_never_exceed_the_in_flight_limit() -> None:
    budget = MemoryBudget(MemoryLimits(per_request_bytes=10, in_flight_bytes=35))
    start = threading.Barrier(8)
    outcomes: list[int] = []  # in-flight bytes seen by an admitted request, or -1 for a refusal
    hold = threading.Event()
    decided = threading.Condition()

    def request() -> None:
        with budget.request() as memory:
            start.wait()
            try:
                memory.charge(10, "input 'x'")
                seen = budget.in_flight_bytes
            except ResourceExhaustedError:
                seen = -1
            with decided:
                outcomes.append(seen)
                decided.notify_all()
            if seen >= 0:
                hold.wait(30)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    with decided:
        assert decided.wait_for(lambda: len(outcomes) == 8, 30)
    hold.set()
    for thread in threads:
        thread.join(30)
    admitted = [seen for seen in outcomes if seen >= 0]
    assert len(admitted) == 3
    assert max(admitted) <= 35
    assert budget.in_flight_bytes == 0


def test_default_limits_come_from_memory_and_message_size() -> None:
    eight_gib = 8 * 1024 * MiB
    limits = default_memory_limits(64 * MiB, memory_bytes=eight_gib)
    assert limits == MemoryLimits(per_request_bytes=128 * MiB, in_flight_bytes=1024 * MiB)
    small = default_memory_limits(64 * MiB, memory_bytes=1024 * MiB)  # a quarter of the in-flight total
    assert small == MemoryLimits(per_request_bytes=32 * MiB, in_flight_bytes=128 * MiB)
    given = default_memory_limits(64 * MiB, per_request_bytes=5, in_flight_bytes=7)
    assert given == MemoryLimits(5, 7)
    assert default_memory_limits(64 * MiB, in_flight_bytes=40).per_request_bytes == 10
    with pytest.raises(ValueError, match="positive"):
        MemoryLimits(0, 1)


def test_replica_memory_is_physical_memory_or_a_lower_cgroup_limit(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    physical = replica_memory_bytes()
    assert physical > 0
    limit = tmp_path / "memory.max"
    limit.write_text(f"{512 * MiB}\n")
    unlimited = tmp_path / "v1"
    unlimited.write_text("9223372036854771712\n")  # cgroup v1's "no limit"
    monkeypatch.setattr(_memory, "_CGROUP_LIMITS", (tmp_path / "absent", unlimited, limit))
    assert replica_memory_bytes() == min(physical, 512 * MiB)
    limit.write_text("max\n")  # cgroup v2's "no limit"
    assert replica_memory_bytes() == physical


def test_heap_trim_runs_after_a_large_request() -> None:
    assert trim_heap() is True  # glibc on the machines this project targets
    trims: list[int] = []
    scheduled: list[tuple[float, Any]] = []
    budget = MemoryBudget(
        trim=lambda: trims.append(1), later=lambda delay, action: scheduled.append((delay, action))
    )
    with budget.request() as small:
        small.charge(_memory.TRIM_AFTER_BYTES - 1, "input 'x'")
    assert scheduled == []
    for _ in range(3):  # a burst of large requests: one trim, a moment after
        with budget.request() as large:
            large.charge(_memory.TRIM_AFTER_BYTES, "input 'x'")
    assert [delay for delay, _ in scheduled] == [_memory.TRIM_DELAY_SECONDS]
    assert trims == []
    scheduled.pop()[1]()
    assert trims == [1]
    with budget.request() as large:
        large.charge(_memory.TRIM_AFTER_BYTES, "input 'x'")
    assert len(scheduled) == 1  # a later one trims again
    scheduled.pop()[1]()
    assert trims == [1, 1]


# -- decoded sizes ---------------------------------------------------------------------------------------


def broadcast(shape: tuple[int, ...], dtype: Any = tf.float32, value: Any = 0.5) -> Any:
    proto = tf.make_tensor_proto(value, dtype=dtype)
    proto.tensor_shape.Clear()
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def test_decoded_size_counts_broadcast_fill_and_strings() -> None:
    f1 = broadcast((1048576, 8, 8, 1))
    assert f1.ByteSize() < 64  # the 49-byte request's tensor
    assert decoded_nbytes(f1) == 256 * MiB
    assert decoded_nbytes(tf.make_tensor_proto(np.zeros((3, 5), np.float64))) == 120  # tensor_content
    strings = broadcast((4,), tf.string, [b"ab", b"xyz"])
    strings.string_val[:] = [b"ab", b"xyz"]
    assert decoded_nbytes(strings) == 2 + 3 * 3 + 4 * 64  # the last value fills the other two
    unknown = broadcast((2,))
    unknown.tensor_shape.unknown_rank = True
    assert decoded_nbytes(unknown) == 0


# -- the DataPlane charges before decoding ----------------------------------------------------------------


def f1_request(model: str = "m", alias: str = "x") -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[alias].CopyFrom(broadcast((1048576, 8, 8, 1)))
    return request


def test_broadcast_request_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    servable = GatedServable(open_gate=True)
    dataplane = gated_dataplane(servable, memory_limits=MemoryLimits(128 * MiB, 1024 * MiB))
    allocations: list[int] = []
    real_empty = np.empty

    def watched_empty(shape: Any, *args: Any, **kwargs: Any) -> Any:
        allocations.append(int(np.prod(shape)))
        return real_empty(shape, *args, **kwargs)

    monkeypatch.setattr(np, "empty", watched_empty)
    with pytest.raises(ServingError) as info:
        dataplane.predict(f1_request())
    assert info.value.status is Status.INVALID_ARGUMENT
    assert str(info.value) == (
        "input 'x' needs 268435456 bytes of memory; this request would hold 268435456 bytes, "
        "above the per-request limit of 134217728 bytes"
    )
    assert allocations == []
    assert servable.calls == 0
    assert dataplane.memory.in_flight_bytes == 0


def test_in_flight_total_is_shared_by_concurrent_requests() -> None:
    servable = GatedServable()
    dataplane = gated_dataplane(servable, memory_limits=MemoryLimits(4096, 6000))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 1000), np.float32)))  # 4000 bytes
    first = threading.Thread(target=dataplane.predict, args=(request,))
    first.start()
    try:
        servable.wait_entered()
        assert dataplane.memory.in_flight_bytes == 4000
        with pytest.raises(ResourceExhaustedError, match="requests in flight hold 4000 of 6000 bytes"):
            dataplane.predict(request)
    finally:
        servable.gate.set()
        first.join(30)
    assert dataplane.memory.in_flight_bytes == 0
    assert dataplane.predict(request).outputs["y"].ByteSize() > 0  # room again


@pytest.fixture(scope="module")
def clf_dataplane(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_dataplane(tmp_path_factory.mktemp("served"))


def test_examples_are_charged_with_the_context_once_per_example(clf_dataplane: Any) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "clf"
    request.model_spec.signature_name = "classify"
    with_context = request.input.example_list_with_context
    with_context.context.features.feature["pad"].bytes_list.value.append(b"p" * 100_000)
    for _ in range(2000):
        with_context.examples.add().features.feature["x"].float_list.value.extend([1, 2, 3, 4])
    budget = clf_dataplane.memory
    budget.limits = MemoryLimits(per_request_bytes=64 * MiB, in_flight_bytes=1024 * MiB)
    try:
        with pytest.raises(ServingError, match=r"the serialized examples needs \d+ bytes") as info:
            clf_dataplane.classify(request)
        assert info.value.status is Status.INVALID_ARGUMENT  # 2000 x 100 kB would be 200 MB
    finally:
        budget.limits = None
