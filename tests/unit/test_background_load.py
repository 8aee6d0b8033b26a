"""The background load the cluster, release and fault suites run beside their scenarios: how it counts."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import pytest

from tests.background_load import BackgroundLoad, Counts


def scripted(outcomes: str) -> tuple[Callable[[], None], threading.Event]:
    """A call that fails ("x") or answers (".") as `outcomes` says, then answers; `done` once it is used up."""
    steps = iter(outcomes)
    done = threading.Event()

    def call() -> None:
        step = next(steps, None)
        if step is None:
            done.set()
        elif step == "x":
            raise ConnectionError("refused")

    return call, done


@pytest.mark.parametrize(
    ("retry_pause", "outcomes", "failed", "lost"),
    [
        (0.0, "x.", 1, 0),  # a failed attempt answered on its retry
        (0.0, "xx.", 2, 1),  # failed twice: lost
        (0.0, ".x.xx", 3, 1),
        (None, "x.", 1, 1),  # no retry: a failed attempt is a lost request
    ],
)
def test_attempts_retries_and_losses_are_counted(
    retry_pause: float | None, outcomes: str, failed: int, lost: int
) -> None:
    call, done = scripted(outcomes)
    with BackgroundLoad(call, retry_pause=retry_pause) as load:
        assert done.wait(30)
        load.wait_for(3)
    counts = load.counts()
    assert (counts.failed_attempts, counts.lost) == (failed, lost)
    assert len(load.errors) == lost
    assert all("ConnectionError: refused" in error for error in load.errors)


def test_any_exception_counts_and_the_thread_goes_on() -> None:
    calls = itertools.count()

    def call() -> None:
        if next(calls) == 0:
            raise AssertionError("wrong answer")

    with BackgroundLoad(call, retry_pause=None, threads=2) as load:
        load.wait_for(10)
    assert load.counts().lost == 1
    assert load.errors == ["AssertionError: wrong answer"]


def test_wait_for_fails_at_its_timeout_with_the_last_errors() -> None:
    def call() -> None:
        raise ConnectionError("down")

    expected = r"1 more answered requests not reached in 0 s: .*ConnectionError: down"
    with (
        BackgroundLoad(call, retry_pause=None, request_pause=0.01) as load,
        pytest.raises(AssertionError, match=expected),
    ):
        load.wait_for(1, timeout=0.2)


def test_counts_subtract() -> None:
    assert Counts(10, 3, 1) - Counts(4, 1, 1) == Counts(6, 2, 0)
