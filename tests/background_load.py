"""Load that runs beside a test: a call repeated from background threads until the test ends, each
failed attempt retried once (optionally after a pause), every outcome counted.

Three suites drive a serving path while they break something (tests/integration/test_cluster.py,
test_releases.py, tests/faults): they differ only in the call, the number of threads, whether and when a
failed attempt is retried, and the pause between requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BackgroundLoad", "Counts"]


@dataclass(frozen=True)
class Counts:
    """Requests answered, attempts that failed (retried or not), requests lost (no answer at all)."""

    ok: int
    failed_attempts: int
    lost: int

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.ok - other.ok, self.failed_attempts - other.failed_attempts, self.lost - other.lost
        )


class BackgroundLoad:
    """`call` repeated from `threads` threads while the context is open (at most `bound_seconds`).

    Any exception from `call` is a failed attempt (a wrong answer should raise too); with `retry_pause`
    set, the request is tried once more after that pause and lost only if that fails as well, and without
    it a failed attempt is lost at once. `errors` holds one line per lost request.
    """

    def __init__(
        self,
        call: Callable[[], None],
        *,
        threads: int = 1,
        retry_pause: float | None = 0.0,
        request_pause: float = 0.0,
        bound_seconds: float = 600.0,
    ) -> None:
        self._call = call
        self._retry_pause = retry_pause
        self._request_pause = request_pause
        self._bound_seconds = bound_seconds
        self._lock = threading.Lock()
        self._ok = self._failed = self._lost = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _attempt(self) -> str | None:
        """None when answered, else what went wrong."""
        try:
            self._call()
        except Exception as exc:  # every kind counts: a load thread must not die silently
            with self._lock:
                self._failed += 1
            return f"{type(exc).__name__}: {exc}"
        return None

    def _run(self) -> None:
        deadline = time.monotonic() + self._bound_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            error = self._attempt()
            if error is not None and self._retry_pause is not None:
                self._stop.wait(self._retry_pause)
                second = self._attempt()
                error = None if second is None else f"{error} / {second}"
            with self._lock:
                if error is None:
                    self._ok += 1
                else:
                    self._lost += 1
                    self.errors.append(error)
            self._stop.wait(self._request_pause)

    def counts(self) -> Counts:
        with self._lock:
            return Counts(self._ok, self._failed, self._lost)

    def wait_for(self, n: int, timeout: float = 120.0) -> None:
        """Until `n` more requests were answered; AssertionError (with the last errors) at the timeout, a
        safety net: the suites never assert on a duration."""
        target = self.counts().ok + n
        deadline = time.monotonic() + timeout
        while self.counts().ok < target:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{n} more answered requests not reached in {timeout:.0f} s: {self.errors[-3:]}"
                )
            time.sleep(0.05)

    def __enter__(self) -> BackgroundLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
