"""The batching core, without threads or clocks: tasks in, ready batches out; merging and splitting.

Theory of operation (after TF Serving's BasicBatchScheduler and batching_session.cc):

- A `Task` is one request's `run` call: input arrays sharing dimension 0 (its size), a signature and the
  outputs it wants. Tasks merge only with tasks of the same `merge_key` (signature, outputs, dtypes and,
  unless variable-length padding is on, the non-batch dimensions).
- `BatchQueue.add` appends a task to the open batch of its key if it fits in `max_batch_size`, otherwise
  closes that batch and opens a new one. More than `max_enqueued_batches` batches waiting is refused with
  RESOURCE_EXHAUSTED (TF Serving's text). A task larger than `max_batch_size` is refused as invalid.
- `BatchQueue.pop_ready(now)` hands out the oldest batch that is closed, full, or whose first task has
  waited `batch_timeout` by the caller's clock; `next_deadline()` says when to ask again.
- Adaptive closing: `pop_ready(now, others_coming=False)` hands out the oldest batch at once, whatever its
  timeout, when the caller knows that no request outside the queue could join it (every request in
  flight is already queued). Waiting would then only add latency: at low load a request runs alone at
  once, and under load batches still fill while the model is busy (TF Serving's batching flags keep
  their meaning: size, timeout as the longest wait, queue bound, allowed sizes).
- `merge` concatenates a batch's inputs along dimension 0 and pads it up to the next allowed batch size
  by repeating the first row; with `pad_variable_length_inputs` it first pads each task's other
  dimensions to the batch's largest, with that tensor's first element (TF Serving's batching_util.cc).
  `split` slices the outputs back per task and drops the padding rows.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from confserve.serving._errors import InvalidInputError, ResourceExhaustedError, ServingError
from confserve.serving.batching._settings import BatchingSettings

__all__ = ["Batch", "BatchQueue", "Task", "merge", "split"]

Arrays = Mapping[str, npt.NDArray[Any]]


@dataclass(eq=False)
class Task:
    """One caller's share of a batch; the scheduler fills `outputs` or `error`, then sets `done`."""

    signature_name: str
    inputs: Arrays
    output_keys: tuple[str, ...]
    size: int
    merge_key: Hashable
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict[str, npt.NDArray[Any]] | None = None
    error: BaseException | None = None


def make_task(
    signature_name: str, inputs: Arrays, output_keys: Sequence[str], settings: BatchingSettings
) -> Task | None:
    """A Task for these inputs, or None when they cannot be batched (no inputs, or a scalar input)."""
    if not inputs or any(np.ndim(a) == 0 for a in inputs.values()):
        return None
    sizes = {int(a.shape[0]) for a in inputs.values()}
    if len(sizes) != 1:
        # TF Serving's text (batching_session.cc).
        raise InvalidInputError("Batching input tensors must have equal 0th-dimension size")
    (size,) = sizes
    if size > settings.max_batch_size:
        raise InvalidInputError(
            f"Task size {size} is larger than maximum input batch size {settings.max_batch_size}"
        )
    shapes = tuple(
        (name, a.dtype.str, a.ndim if settings.pad_variable_length_inputs else a.shape[1:])
        for name, a in sorted(inputs.items())
    )
    key = (signature_name, tuple(output_keys), shapes)
    return Task(signature_name, inputs, tuple(output_keys), size, key)


@dataclass(eq=False)
class Batch:
    merge_key: Hashable
    opened_at: float
    tasks: list[Task] = field(default_factory=list)
    size: int = 0
    closed: bool = False


class BatchQueue:
    """FIFO of batches; not thread-safe (the scheduler holds its lock around every call)."""

    def __init__(self, settings: BatchingSettings) -> None:
        self._settings = settings
        self._batches: list[Batch] = []
        self._open: dict[Hashable, Batch] = {}
        self._tasks = 0

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def tasks(self) -> int:
        """Tasks waiting in every batch."""
        return self._tasks

    def add(self, task: Task, now: float) -> None:
        batch = self._open.get(task.merge_key)
        if batch is not None and batch.size + task.size > self._settings.max_batch_size:
            batch.closed = True
            del self._open[task.merge_key]
            batch = None
        if batch is None:
            if len(self._batches) >= self._settings.max_enqueued_batches:
                # TF Serving's text (shared_batch_scheduler.h).
                raise ResourceExhaustedError(
                    "The batch scheduling queue to which this task was submitted is full"
                )
            batch = Batch(task.merge_key, now)
            self._batches.append(batch)
            self._open[task.merge_key] = batch
        batch.tasks.append(task)
        batch.size += task.size
        self._tasks += 1

    def _ready(self, batch: Batch, now: float) -> bool:
        return (
            batch.closed
            or batch.size >= self._settings.max_batch_size
            or now >= batch.opened_at + self._settings.batch_timeout_seconds
        )

    def pop_ready(self, now: float, *, others_coming: bool = True) -> Batch | None:
        """The oldest ready batch; with `others_coming=False` the oldest batch, ready or not."""
        if not others_coming:
            return self.pop_any()
        for index, batch in enumerate(self._batches):
            if self._ready(batch, now):
                return self._take(index)
        return None

    def pop_any(self) -> Batch | None:
        """The oldest batch, ready or not (used when shutting down)."""
        return self._take(0) if self._batches else None

    def next_deadline(self) -> float | None:
        """When the oldest open batch times out (None: nothing queued)."""
        if not self._batches:
            return None
        return min(b.opened_at for b in self._batches) + self._settings.batch_timeout_seconds

    def _take(self, index: int) -> Batch:
        batch = self._batches.pop(index)
        self._tasks -= len(batch.tasks)
        if self._open.get(batch.merge_key) is batch:
            del self._open[batch.merge_key]
        return batch


def _pad_to(array: npt.NDArray[Any], shape: tuple[int, ...]) -> npt.NDArray[Any]:
    if array.shape[1:] == shape:
        return array
    widths = [(0, 0)] + [(0, want - have) for have, want in zip(array.shape[1:], shape, strict=True)]
    fill = array.flat[0] if array.size else np.zeros((), array.dtype)[()]
    return np.pad(array, widths, mode="constant", constant_values=fill)


def padded_size(size: int, settings: BatchingSettings) -> int:
    """The batch size actually run: the smallest allowed size that holds `size` (or `size` itself)."""
    for allowed in settings.allowed_batch_sizes:
        if allowed >= size:
            return allowed
    return size


def merge(batch: Batch, settings: BatchingSettings) -> tuple[dict[str, npt.NDArray[Any]], int]:
    """The batch's inputs concatenated along dimension 0 and padded; also the padded size."""
    total = padded_size(batch.size, settings)
    merged: dict[str, npt.NDArray[Any]] = {}
    for name in batch.tasks[0].inputs:
        parts = [task.inputs[name] for task in batch.tasks]
        if settings.pad_variable_length_inputs:
            inner = tuple(max(dims) for dims in zip(*(p.shape[1:] for p in parts), strict=True))
            parts = [_pad_to(p, inner) for p in parts]
        if total > batch.size:
            parts.append(np.repeat(parts[0][:1], total - batch.size, axis=0))
        merged[name] = np.concatenate(parts, axis=0)
    return merged, total


def split(batch: Batch, outputs: Arrays, total: int) -> list[dict[str, npt.NDArray[Any]]]:
    """Each task's rows of the outputs (padding rows dropped)."""
    for key, array in outputs.items():
        if np.ndim(array) == 0 or array.shape[0] != total:
            raise ServingError(f"batched output {key} does not have the batch size {total} in dimension 0")
    results = []
    offset = 0
    for task in batch.tasks:
        results.append({k: outputs[k][offset : offset + task.size] for k in task.output_keys})
        offset += task.size
    return results
