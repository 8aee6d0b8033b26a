"""The replica's key lease: its wrap keys and the release floors, renewed with the key service.

Theory of operation (docs/releases.md, "Leases")
------------------------------------------------
A replica with a pinned release key holds its keys on a *lease*. Each renewal is one attested session
(the provisioning extension's version 2): the replica asks for the keys its models' releases name (and
its default secret), and for the floor of each model; the key service grants the keys the policy still
grants and every floor, with the owner's lease bound. The grant is valid for `lease_seconds` (the
replica's setting, shortened to the owner's bound when the policy sets one), counted from *before* the
request was sent.

- Renewal is due between half and three quarters of the lease after a grant (random, so replicas that
  started together spread out). A raised floor or a withdrawn key therefore reaches every replica within
  one lease; the release gate (`confserve.serving`) unloads what is no longer allowed at its next poll.
- A failed renewal is retried with exponential backoff (1 s doubling to 30 s, each wait drawn from its
  upper half) until one succeeds. When the lease ends without one, the grant is *expired*: the gate
  refuses every model, so nothing is served (fail closed). A later renewal serves again.
- When the gate wants a key or a model the last renewal did not ask for (a new release names a new key,
  or the model config grew), renewal happens at once.

`next_renewal` is the whole schedule as a pure function of the times and the draw; `KeyLease.step`
applies it at a given time, so tests drive the lease with an injected clock, never with sleeps.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final

from confserve.errors import ConfserveError
from confserve.pf import WrapKey
from confserve.provisioning import Granted
from confserve.serving import KeyGrant

__all__ = ["KeyLease", "LeaseSchedule", "next_renewal"]

_log = logging.getLogger("confserve.lease")
_KEY_BYTES: Final = 16  # a protected-files wrap key
_STOP_CHECK_SECONDS: Final = 1.0  # how soon the renewal thread notices that the replica stops

LeaseFetch = Callable[[Sequence[str], Sequence[str]], Granted]  # (secret names, models) -> grant


@dataclass(frozen=True)
class LeaseSchedule:
    """When to renew. Renewing at 1/2..3/4 of the lease leaves a quarter of it for retries before the
    grant expires; 1 s doubling to 30 s retries a key service that restarts within seconds at once and
    costs a flooded one at most one session per replica every 15-30 s."""

    lease_seconds: float
    renew_low: float = 0.5
    renew_high: float = 0.75
    initial_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not (self.lease_seconds > 0 and 0 < self.renew_low <= self.renew_high < 1):
            raise ValueError("a lease needs a positive length and renewal within it")


def next_renewal(
    schedule: LeaseSchedule,
    *,
    granted_at: float,
    lease_seconds: float,
    now: float,
    failures: int,
    draw: float,
) -> float:
    """The time of the next renewal attempt. `granted_at`: when the last successful request started;
    `lease_seconds`: that grant's length; `failures`: consecutive failed attempts since; `draw`: uniform
    in [0, 1)."""
    if failures == 0:
        fraction = schedule.renew_low + (schedule.renew_high - schedule.renew_low) * draw
        return granted_at + lease_seconds * fraction
    backoff = min(schedule.initial_backoff_seconds * 2.0 ** (failures - 1), schedule.max_backoff_seconds)
    return now + backoff * (0.5 + 0.5 * draw)


class KeyLease:
    """The `KeyProvider` of a replica whose keys come from the key service (see the module docstring).

    `fetch(names, models)` is one attested session (`EnclaveRuntime.lease`); it raises ConfserveError
    on failure."""

    def __init__(
        self,
        fetch: LeaseFetch,
        *,
        default_key: str,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._fetch = fetch
        self._default = default_key
        self._schedule = LeaseSchedule(lease_seconds)
        self._clock = clock
        self._draw = draw
        self._lock = threading.Lock()
        self._grant = KeyGrant(expires_at=clock())  # nothing until the first renewal
        self._wanted_keys: frozenset[str] = frozenset()
        self._wanted_models: frozenset[str] = frozenset()
        self._asked: tuple[frozenset[str], frozenset[str]] | None = None
        self._granted_at = 0.0
        self._lease = lease_seconds
        self._failures = 0
        self._next = clock()
        self.wake = threading.Event()  # set when something new is wanted: renew at once

    # -- KeyProvider ------------------------------------------------------------------------------------

    def current(self) -> KeyGrant:
        with self._lock:
            return self._grant

    def want(self, key_ids: Collection[str], models: Collection[str]) -> None:
        keys, names = frozenset(key_ids), frozenset(models)
        with self._lock:
            changed = (keys, names) != (self._wanted_keys, self._wanted_models)
            self._wanted_keys, self._wanted_models = keys, names
            asked = self._asked
            # Something the last renewal did not ask for: renew at once (once per change, so a failing
            # key service still sees the backoff).
            new = changed and (asked is None or not (keys <= asked[0] and names <= asked[1]))
            if new:
                self._next = min(self._next, self._clock())
        if new:
            self.wake.set()

    def covers(self, key_ids: Collection[str], models: Collection[str]) -> bool:
        """Whether the last renewal asked for all of these."""
        with self._lock:
            asked = self._asked
        return asked is not None and set(key_ids) <= asked[0] and set(models) <= asked[1]

    # -- renewal ----------------------------------------------------------------------------------------

    @property
    def expires_at(self) -> float | None:
        return self.current().expires_at

    @property
    def next_attempt(self) -> float:
        with self._lock:
            return self._next

    def renew(self) -> None:
        """One renewal now; raises ConfserveError when it fails (the grant in force stays until it
        expires)."""
        with self._lock:
            names = (self._default, *sorted(self._wanted_keys - {self._default}))
            models = tuple(sorted(self._wanted_models))
        started = self._clock()
        granted = self._fetch(names, models)
        keys = {n: WrapKey(v) for n, v in granted.secrets.items() if len(v) == _KEY_BYTES}
        lease = self._schedule.lease_seconds
        if granted.max_lease_seconds:
            lease = min(lease, float(granted.max_lease_seconds))
        grant = KeyGrant(
            keys=keys,
            floors=dict(granted.floors),
            expires_at=started + lease,
            denied=frozenset(names) - frozenset(keys),
        )
        with self._lock:
            self._grant = grant
            self._asked = (frozenset(names), frozenset(models))
            self._granted_at, self._lease, self._failures = started, lease, 0
            self._next = next_renewal(
                self._schedule,
                granted_at=started,
                lease_seconds=lease,
                now=started,
                failures=0,
                draw=self._draw(),
            )
        withheld = f"; not granted: {', '.join(sorted(grant.denied))}" if grant.denied else ""
        _log.info(
            "keys %s and floors of %d model(s) renewed for %.0f s%s",
            ", ".join(sorted(keys)) or "(none)",
            len(models),
            lease,
            withheld,
        )

    def step(self, now: float) -> float:
        """Renew if due at `now` (failures are logged and rescheduled); returns when the next attempt is."""
        with self._lock:
            due = now >= self._next
        if due:
            try:
                self.renew()
            except ConfserveError as exc:
                with self._lock:
                    self._failures += 1
                    self._next = next_renewal(
                        self._schedule,
                        granted_at=self._granted_at,
                        lease_seconds=self._lease,
                        now=now,
                        failures=self._failures,
                        draw=self._draw(),
                    )
                    expired = self._grant.expired(now)
                _log.warning(
                    "key renewal failed (%d in a row)%s: %s",
                    self._failures,
                    "; the lease has expired, nothing is served" if expired else "",
                    exc,
                )
        return self.next_attempt

    def run(self, stop: threading.Event) -> None:
        """Renew on schedule until `stop` is set (the replica's renewal thread)."""
        while not stop.is_set():
            wait = self.step(self._clock()) - self._clock()
            self.wake.wait(min(max(0.0, wait), _STOP_CHECK_SECONDS))
            self.wake.clear()
