from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from confserve.errors import Status
from confserve.serving import (
    TRANSITIONS,
    AspiredVersions,
    InvalidInputError,
    LoadError,
    ManagerSettings,
    ModelConfig,
    ModelManager,
    ModelStore,
    ModelUnavailableError,
    NotFoundError,
    State,
    VersionStatus,
)


@dataclass
class Fake:
    model: str
    version: int
    unloaded: bool = False


@dataclass
class FakeLoader:
    fail: dict[tuple[str, int], Exception] = field(default_factory=dict)
    loads: list[tuple[str, int, str]] = field(default_factory=list)
    unloads: list[tuple[str, int]] = field(default_factory=list)
    during_load: list[object] = field(default_factory=list)

    def load(self, model: str, version: int, path: str) -> Fake:
        self.loads.append((model, version, path))
        for hook in self.during_load:
            hook()  # type: ignore[operator]
        error = self.fail.get((model, version))
        if error is not None:
            raise error
        return Fake(model, version)

    def unload(self, servable: Fake) -> None:
        servable.unloaded = True
        self.unloads.append((servable.model, servable.version))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def aspire(
    manager: ModelManager[Fake], model: str, *versions: int, labels: dict[str, int] | None = None
) -> None:
    manager.set_aspired_versions(
        AspiredVersions(model, {v: f"/m/{model}/{v}" for v in versions}, labels or {})
    )


def states(manager: ModelManager[Fake], model: str) -> dict[int, State]:
    return {s.version: s.state for s in manager.model_status(model)}


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(loader: FakeLoader, clock: Clock) -> ModelManager[Fake]:
    return ModelManager(
        loader, clock=clock, settings=ManagerSettings(max_load_retries=2, load_retry_interval_seconds=10)
    )


def test_transition_table_is_the_tf_serving_lifecycle() -> None:
    assert TRANSITIONS[State.START] == {State.LOADING, State.END}
    assert TRANSITIONS[State.LOADING] == {State.AVAILABLE, State.END}
    assert TRANSITIONS[State.AVAILABLE] == {State.UNLOADING}
    assert TRANSITIONS[State.UNLOADING] == {State.END}
    assert TRANSITIONS[State.END] == frozenset()
    assert [int(s) for s in State] == [10, 20, 30, 40, 50]


def test_nothing_happens_before_reconcile(manager: ModelManager[Fake], loader: FakeLoader) -> None:
    aspire(manager, "m", 1)
    assert loader.loads == []
    with pytest.raises(NotFoundError, match=r"Servable not found for request: Latest\(m\)"):
        manager.acquire("m")


def test_load_and_serve_latest(manager: ModelManager[Fake], loader: FakeLoader) -> None:
    aspire(manager, "m", 1, 2)
    manager.reconcile()
    assert loader.loads == [("m", 2, "/m/m/2"), ("m", 1, "/m/m/1")]
    assert states(manager, "m") == {1: State.AVAILABLE, 2: State.AVAILABLE}
    with manager.acquire("m") as handle:
        assert (handle.model, handle.version, handle.servable.version) == ("m", 2, 2)
    with manager.acquire("m", version=1) as handle:
        assert handle.version == 1
    assert manager.is_ready()
    assert manager.model_names() == ["m"]


def test_unknown_model_version_and_label(manager: ModelManager[Fake]) -> None:
    aspire(manager, "m", 1, labels={"stable": 1, "dangling": 7})
    manager.reconcile()
    with pytest.raises(NotFoundError, match=r"Latest\(zzz\)") as info:
        manager.acquire("zzz")
    assert info.value.status is Status.NOT_FOUND
    with pytest.raises(NotFoundError, match=r"Specific\(m, 9\)"):
        manager.acquire("m", version=9)
    with pytest.raises(InvalidInputError, match="Unrecognized servable version label: nope") as label_info:
        manager.acquire("m", label="nope")
    assert label_info.value.status is Status.INVALID_ARGUMENT
    with manager.acquire("m", label="stable") as handle:
        assert handle.version == 1
    with pytest.raises(NotFoundError, match=r"Specific\(m, 7\)"):
        manager.acquire("m", label="dangling")
    with pytest.raises(NotFoundError, match="Could not find any versions of model zzz"):
        manager.model_status("zzz")
    with pytest.raises(NotFoundError, match="Could not find version 9 of model m"):
        manager.model_status("m", version=9)
    assert manager.model_status("m", label="stable") == [VersionStatus("m", 1, State.AVAILABLE)]


def test_new_version_replaces_old_after_it_is_available(
    manager: ModelManager[Fake], loader: FakeLoader
) -> None:
    aspire(manager, "m", 1)
    manager.reconcile()
    aspire(manager, "m", 2)
    seen_during_load: list[int] = []
    loader.during_load.append(lambda: seen_during_load.append(manager.acquire("m").version))
    manager.reconcile()
    # While version 2 was loading, version 1 kept serving; then it was unloaded.
    assert seen_during_load == [1]
    assert states(manager, "m") == {2: State.AVAILABLE, 1: State.UNLOADING}  # the hook above leaked a handle


def test_unload_waits_for_in_flight_requests(manager: ModelManager[Fake], loader: FakeLoader) -> None:
    aspire(manager, "m", 1)
    manager.reconcile()
    in_flight = manager.acquire("m")
    aspire(manager, "m", 2)
    manager.reconcile()
    assert states(manager, "m") == {2: State.AVAILABLE, 1: State.UNLOADING}
    assert loader.unloads == []
    assert not in_flight.servable.unloaded  # the request can finish with its version
    with manager.acquire("m") as handle:  # new requests go to the new version
        assert handle.version == 2
    with pytest.raises(
        ModelUnavailableError, match=r"Version 1 of model m is not available \(state UNLOADING\)"
    ):
        manager.acquire("m", version=1)
    in_flight.release()
    in_flight.release()  # idempotent
    assert loader.unloads == [("m", 1)]
    assert states(manager, "m") == {2: State.AVAILABLE, 1: State.END}
    assert manager.model_status("m", version=1) == [VersionStatus("m", 1, State.END)]
    with pytest.raises(NotFoundError):
        manager.acquire("m", version=1)


def test_failing_version_reported_and_never_served(
    manager: ModelManager[Fake], loader: FakeLoader, clock: Clock
) -> None:
    aspire(manager, "good", 1)
    aspire(manager, "m", 1)
    manager.reconcile()
    loader.fail[("m", 2)] = LoadError("cannot read model file saved_model.pb (InvalidTag)")
    aspire(manager, "m", 2)
    manager.reconcile()
    assert loader.loads.count(("m", 2, "/m/m/2")) == 1
    # Retrying: still LOADING with the error, the old version keeps serving.
    (status,) = manager.model_status("m", version=2)
    assert status.state is State.LOADING
    assert status.error == "cannot read model file saved_model.pb (InvalidTag)"
    with manager.acquire("m") as handle:
        assert handle.version == 1
    with pytest.raises(ModelUnavailableError, match=r"state LOADING") as info:
        manager.acquire("m", version=2)
    assert info.value.status is Status.FAILED_PRECONDITION
    manager.reconcile()  # retry not due yet
    assert loader.loads.count(("m", 2, "/m/m/2")) == 1
    clock.now += 10
    manager.reconcile()
    clock.now += 10
    manager.reconcile()
    assert loader.loads.count(("m", 2, "/m/m/2")) == 3  # first try + max_load_retries
    clock.now += 1000
    manager.reconcile()
    assert loader.loads.count(("m", 2, "/m/m/2")) == 3
    (status,) = manager.model_status("m", version=2)
    assert status.state is State.END
    assert status.error is not None
    with pytest.raises(ModelUnavailableError, match=r"state END"):
        manager.acquire("m", version=2)
    # The last good version and the other model keep serving.
    with manager.acquire("m") as handle:
        assert handle.version == 1
    with manager.acquire("good") as handle:
        assert handle.version == 1
    assert not manager.is_ready() or states(manager, "m")[1] is State.AVAILABLE
    # Still aspired: not retried on every poll.
    aspire(manager, "m", 2)
    manager.reconcile()
    assert loader.loads.count(("m", 2, "/m/m/2")) == 3
    # Republished after it left the aspired set: tried again (e.g. the files were fixed).
    del loader.fail[("m", 2)]
    aspire(manager, "m", 1)
    manager.reconcile()
    aspire(manager, "m", 2)
    manager.reconcile()
    assert states(manager, "m") == {1: State.END, 2: State.AVAILABLE}


def test_unexpected_loader_exception_gives_generic_error(
    manager: ModelManager[Fake], loader: FakeLoader
) -> None:
    loader.fail[("m", 1)] = RuntimeError("secret detail 0xdeadbeef")
    manager = ModelManager(loader, settings=ManagerSettings(max_load_retries=0))
    aspire(manager, "m", 1)
    manager.reconcile()
    (status,) = manager.model_status("m")
    assert status.state is State.END
    assert status.error == "internal error while loading (RuntimeError)"
    with pytest.raises(ModelUnavailableError, match="No version of model m is available"):
        manager.acquire("m")
    assert not manager.is_ready()


def test_unaspired_before_loading_goes_to_end(
    manager: ModelManager[Fake], loader: FakeLoader, clock: Clock
) -> None:
    loader.fail[("m", 1)] = LoadError("broken")
    aspire(manager, "m", 1)
    manager.reconcile()
    assert states(manager, "m") == {1: State.LOADING}
    aspire(manager, "m")  # withdrawn while waiting for a retry
    manager.reconcile()
    assert states(manager, "m") == {1: State.END}
    assert len(loader.loads) == 1


def test_model_removed_from_config_is_unloaded(manager: ModelManager[Fake], loader: FakeLoader) -> None:
    aspire(manager, "a", 1)
    aspire(manager, "b", 3)
    manager.reconcile()
    manager.retain_models(["b"])
    manager.reconcile()
    assert states(manager, "a") == {1: State.END}
    assert loader.unloads == [("a", 1)]
    with manager.acquire("b") as handle:
        assert handle.version == 3
    assert manager.is_ready()


def test_unload_error_is_contained(manager: ModelManager[Fake], loader: FakeLoader) -> None:
    aspire(manager, "m", 1)
    manager.reconcile()

    def boom(servable: Fake) -> None:
        raise RuntimeError("unload failed")

    loader.unload = boom  # type: ignore[method-assign]
    aspire(manager, "m")
    manager.reconcile()
    assert states(manager, "m") == {1: State.END}


def test_illegal_transition_is_refused() -> None:
    from confserve.serving._manager import _Version

    record: _Version[Fake] = _Version(1, "/p")
    with pytest.raises(RuntimeError, match="START -> AVAILABLE"):
        record.move(State.AVAILABLE)


def test_store_poll_once_drives_source_and_manager(loader: FakeLoader) -> None:
    class Opener:
        def __init__(self) -> None:
            self.trees = {"/m/a": ["1/saved_model.pb"]}

        def read_bytes(self, path: str) -> bytes:
            raise AssertionError

        def list_files(self, directory: str) -> list[str]:
            return self.trees[directory]

    opener = Opener()
    manager: ModelManager[Fake] = ModelManager(loader)
    store = ModelStore([ModelConfig("a", "/m/a")], opener, manager)
    store.poll_once()
    assert states(manager, "a") == {1: State.AVAILABLE}
    opener.trees["/m/a"] = ["1/saved_model.pb", "2/saved_model.pb"]
    store.poll_once()
    assert states(manager, "a") == {1: State.END, 2: State.AVAILABLE}


def test_run_polling_stops_when_told(loader: FakeLoader) -> None:
    import threading

    class Opener:
        calls = 0

        def read_bytes(self, path: str) -> bytes:
            raise AssertionError

        def list_files(self, directory: str) -> list[str]:
            self.calls += 1
            if self.calls == 1:
                raise OSError("transient")
            return ["1/saved_model.pb"]

    class StopAfter(threading.Event):
        waits = 0

        def wait(self, timeout: float | None = None) -> bool:
            self.waits += 1
            return self.waits >= 2

    opener = Opener()
    manager: ModelManager[Fake] = ModelManager(loader)
    store = ModelStore([ModelConfig("a", "/m/a")], opener, manager)
    stop = StopAfter()
    store.run_polling(stop, 5.0)
    assert stop.waits == 2
    assert states(manager, "a") == {1: State.AVAILABLE}
    store.run_polling(threading.Event(), -1)  # negative: one poll, no wait
    assert opener.calls == 3


def test_run_polling_survives_poll_errors(
    loader: FakeLoader, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A poll that raises is logged (type only) and polling goes on: the next poll still runs."""
    import logging

    manager: ModelManager[Fake] = ModelManager(loader)
    store: ModelStore[Fake] = ModelStore([], object(), manager)  # type: ignore[arg-type]
    polls: list[int] = []
    marker = "-".join(("tensor", "value", "4217"))  # not in the source line the stack shows

    def fails_once() -> None:
        polls.append(len(polls))
        if len(polls) == 1:
            raise RuntimeError(marker)

    class StopAfterSecondPoll:
        def wait(self, timeout: float | None = None) -> bool:
            return len(polls) >= 2

    monkeypatch.setattr(store, "poll_once", fails_once)
    with caplog.at_level(logging.ERROR):
        store.run_polling(StopAfterSecondPoll(), 5.0)  # type: ignore[arg-type]
    assert polls == [0, 1]  # polled again after the failure
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith("model store poll: unexpected RuntimeError")
    assert marker not in errors[0]
