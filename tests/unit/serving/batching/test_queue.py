"""Batching core without threads: queueing by an injected clock, merge, padding and split."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from confserve.errors import Status
from confserve.serving import ConfigError, ServingError
from confserve.serving.batching import (
    BatchingSettings,
    BatchQueue,
    batching_settings_from_proto,
    make_task,
    merge,
    padded_size,
    split,
)
from confserve.tfs_config import BatchingParameters, parse_text


def task(rows: int, settings: BatchingSettings, *, width: int = 2, signature: str = "s") -> Any:
    x = np.arange(rows * width, dtype=np.float32).reshape(rows, width) + 100 * rows
    made = make_task(signature, {"x": x}, ["y"], settings)
    assert made is not None
    return made


def test_settings_from_text_proto_and_defaults() -> None:
    params = parse_text(
        BatchingParameters,
        "max_batch_size { value: 8 } batch_timeout_micros { value: 500 } "
        "allowed_batch_sizes: 2 allowed_batch_sizes: 8 pad_variable_length_inputs: true",
        what="test",
    )
    settings = batching_settings_from_proto(params)
    assert settings.max_batch_size == 8
    assert settings.batch_timeout_seconds == pytest.approx(0.0005)
    assert settings.max_enqueued_batches == 10  # TF Serving's default
    assert settings.allowed_batch_sizes == (2, 8)
    assert settings.pad_variable_length_inputs


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be positive"),
        ({"batch_timeout_micros": -1}, "must not be negative"),
        ({"max_batch_size": 8, "allowed_batch_sizes": (4, 2, 8)}, "increasing"),
        ({"max_batch_size": 8, "allowed_batch_sizes": (2, 4)}, "must equal max_batch_size"),
    ],
)
def test_settings_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BatchingSettings(**options)


def test_batches_fill_then_close_and_time_out_by_the_clock() -> None:
    settings = BatchingSettings(max_batch_size=4, batch_timeout_micros=1000, max_enqueued_batches=2)
    queue = BatchQueue(settings)
    queue.add(task(1, settings), now=10.0)
    queue.add(task(2, settings), now=10.0)
    assert queue.pop_ready(10.0) is None  # 3 of 4 rows, timeout not reached
    assert queue.next_deadline() == pytest.approx(10.001)
    assert queue.pop_ready(10.001) is not None  # timed out
    queue.add(task(3, settings), now=20.0)
    queue.add(task(2, settings), now=20.0)  # does not fit: the first batch closes, a second opens
    first = queue.pop_ready(20.0)
    assert first is not None
    assert first.size == 3
    assert queue.pop_ready(20.0) is None
    queue.add(task(2, settings), now=20.0)  # fills the second batch exactly
    full = queue.pop_ready(20.0)
    assert full is not None
    assert [t.size for t in full.tasks] == [2, 2]
    assert len(queue) == 0
    assert queue.next_deadline() is None


def test_only_compatible_tasks_merge_and_the_queue_is_bounded() -> None:
    settings = BatchingSettings(max_batch_size=4, batch_timeout_micros=1000, max_enqueued_batches=2)
    queue = BatchQueue(settings)
    queue.add(task(1, settings), now=0.0)
    queue.add(task(1, settings, width=3), now=0.0)  # other inner shape: its own batch
    with pytest.raises(ServingError, match="queue to which this task was submitted is full") as info:
        queue.add(task(1, settings, signature="other"), now=0.0)
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    assert queue.pop_any() is not None
    assert queue.pop_any() is not None
    assert queue.pop_any() is None


def test_task_validation() -> None:
    settings = BatchingSettings(max_batch_size=4)
    assert make_task("s", {"x": np.float32(1.0)}, ["y"], settings) is None  # scalars run alone
    assert make_task("s", {}, ["y"], settings) is None
    with pytest.raises(ServingError, match="equal 0th-dimension size"):
        make_task("s", {"a": np.zeros((1, 2)), "b": np.zeros((2, 2))}, ["y"], settings)
    with pytest.raises(ServingError, match="Task size 5 is larger than maximum input batch size 4"):
        make_task("s", {"a": np.zeros((5, 2))}, ["y"], settings)


def test_merge_pads_to_allowed_sizes_and_split_drops_the_padding() -> None:
    settings = BatchingSettings(max_batch_size=8, batch_timeout_micros=0, allowed_batch_sizes=(2, 4, 8))
    assert [padded_size(n, settings) for n in (1, 2, 3, 5, 8)] == [2, 2, 4, 8, 8]
    queue = BatchQueue(settings)
    a, b = task(1, settings), task(2, settings)
    queue.add(a, 0.0)
    queue.add(b, 0.0)
    batch = queue.pop_ready(0.0)
    assert batch is not None
    inputs, total = merge(batch, settings)
    assert total == 4
    x = inputs["x"]
    assert x.shape == (4, 2)
    np.testing.assert_array_equal(x[:1], a.inputs["x"])
    np.testing.assert_array_equal(x[1:3], b.inputs["x"])
    np.testing.assert_array_equal(x[3], x[0])  # padding repeats the first row
    parts = split(batch, {"y": x * 2}, total)
    np.testing.assert_array_equal(parts[0]["y"], a.inputs["x"] * 2)
    np.testing.assert_array_equal(parts[1]["y"], b.inputs["x"] * 2)
    with pytest.raises(ServingError, match="does not have the batch size 4"):
        split(batch, {"y": x[:3]}, total)


def test_variable_length_inputs_are_padded_with_the_first_element() -> None:
    settings = BatchingSettings(max_batch_size=8, pad_variable_length_inputs=True)
    short = make_task("s", {"t": np.array([[7, 8]], np.int32)}, ["y"], settings)
    long = make_task("s", {"t": np.array([[1, 2, 3]], np.int32)}, ["y"], settings)
    assert short is not None
    assert long is not None
    assert short.merge_key == long.merge_key
    queue = BatchQueue(settings)
    queue.add(short, 0.0)
    queue.add(long, 0.0)
    batch = queue.pop_ready(0.0)
    assert batch is not None
    inputs, total = merge(batch, settings)
    assert total == 2
    np.testing.assert_array_equal(inputs["t"], [[7, 8, 7], [1, 2, 3]])


def test_a_batch_closes_at_once_when_no_one_else_can_join() -> None:
    """Adaptive closing: when the caller says no request outside the queue could join, the oldest batch
    is handed out without waiting for its timeout; otherwise the timeout still rules."""
    settings = BatchingSettings(max_batch_size=8, batch_timeout_micros=10_000_000)
    queue = BatchQueue(settings)
    queue.add(task(1, settings), now=0.0)
    queue.add(task(2, settings), now=0.0)
    assert queue.tasks == 2
    assert queue.pop_ready(0.0) is None
    assert queue.pop_ready(0.0, others_coming=True) is None
    batch = queue.pop_ready(0.0, others_coming=False)
    assert batch is not None
    assert [t.size for t in batch.tasks] == [1, 2]
    assert queue.tasks == 0
    assert queue.pop_ready(0.0, others_coming=False) is None  # nothing queued
