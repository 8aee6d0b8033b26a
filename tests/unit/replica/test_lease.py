"""The key lease, driven by an injected clock: renewal within the lease, backoff after failures, expiry
(fail closed), early renewal when something new is wanted, the owner's lease bound."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from confserve.provisioning import Granted, UnavailableError
from confserve.replica._lease import KeyLease, LeaseSchedule, next_renewal

KEY = bytes(range(16))


class FakeService:
    """The key service as the lease sees it: one call per session."""

    def __init__(self) -> None:
        self.floors: dict[str, int] = {}
        self.granted = {"default", "m"}
        self.max_lease = 0
        self.down = False
        self.calls: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def __call__(self, names: Sequence[str], models: Sequence[str]) -> Granted:
        self.calls.append((tuple(names), tuple(models)))
        if self.down:
            raise UnavailableError("no secret-provisioning server answered in time")
        secrets = {n: KEY for n in names if n in self.granted}
        return Granted(secrets, {m: self.floors.get(m, 0) for m in models}, self.max_lease)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(service: FakeService, clock: Clock, lease: float = 100.0, draw: float = 0.0) -> KeyLease:
    return KeyLease(service, default_key="default", lease_seconds=lease, clock=clock, draw=lambda: draw)


def test_the_schedule_is_within_the_lease_and_backs_off() -> None:
    schedule = LeaseSchedule(100.0)
    assert next_renewal(schedule, granted_at=10, lease_seconds=100, now=10, failures=0, draw=0.0) == 60
    assert next_renewal(schedule, granted_at=10, lease_seconds=100, now=10, failures=0, draw=0.999) < 85
    waits = [
        next_renewal(schedule, granted_at=0, lease_seconds=100, now=0, failures=f, draw=1.0)
        for f in range(1, 9)
    ]
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    assert next_renewal(schedule, granted_at=0, lease_seconds=100, now=0, failures=3, draw=0.0) == 2  # jitter
    with pytest.raises(ValueError, match="positive length"):
        LeaseSchedule(0)


def test_nothing_before_the_first_renewal() -> None:
    clock = Clock()
    lease = make(FakeService(), clock)
    assert lease.current().expired(clock.now)
    assert lease.current().keys == {}


def test_a_renewal_grants_keys_floors_and_a_lease() -> None:
    service, clock = FakeService(), Clock()
    service.floors = {"m": 4}
    lease = make(service, clock)
    lease.want({"m", "gone"}, {"m"})
    lease.renew()
    grant = lease.current()
    assert sorted(grant.keys) == ["default", "m"]
    assert dict(grant.floors) == {"m": 4}
    assert grant.denied == {"gone"}
    assert grant.expires_at == 1100.0
    assert service.calls == [(("default", "gone", "m"), ("m",))]
    assert lease.next_attempt == 1050.0  # half the lease (draw 0)


def test_a_raised_floor_arrives_within_one_lease() -> None:
    service, clock = FakeService(), Clock()
    lease = make(service, clock, draw=0.999)  # the latest renewal the schedule allows
    lease.want({"m"}, {"m"})
    lease.renew()
    granted_at = clock.now
    service.floors["m"] = 2  # the owner raises the floor right after the grant
    while lease.current().floors["m"] != 2:
        renewed_at = clock.now
        clock.now = lease.step(clock.now)
    assert renewed_at - granted_at < 100.0 * 0.75  # the floor arrived before a quarter of the lease was left
    assert not lease.current().expired(renewed_at)


def test_a_replica_that_cannot_renew_expires_at_the_end_of_its_lease() -> None:
    service, clock = FakeService(), Clock()
    lease = make(service, clock)
    lease.want({"m"}, {"m"})
    lease.renew()
    service.down = True
    times = []
    while not lease.current().expired(clock.now):
        clock.now = lease.step(clock.now)
        times.append(clock.now)
    assert 1100.0 <= clock.now < 1100.0 + 30  # expired at the end of the lease, noticed at the next attempt
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0]  # backoff (draw 0: the lower half of each wait, doubling)
    assert len(service.calls) == len(times)  # the first step was the wait for the due time
    # Back again: the next attempt renews, and the grant is valid again.
    service.down = False
    clock.now = lease.step(lease.next_attempt)
    assert not lease.current().expired(clock.now)


def test_backoff_is_not_reset_by_repeated_wants() -> None:
    service, clock = FakeService(), Clock()
    lease = make(service, clock)
    lease.want({"m"}, {"m"})
    lease.renew()
    service.down = True
    lease.want({"m", "k2"}, {"m"})  # something new: renew at once
    assert lease.next_attempt == clock.now
    next_time = lease.step(clock.now)
    assert next_time > clock.now
    lease.want({"m", "k2"}, {"m"})  # the gate says the same again at every poll
    assert lease.next_attempt == next_time


def test_the_owner_bound_shortens_the_lease() -> None:
    service, clock = FakeService(), Clock()
    service.max_lease = 30
    lease = make(service, clock)
    lease.renew()
    assert lease.current().expires_at == 1030.0
    service.max_lease = 3000  # never lengthens it
    lease.renew()
    assert lease.current().expires_at == 1100.0


def test_a_new_want_renews_at_once_and_covers() -> None:
    service, clock = FakeService(), Clock()
    lease = make(service, clock)
    lease.want({"m"}, {"m"})
    lease.renew()
    assert lease.covers({"m"}, {"m"})
    assert not lease.covers({"k2"}, {"m"})
    clock.now += 1
    lease.want({"m", "k2"}, {"m"})
    assert lease.wake.is_set()
    lease.step(clock.now)
    assert service.calls[-1] == (("default", "k2", "m"), ("m",))
    assert lease.covers({"k2"}, {"m"})


def test_secrets_that_are_not_wrap_keys_are_not_keys() -> None:
    clock = Clock()

    def fetch(names: Sequence[str], models: Sequence[str]) -> Granted:
        return Granted({"default": KEY, "tls": b"x" * 100})

    lease = KeyLease(fetch, default_key="default", lease_seconds=10, clock=clock)
    lease.want({"tls"}, ())
    lease.renew()
    assert sorted(lease.current().keys) == ["default"]
    assert lease.current().denied == {"tls"}
