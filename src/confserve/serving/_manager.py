"""The model manager: reconciles loaded versions towards the aspired versions.

Theory of operation (after TF Serving's AspiredVersionsManager):

- A source publishes, per model, the complete set of aspired versions (`set_aspired_versions`). Nothing
  is loaded or unloaded at that moment; `reconcile()` moves each version one step at a time through the
  explicit state machine below, calling the `Loader` outside the lock so requests keep being served.
- Per version: START -> LOADING -> AVAILABLE -> UNLOADING -> END (see `TRANSITIONS`). A failed load is
  retried up to `max_load_retries` times `load_retry_interval_seconds` apart (by the injected clock),
  staying in LOADING; after the last failure the version goes to END and keeps its error for
  GetModelStatus. A failed version is never served and does not affect other versions or models; it is
  tried again only after the source stops and then resumes publishing it.
- Availability preserving: a version that is no longer aspired is unloaded only once an aspired version of
  the same model is AVAILABLE, or when the model has no aspired version at all, or when the source
  refuses it (`AspiredVersions.refused`: a release gate withdrew it; it keeps the reason as its error).
  While every aspired version is loading or has failed, the old version keeps serving (TF Serving would
  drop it once the new version has failed; serving the last good version is the safer choice for an
  operator).
- Requests hold a ref-counted `ServableHandle`. Unloading first takes the version out of the serving
  table (state UNLOADING, no new handles) and releases the servable only when the last handle is released,
  so in-flight requests never fail because of an unload.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from confserve.serving._errors import (
    InvalidInputError,
    ModelUnavailableError,
    NotFoundError,
    ServingError,
    log_unexpected,
)
from confserve.serving._source import AspiredVersions

__all__ = [
    "TRANSITIONS",
    "Loader",
    "ManagerSettings",
    "ModelManager",
    "ServableHandle",
    "State",
    "VersionStatus",
]

_log = logging.getLogger(__name__)

S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)


class State(enum.IntEnum):
    """Version states; the numbers are TF Serving's ModelVersionStatus.State values."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.START: frozenset({State.LOADING, State.END}),  # END: no longer aspired before loading began
    State.LOADING: frozenset({State.AVAILABLE, State.END}),  # END: last retry failed, or un-aspired
    State.AVAILABLE: frozenset({State.UNLOADING}),
    State.UNLOADING: frozenset({State.END}),
    State.END: frozenset(),
}


@dataclass(frozen=True)
class ManagerSettings:
    """Load retry policy. Defaults are TF Serving's `--max_num_load_retries` (5) and
    `--load_retry_interval_micros` (one minute)."""

    max_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0


@dataclass(frozen=True)
class VersionStatus:
    """What GetModelStatus reports for one version."""

    model: str
    version: int
    state: State
    error: str | None = None


class Loader(Protocol[S]):
    """Turns a version directory into a servable object, and releases it."""

    def load(self, model: str, version: int, path: str) -> S: ...

    def unload(self, servable: S) -> None: ...


class _Version(Generic[S]):
    __slots__ = (
        "attempts",
        "error",
        "in_progress",
        "path",
        "refs",
        "retry_at",
        "retry_when_aspired",
        "servable",
        "state",
        "unload_started",
        "version",
    )

    def __init__(self, version: int, path: str) -> None:
        self.version = version
        self.path = path
        self.state = State.START
        self.error: str | None = None
        self.servable: S | None = None
        self.refs = 0
        self.attempts = 0
        self.retry_at = 0.0
        self.in_progress = False
        self.unload_started = False
        self.retry_when_aspired = False

    def move(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal version state transition {self.state.name} -> {new.name}")
        self.state = new


class _Model(Generic[S]):
    __slots__ = ("aspired", "labels", "refused", "versions")

    def __init__(self) -> None:
        self.aspired: dict[int, str] = {}
        self.labels: dict[str, int] = {}
        self.refused: dict[int, str] = {}
        self.versions: dict[int, _Version[S]] = {}


class ServableHandle(Generic[S_co]):
    """A short-lived reference to one loaded version; release it (or use `with`) when the request ends."""

    def __init__(self, release: Callable[[], None], model: str, version: int, servable: S_co) -> None:
        self._release = release
        self._released = False
        self.model = model
        self.version = version
        self.servable = servable

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()

    def __enter__(self) -> ServableHandle[S_co]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class ModelManager(Generic[S]):
    """Holds every model's versions and moves them towards the aspired state."""

    def __init__(
        self,
        loader: Loader[S],
        *,
        clock: Callable[[], float] = time.monotonic,
        settings: ManagerSettings | None = None,
    ) -> None:
        self._loader = loader
        self._clock = clock
        self._settings = settings or ManagerSettings()
        self._lock = threading.Lock()
        self._reconcile_lock = threading.Lock()
        self._models: dict[str, _Model[S]] = {}

    # -- desired state ----------------------------------------------------------------------------------

    def set_aspired_versions(self, aspired: AspiredVersions) -> None:
        """Replace one model's aspired set (versions left out will be unloaded) and its labels."""
        with self._lock:
            model = self._models.setdefault(aspired.model, _Model())
            model.aspired = dict(aspired.paths)
            model.labels = dict(aspired.labels)
            model.refused = {v: r for v, r in aspired.refused.items() if v not in model.aspired}
            for number, reason in model.refused.items():
                if number not in model.versions:  # shown in GetModelStatus with its reason
                    model.versions[number] = _Version(number, "")
                    model.versions[number].move(State.END)
                if model.versions[number].state is State.END:
                    model.versions[number].error = reason
            for number, record in model.versions.items():
                if number not in model.aspired and record.state is State.END:
                    record.retry_when_aspired = True

    def retain_models(self, names: Collection[str]) -> None:
        """Models not in `names` (removed from the config) get an empty aspired set."""
        keep = set(names)
        for name in list(self._models):
            if name not in keep:
                self.set_aspired_versions(AspiredVersions(model=name, paths={}))

    # -- reconciliation ---------------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Do every load and unload that is due now. Blocking; call from one background thread."""
        with self._reconcile_lock:
            self._retire_all()
            while (record := self._next_load()) is not None:
                self._load(*record)
            self._retire_all()

    def _retire_all(self) -> None:
        to_unload: list[tuple[str, _Version[S]]] = []
        with self._lock:
            for name, model in self._models.items():
                to_unload.extend((name, r) for r in self._retire(model))
        for name, record in to_unload:
            self._unload(name, record)

    def _retire(self, model: _Model[S]) -> list[_Version[S]]:
        """Under the lock: move un-aspired versions towards END; return those to unload now."""
        aspired = [r for v, r in model.versions.items() if v in model.aspired]
        any_available = any(r.state is State.AVAILABLE for r in aspired)
        ready: list[_Version[S]] = []
        for number, record in model.versions.items():
            if number in model.aspired:
                continue
            refused = model.refused.get(number)
            if refused is not None and record.state is not State.END:
                record.error = refused
                record.retry_when_aspired = True
            if record.state is State.START or (record.state is State.LOADING and not record.in_progress):
                record.move(State.END)
            elif record.state is State.AVAILABLE and (any_available or not model.aspired or refused):
                record.move(State.UNLOADING)
                if record.refs == 0:
                    record.unload_started = True
                    ready.append(record)
        return ready

    def _next_load(self) -> tuple[str, _Version[S]] | None:
        """Under the lock: create records for new aspired versions and pick one load that is due."""
        now = self._clock()
        with self._lock:
            for name, model in self._models.items():
                for number in sorted(model.aspired, reverse=True):
                    record = model.versions.get(number)
                    if record is None or (
                        record.state is State.END and (record.error is None or record.retry_when_aspired)
                    ):
                        record = model.versions[number] = _Version(number, model.aspired[number])
                    due = record.state is State.START or (
                        record.state is State.LOADING and not record.in_progress and record.retry_at <= now
                    )
                    if due:
                        if record.state is State.START:
                            record.move(State.LOADING)
                        record.in_progress = True
                        record.attempts += 1
                        return name, record
        return None

    def _load(self, name: str, record: _Version[S]) -> None:
        error: str | None = None
        servable: S | None = None
        try:
            servable = self._loader.load(name, record.version, record.path)
        except ServingError as exc:
            error = exc.message
            _log.warning("model %s version %d: load failed: %s", name, record.version, error)
        except Exception as exc:
            error = f"internal error while loading ({exc.__class__.__name__})"
            log_unexpected(_log, f"model {name} version {record.version}: load", exc)
        with self._lock:
            record.in_progress = False
            record.error = error
            if error is None:
                record.servable = servable
                record.move(State.AVAILABLE)
                _log.info("model %s version %d: available", name, record.version)
            elif record.attempts > self._settings.max_load_retries:
                record.move(State.END)
            else:
                record.retry_at = self._clock() + self._settings.load_retry_interval_seconds

    def _unload(self, name: str, record: _Version[S]) -> None:
        servable = record.servable
        try:
            if servable is not None:
                self._loader.unload(servable)
        except Exception as exc:
            log_unexpected(_log, f"model {name} version {record.version}: unload", exc)
        with self._lock:
            record.servable = None
            record.move(State.END)
        _log.info("model %s version %d: unloaded", name, record.version)

    # -- serving ----------------------------------------------------------------------------------------

    def acquire(
        self, model: str, *, version: int | None = None, label: str | None = None
    ) -> ServableHandle[S]:
        """A handle on the requested version (latest AVAILABLE when neither version nor label is given)."""
        with self._lock:
            record = self._find_serving(model, version, label)
            record.refs += 1
            servable = record.servable
            assert servable is not None
        return ServableHandle(lambda: self._release(model, record), model, record.version, servable)

    def _find_serving(self, name: str, version: int | None, label: str | None) -> _Version[S]:
        model = self._models.get(name)
        request = f"Latest({name})" if version is None and label is None else f"Specific({name}, {version})"
        if model is None or not model.versions:
            raise NotFoundError(f"Servable not found for request: {request}")
        if label is not None:
            version = self._resolve_label(name, model, label)
        if version is None:
            available = [r for r in model.versions.values() if r.state is State.AVAILABLE]
            if not available:
                raise ModelUnavailableError(f"No version of model {name} is available")
            return max(available, key=lambda r: r.version)
        record = model.versions.get(version)
        if record is None or (record.state is State.END and record.error is None):
            raise NotFoundError(f"Servable not found for request: Specific({name}, {version})")
        if record.state is not State.AVAILABLE:
            raise ModelUnavailableError(
                f"Version {version} of model {name} is not available (state {record.state.name})"
            )
        return record

    @staticmethod
    def _resolve_label(name: str, model: _Model[S], label: str) -> int:
        try:
            return model.labels[label]
        except KeyError:
            # TF Serving's text (ServerCore::GetModelVersionForLabel).
            raise InvalidInputError(f"Unrecognized servable version label: {label}") from None

    def _release(self, name: str, record: _Version[S]) -> None:
        with self._lock:
            record.refs -= 1
            unload = record.refs == 0 and record.state is State.UNLOADING and not record.unload_started
            if unload:
                record.unload_started = True
        if unload:
            self._unload(name, record)

    # -- status -----------------------------------------------------------------------------------------

    def model_status(
        self, model: str, *, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """Status of one version, or of every known version newest first (GetModelStatus)."""
        with self._lock:
            entry = self._models.get(model)
            if entry is None or not entry.versions:
                raise NotFoundError(f"Could not find any versions of model {model}")
            if label is not None:
                version = self._resolve_label(model, entry, label)
            if version is not None:
                record = entry.versions.get(version)
                if record is None:
                    raise NotFoundError(f"Could not find version {version} of model {model}")
                records = [record]
            else:
                records = sorted(entry.versions.values(), key=lambda r: r.version, reverse=True)
            return [VersionStatus(model, r.version, r.state, r.error) for r in records]

    def knows(self, model: str) -> bool:
        """Whether `model` is (or was) configured: metrics label only such names."""
        with self._lock:
            return model in self._models

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def is_ready(self) -> bool:
        """True when every model with aspired versions has at least one AVAILABLE version."""
        with self._lock:
            return all(
                any(r.state is State.AVAILABLE for r in m.versions.values())
                for m in self._models.values()
                if m.aspired
            )
