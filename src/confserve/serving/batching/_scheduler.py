"""The threaded half of batching: a servable wrapper whose `run` joins a batch, and its batch threads.

`BatchingServable.run` turns the call into a `Task`, queues it and waits; `num_batch_threads` threads take
ready batches from the `BatchQueue` (by the injected clock), run the merged inputs once on the wrapped
servable and hand each task its rows. Models know nothing about this: `BatchingLoader` wraps whatever the
model loader returns.

Adaptive closing: `in_flight` (the DataPlane's count of inference requests being served) tells whether a
request outside the queue could still join; when every one is queued, a free batch thread takes the
oldest batch without waiting for `batch_timeout_micros` (see `_queue`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, Generic, TypeVar

import numpy.typing as npt

from confserve.serving._errors import ModelUnavailableError, ServingError, log_unexpected
from confserve.serving._manager import Loader
from confserve.serving.batching._queue import Batch, BatchQueue, make_task, merge, split
from confserve.serving.batching._settings import BatchingSettings

__all__ = ["BatchingLoader", "BatchingServable"]

_log = logging.getLogger(__name__)
S = TypeVar("S")


class BatchingServable:
    """Wraps a servable (anything with `signature_defs` and `run`); `close()` stops its threads."""

    def __init__(
        self,
        inner: Any,
        settings: BatchingSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "batch",
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        self.inner = inner
        self._settings = settings
        self._clock = clock
        self._in_flight = in_flight
        self._queue = BatchQueue(settings)
        self._changed = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(settings.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def signature_defs(self) -> Mapping[str, Any]:
        signature_defs: Mapping[str, Any] = self.inner.signature_defs
        return signature_defs

    def run(
        self, signature_name: str, inputs: Mapping[str, npt.NDArray[Any]], output_keys: Sequence[str]
    ) -> Mapping[str, npt.NDArray[Any]]:
        task = make_task(signature_name, inputs, output_keys, self._settings)
        if task is None:
            outputs: Mapping[str, npt.NDArray[Any]] = self.inner.run(signature_name, inputs, output_keys)
            return outputs
        with self._changed:
            if self._closed:
                raise ModelUnavailableError("this model version is unloading")
            self._queue.add(task, self._clock())
            self._changed.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def _others_coming(self) -> bool:
        """Whether a request not yet queued might still join a batch (unknown: assume so)."""
        if self._in_flight is None or not self._queue.tasks:
            return True
        return self._in_flight() > self._queue.tasks

    def _next(self) -> Batch | None:
        with self._changed:
            while True:
                batch = self._queue.pop_ready(self._clock(), others_coming=self._others_coming())
                if batch is None and self._closed:
                    batch = self._queue.pop_any()
                    if batch is None:
                        return None
                if batch is not None:
                    return batch
                deadline = self._queue.next_deadline()
                self._changed.wait(None if deadline is None else max(0.0, deadline - self._clock()))

    def _work(self) -> None:
        while (batch := self._next()) is not None:
            self._run(batch)

    def _run(self, batch: Batch) -> None:
        first = batch.tasks[0]
        try:
            inputs, total = merge(batch, self._settings)
            outputs = self.inner.run(first.signature_name, inputs, first.output_keys)
            for task, rows in zip(batch.tasks, split(batch, outputs, total), strict=True):
                task.outputs = rows
        except ServingError as exc:
            for task in batch.tasks:  # one exception object per waiting thread
                task.error = type(exc)(str(exc))
        except Exception as exc:
            log_unexpected(_log, "batched run", exc)
            for task in batch.tasks:
                task.error = ServingError("internal error in a batched run")
        finally:
            for task in batch.tasks:
                task.done.set()

    def close(self) -> None:
        """Run what is queued, then stop the threads."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()


@dataclass(frozen=True)
class BatchingLoader(Generic[S]):
    """Wraps a Loader so every loaded version runs behind its own batch scheduler."""

    inner: Loader[S]
    settings: BatchingSettings
    _: KW_ONLY
    clock: Callable[[], float] = time.monotonic
    in_flight: Callable[[], int] | None = None

    def load(self, model: str, version: int, path: str) -> BatchingServable:
        servable = self.inner.load(model, version, path)
        return BatchingServable(
            servable,
            self.settings,
            clock=self.clock,
            name=f"batch-{model}-{version}",
            in_flight=self.in_flight,
        )

    def unload(self, servable: BatchingServable) -> None:
        servable.close()
        self.inner.unload(servable.inner)
