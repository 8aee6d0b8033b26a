"""Supervision of a local cluster's components, without I/O: observed states and a clock in, restarts out.

Theory of operation. Every tick, the I/O half (`LocalCluster.supervise_once`) observes each component
(the key service, nginx, every replica) as an `Observed`: its condition (`starting`, `ready`,
`not ready`, `dead`), the reason, and whether it is hung (the process runs but does not answer, or is
stopped). `decide` takes those, the `Track` it left for each component last time (kept in the cluster's
state file, so `confserve status` shows it and a restarted supervisor goes on from it) and the time,
and returns the new tracks and the components to restart now. It never sleeps, reads a clock or touches
a process; the tests drive it with a hand-held clock.

When a component is restarted:

| observed                                   | restart                                  | kill first |
|--------------------------------------------|------------------------------------------|------------|
| dead (its process is gone)                 | yes                                      | no         |
| hung for `hang_seconds`                    | yes                                      | yes        |
| starting (nothing listens) for longer than | yes                                      | yes        |
| its start timeout, counted from its start  |                                          |            |
| or from when it was last ready             |                                          |            |
| ready; not ready but answering; starting   | no                                       |            |

How soon: a component that had been ready for `stable_seconds` before it failed is restarted at once.
Each failure after that, without a stable run in between (the `streak`), waits twice as long as the one
before, from `backoff_initial_seconds` up to `backoff_max_seconds` (what Kubernetes does for a crashing
container, with its numbers scaled to a local cluster whose components start in seconds). So a replica
that the key service keeps refusing (its code changed, say) is tried again at 0, 1, 2, 4, ... 60 s, never
in a tight loop, and its track says why (`waiting_reason`) and when (`next_start_at`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final, Literal

__all__ = [
    "Condition",
    "Decision",
    "Kind",
    "Observed",
    "Restart",
    "SupervisorSettings",
    "Track",
    "backoff_seconds",
    "decide",
    "restarted",
]

Kind = Literal["key service", "nginx", "replica"]
Condition = Literal["starting", "ready", "not ready", "dead"]

# A replica asks for its key for up to 300 s (serve's --secret_provision_deadline_seconds default) and
# exits after that by itself; the key service and nginx listen within a second or two of their start.
_START_TIMEOUT_SECONDS: Final[Mapping[Kind, float]] = {"key service": 60.0, "nginx": 10.0, "replica": 330.0}


@dataclass(frozen=True)
class SupervisorSettings:
    # Three ready checks of 2 s without an answer: a loaded replica answers in milliseconds.
    hang_seconds: float = 6.0
    # Ready this long means the last start worked: the next failure is restarted at once again.
    stable_seconds: float = 10.0
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 60.0  # a crash-looping component costs one start a minute
    start_timeout_seconds: Mapping[Kind, float] = field(default_factory=lambda: dict(_START_TIMEOUT_SECONDS))

    def __post_init__(self) -> None:
        if min(self.hang_seconds, self.stable_seconds, self.backoff_initial_seconds) <= 0:
            raise ValueError("supervision times must be positive")
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError("the backoff's cap is below its first step")


@dataclass(frozen=True)
class Observed:
    """One component as the I/O half saw it this tick."""

    name: str  # unique in the cluster: "key-service", "nginx", "replica-0", ...
    kind: Kind
    condition: Condition
    reason: str = ""  # why it is not ready
    hung: bool = False  # its process runs but does not answer (or is stopped)


@dataclass(frozen=True)
class Track:
    """What supervision remembers of one component (wall-clock seconds)."""

    started_at: float = 0.0  # when its current process was started
    ready_since: float | None = None  # ready without interruption since
    unready_since: float | None = None  # not ready since, after it had been ready
    hung_since: float | None = None  # hung without interruption since
    streak: int = 0  # restarts since its last stable run
    restarts: int = 0  # restarts in all
    last_restart_at: float | None = None
    last_reason: str = ""  # why it was last restarted
    next_start_at: float | None = None  # it is to be restarted, not before then (backoff)
    waiting_reason: str = ""  # why it is to be restarted


@dataclass(frozen=True)
class Restart:
    name: str
    reason: str
    kill_first: bool  # its process still runs (hung, or never became ready): kill it before the start


@dataclass(frozen=True)
class Decision:
    tracks: dict[str, Track]
    restarts: list[Restart]


def backoff_seconds(streak: int, settings: SupervisorSettings) -> float:
    """The wait before a restart after `streak` restarts without a stable run: 0, then 1, 2, 4, ... cap."""
    if streak <= 0:
        return 0.0
    return min(settings.backoff_initial_seconds * 2.0 ** min(streak - 1, 62), settings.backoff_max_seconds)


def restarted(track: Track, now: float, reason: str) -> Track:
    """The track of a component (re)started now, for `reason`."""
    return Track(
        started_at=now,
        streak=track.streak + 1,
        restarts=track.restarts + 1,
        last_restart_at=now,
        last_reason=reason,
    )


def _failure(
    obs: Observed, track: Track, now: float, settings: SupervisorSettings
) -> tuple[str, bool] | None:
    """Why the component must be restarted and whether to kill it first; None when it is fine or may
    still become ready."""
    if obs.condition == "dead":
        return (obs.reason or "exited"), False
    if obs.hung and track.hung_since is not None and now - track.hung_since >= settings.hang_seconds:
        why = f"hung for {now - track.hung_since:.0f} s"
        return (f"{why} ({obs.reason})" if obs.reason else why), True
    # Counted from the start, or from when it stopped being ready: one odd observation of a component
    # that has run for long is not a start that never ended.
    limit = settings.start_timeout_seconds.get(obs.kind, _START_TIMEOUT_SECONDS[obs.kind])
    since = max(track.started_at, track.unready_since or 0.0)
    if obs.condition == "starting" and now - since >= limit:
        return f"not listening for {now - since:.0f} s", True
    return None


def _one(
    obs: Observed, track: Track, now: float, settings: SupervisorSettings
) -> tuple[Track, Restart | None]:
    if obs.condition == "ready":
        since = track.ready_since if track.ready_since is not None else now
        streak = 0 if now - since >= settings.stable_seconds else track.streak
        return replace(track, ready_since=since, unready_since=None, hung_since=None, streak=streak,
                       next_start_at=None, waiting_reason=""), None  # fmt: skip
    track = replace(
        track,
        ready_since=None,
        unready_since=now if track.ready_since is not None else track.unready_since,
        hung_since=(track.hung_since if track.hung_since is not None else now) if obs.hung else None,
    )
    failure = _failure(obs, track, now, settings)
    if failure is None:
        return replace(track, next_start_at=None, waiting_reason=""), None
    reason, kill = failure
    if track.next_start_at is None:  # first seen failing: when to restart it
        at = now + backoff_seconds(track.streak, settings)
        track = replace(track, next_start_at=at, waiting_reason=reason)
    else:
        at, reason = track.next_start_at, track.waiting_reason
    if now < at:
        return track, None
    return restarted(track, now, reason), Restart(obs.name, reason, kill)


def decide(
    observed: Mapping[str, Observed],
    tracks: Mapping[str, Track],
    now: float,
    settings: SupervisorSettings | None = None,
) -> Decision:
    """The new track of every observed component and the restarts to make now. A component seen for the
    first time is taken as started now; tracks of components no longer observed are dropped."""
    settings = settings or SupervisorSettings()
    new: dict[str, Track] = {}
    restarts: list[Restart] = []
    for name, obs in observed.items():
        track, restart = _one(obs, tracks.get(name) or Track(started_at=now), now, settings)
        new[name] = track
        if restart is not None:
            restarts.append(restart)
    return Decision(new, restarts)
