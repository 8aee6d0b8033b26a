"""Admission control: how many requests may run at once, and waiting for the running ones to finish.

One `Admission` sits in the DataPlane, so gRPC and REST share a single limit. It never queues: a request
over the limit is refused at once with RESOURCE_EXHAUSTED (gRPC) / 429 (REST), because a queued request
would hold its decoded tensors in (scarce) enclave memory while it waits. The same in-flight count lets
shutdown wait for running requests (`wait_idle`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from confserve.serving._errors import ResourceExhaustedError

__all__ = ["Admission"]


class Admission:
    """A non-blocking bounded counter of requests in flight; `limit=None` counts without limiting."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("the concurrency limit must be at least 1 (None: no limit)")
        self.limit = limit
        self._in_flight = 0
        self._idle = threading.Condition()

    @property
    def in_flight(self) -> int:
        with self._idle:
            return self._in_flight

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Run the body as one admitted request, or raise ResourceExhaustedError at once."""
        with self._idle:
            if self.limit is not None and self._in_flight >= self.limit:
                raise ResourceExhaustedError(
                    f"Too many requests in flight (limit {self.limit}); try again later"
                )
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.notify_all()

    def wait_idle(self, timeout_seconds: float | None) -> bool:
        """Block until no request is in flight (True) or the timeout passes (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout_seconds)
