"""Supervision's policy without processes: observed states and a hand-held clock in, restarts out."""

from __future__ import annotations

import itertools

import pytest

from confserve.cluster._supervisor import (
    Condition,
    Decision,
    Kind,
    Observed,
    SupervisorSettings,
    Track,
    backoff_seconds,
    decide,
    restarted,
)

SETTINGS = SupervisorSettings()


def seen(
    condition: Condition, name: str = "replica-0", kind: Kind = "replica", **kw: object
) -> dict[str, Observed]:
    return {name: Observed(name, kind, condition, **kw)}  # type: ignore[arg-type]


class Clock:
    """Drives `decide` tick by tick, keeping the tracks as the I/O half does."""

    def __init__(self, tracks: dict[str, Track] | None = None) -> None:
        self.now = 1000.0
        self.tracks = tracks or {}

    def tick(self, observed: dict[str, Observed], advance: float = 0.5) -> Decision:
        self.now += advance
        decision = decide(observed, self.tracks, self.now, SETTINGS)
        self.tracks = decision.tracks
        return decision


def test_a_ready_component_is_left_alone() -> None:
    clock = Clock()
    for _ in range(10):
        assert clock.tick(seen("ready")).restarts == []
    track = clock.tracks["replica-0"]
    assert track.ready_since == pytest.approx(1000.5)
    assert (track.restarts, track.streak, track.next_start_at) == (0, 0, None)


def test_a_crash_after_a_stable_run_is_restarted_at_once() -> None:
    clock = Clock()
    clock.tick(seen("ready"))
    clock.tick(seen("ready"), advance=SETTINGS.stable_seconds)
    decision = clock.tick(seen("dead", reason="exited; its log ends: boom"))
    assert [(r.name, r.reason, r.kill_first) for r in decision.restarts] == [
        ("replica-0", "exited; its log ends: boom", False)
    ]
    track = decision.tracks["replica-0"]
    assert (track.restarts, track.streak, track.started_at, track.last_restart_at) == (
        1,
        1,
        clock.now,
        clock.now,
    )
    assert track.last_reason == "exited; its log ends: boom"


def test_a_crash_loop_backs_off_exponentially_up_to_the_cap() -> None:
    """A replica the key service keeps refusing: it dies before it is ever ready, again and again."""
    clock = Clock()
    clock.tick(seen("starting"))
    restarts_at = []
    for _ in range(4000):  # 2000 s of half-second ticks
        decision = clock.tick(seen("dead", reason="exited; its log ends: refused by policy"))
        if decision.restarts:
            restarts_at.append(clock.now)
        elif clock.tracks["replica-0"].next_start_at is not None:
            assert clock.tracks["replica-0"].waiting_reason == "exited; its log ends: refused by policy"
    gaps = [b - a for a, b in itertools.pairwise(restarts_at)]
    # Each gap is the backoff plus the half-second tick that saw it dead.
    assert gaps[:8] == pytest.approx([1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 60.5, 60.5])
    assert all(gap == pytest.approx(60.5) for gap in gaps[6:])
    assert clock.tracks["replica-0"].restarts == len(restarts_at)


def test_a_stable_run_resets_the_backoff() -> None:
    clock = Clock({"replica-0": Track(started_at=1000.0, streak=5, restarts=5)})
    clock.tick(seen("ready"))
    assert clock.tracks["replica-0"].streak == 5  # ready, not yet stable
    clock.tick(seen("ready"), advance=SETTINGS.stable_seconds)
    assert clock.tracks["replica-0"].streak == 0
    assert clock.tick(seen("dead")).restarts  # at once again


def test_a_failure_before_the_run_was_stable_waits() -> None:
    clock = Clock({"replica-0": Track(started_at=1000.0, streak=3, restarts=3)})
    clock.tick(seen("ready"))
    decision = clock.tick(seen("dead"))
    assert decision.restarts == []
    assert decision.tracks["replica-0"].next_start_at == pytest.approx(clock.now + 4.0)  # 2 ** (3 - 1)


def test_a_hung_component_is_killed_after_hang_seconds() -> None:
    clock = Clock()
    clock.tick(seen("ready"), advance=0)
    hung = seen("not ready", reason="not answering: its process is stopped (SIGSTOP)", hung=True)
    waited = 0.0
    while not (decision := clock.tick(hung)).restarts:
        waited += 0.5
        assert waited < 60
    assert waited + 0.5 >= SETTINGS.hang_seconds
    [restart] = decision.restarts
    assert restart.kill_first
    assert restart.reason == "hung for 6 s (not answering: its process is stopped (SIGSTOP))"


def test_a_component_that_answers_again_is_not_killed() -> None:
    clock = Clock()
    hung = seen("not ready", reason="not answering", hung=True)
    for _ in range(5):
        assert clock.tick(hung).restarts == []
    assert clock.tick(seen("ready")).restarts == []
    assert clock.tracks["replica-0"].hung_since is None
    for _ in range(5):  # the hang count starts again
        assert clock.tick(hung).restarts == []


def test_not_ready_but_answering_is_not_a_failure() -> None:
    clock = Clock()
    for _ in range(1000):
        assert clock.tick(seen("not ready", reason="ready check answered 503")).restarts == []


@pytest.mark.parametrize(("kind", "limit"), [("nginx", 10.0), ("key service", 60.0), ("replica", 330.0)])
def test_a_start_that_never_ends_is_killed(kind: Kind, limit: float) -> None:
    clock = Clock({"x": Track(started_at=1000.0)})
    assert clock.tick(seen("starting", "x", kind), advance=limit - 1).restarts == []
    [restart] = clock.tick(seen("starting", "x", kind), advance=1).restarts
    assert restart.kill_first
    assert restart.reason == f"not listening for {limit:.0f} s"


def test_a_long_running_component_seen_starting_once_is_not_killed() -> None:
    """nginx ready for an hour, then one observation without its listening sockets: the start timeout
    counts from that observation, not from its start an hour ago."""
    clock = Clock({"nginx": Track(started_at=1000.0)})
    clock.tick(seen("ready", "nginx", "nginx"), advance=3600)
    assert clock.tick(seen("starting", "nginx", "nginx")).restarts == []
    assert clock.tick(seen("ready", "nginx", "nginx")).restarts == []
    for _ in range(20):  # 10 s of it, from the first tick not ready
        assert clock.tick(seen("starting", "nginx", "nginx")).restarts == []
    assert clock.tick(seen("starting", "nginx", "nginx")).restarts


def test_a_steady_component_leaves_its_track_alone() -> None:
    """The state is written only when a track changes: not on every tick of a ready component."""
    clock = Clock()
    clock.tick(seen("ready"))
    track = clock.tracks["replica-0"]
    for _ in range(5):
        clock.tick(seen("ready"), advance=1)
    clock.tick(seen("ready"), advance=SETTINGS.stable_seconds)
    assert clock.tracks["replica-0"] == track


def test_a_component_back_before_its_backoff_ends_is_not_restarted() -> None:
    clock = Clock({"nginx": Track(started_at=1000.0, streak=4)})
    clock.tick(seen("dead", "nginx", "nginx"))
    assert clock.tracks["nginx"].next_start_at is not None
    assert clock.tick(seen("ready", "nginx", "nginx")).restarts == []
    assert clock.tracks["nginx"].next_start_at is None


def test_tracks_follow_the_components_observed() -> None:
    decision = decide(seen("starting", "replica-3"), {"replica-9": Track(restarts=2)}, 50.0)
    assert set(decision.tracks) == {"replica-3"}
    assert decision.tracks["replica-3"].started_at == 50.0


def test_backoff_table_and_settings() -> None:
    assert [backoff_seconds(n, SETTINGS) for n in (0, 1, 2, 3, 7, 8, 1000)] == [0, 1, 2, 4, 60, 60, 60]
    assert restarted(Track(streak=2, restarts=7), 5.0, "why") == Track(
        started_at=5.0, streak=3, restarts=8, last_restart_at=5.0, last_reason="why"
    )
    with pytest.raises(ValueError, match="positive"):
        SupervisorSettings(hang_seconds=0)
    with pytest.raises(ValueError, match="cap"):
        SupervisorSettings(backoff_initial_seconds=10, backoff_max_seconds=5)
