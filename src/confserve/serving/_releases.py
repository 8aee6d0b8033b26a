"""Release gating: a replica serves only what a valid owner-signed release lists (docs/releases.md).

Theory of operation
-------------------
With a pinned release public key, every model's base path must hold `release.json`, the owner's signed
manifest (`confserve.releases`). `ReleasedOpener` is the `FileOpener` of such a replica and also the
source's gate: on every poll the source hands it each model's file listing and publishes only what
`gate` returns.

Per model and poll, `gate`:

1. refuses the whole model when the key lease has expired (fail closed: the replica could not renew);
2. reads `BASE/release.json` (a plain file, at most 1 MiB) and verifies it against the pinned key, the
   model's name and its floor: the higher of the key service's floor for the model and the highest
   release this replica has accepted for it (a release number never goes down in a replica's life);
3. needs the wrap key the release names. A release whose key this replica has not asked for yet is
   *pending*: the key is requested (`KeyProvider.want`) and, meanwhile, the release accepted before keeps
   serving if it is still valid (key rotation: the new key arrives within a renewal, nothing stops). A key
   that was asked for and not granted refuses the model;
4. publishes the versions the accepted release lists whose directory holds exactly the files the release
   names (a file missing or added refuses that version). Versions on disk that the release does not list
   are never published. A version whose files changed from one release to the next is refused for one
   poll, so the manager unloads what it had loaded and loads the new files.

A refused model or version is published as `refused` with its reason: the manager unloads it even if
nothing else of the model is available, and GetModelStatus shows the reason. Other models keep serving.

`read_bytes` (the loader's reads) reads each file once, checks the SHA-256 of those exact bytes against
the accepted release, and decrypts the same bytes with the release's key: nothing is read twice, so the
host cannot swap a file between the check and the decryption.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from types import MappingProxyType
from typing import Final, Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import ed25519
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from confserve.files import read_input
from confserve.pf import WrapKey, decrypt_bytes, normalize_path
from confserve.releases import MANIFEST_FILE, MAX_MANIFEST_BYTES, Release, ReleaseError, verify_release
from confserve.serving._config import ModelConfig
from confserve.serving._errors import LoadError
from confserve.serving._opener import PlainOpener
from confserve.serving._policy import parse_version_dir

__all__ = [
    "FLOOR_METRIC",
    "LEASE_EXPIRY_METRIC",
    "RELEASE_METRIC",
    "GatedVersions",
    "KeyGrant",
    "KeyProvider",
    "ModelRelease",
    "ReleaseMetrics",
    "ReleaseRefusedError",
    "ReleasedOpener",
    "StaticKeys",
    "VersionGate",
]

_log = logging.getLogger(__name__)
_EMPTY: Mapping[str, int] = MappingProxyType({})
RELEASE_METRIC: Final = "confserve_model_release"
FLOOR_METRIC: Final = "confserve_model_release_floor"
LEASE_EXPIRY_METRIC: Final = "confserve_key_lease_expiry_timestamp_seconds"


class ReleaseRefusedError(LoadError):
    """A file that the accepted release does not list, or lists with other content."""


@dataclass(frozen=True)
class KeyGrant:
    """What the key service granted for the current lease."""

    keys: Mapping[str, WrapKey] = field(default_factory=dict)  # key id -> wrap key
    floors: Mapping[str, int] = field(default_factory=lambda: _EMPTY)  # model -> lowest release
    expires_at: float | None = None  # monotonic seconds; None: never (a development key)
    denied: frozenset[str] = frozenset()  # key ids asked for at the last renewal and not granted
    any_key: WrapKey | None = None  # development (--wrap_key): this one key opens every key id

    def key(self, key_id: str) -> WrapKey | None:
        return self.keys.get(key_id, self.any_key)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class KeyProvider(Protocol):
    """The replica's keys and floors (its lease with the key service)."""

    def current(self) -> KeyGrant:
        """The grant in force now."""
        ...

    def want(self, key_ids: Collection[str], models: Collection[str]) -> None:
        """The key ids the accepted and pending releases name, and the gated models: ask for them at the
        next renewal (at once, when something new is wanted)."""
        ...


class StaticKeys:
    """A fixed grant: a development key, plaintext models, tests."""

    def __init__(self, grant: KeyGrant) -> None:
        self.grant = grant
        self.wanted: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())

    def current(self) -> KeyGrant:
        return self.grant

    def want(self, key_ids: Collection[str], models: Collection[str]) -> None:
        self.wanted = (frozenset(key_ids), frozenset(models))


@dataclass(frozen=True)
class GatedVersions:
    """What the source may publish for one model: versions (number -> directory) and refusals."""

    versions: Mapping[int, str]
    refused: Mapping[int, str]


@runtime_checkable
class VersionGate(Protocol):
    """An opener that also decides which versions of a model may be published (the source asks it)."""

    def gate(self, model: ModelConfig, files: Sequence[str] | None) -> GatedVersions | None:
        """`files`: the base path's listing, or None when it cannot be listed. Returns None to leave the
        model as it is (unlistable, but nothing withdrawn)."""
        ...


@dataclass(frozen=True)
class ModelRelease:
    """A model's release state, for status pages."""

    model: str
    release: int | None  # the accepted release, None before one was accepted
    key_id: str | None
    error: str | None


def _token(key_id: str, files: Mapping[str, str]) -> str:
    """What a version's content is in a release: its key id and every file's hash."""
    digest = hashlib.sha256(key_id.encode())
    for path, sha in sorted(files.items()):
        digest.update(b"\0" + path.encode() + b"\0" + sha.encode())
    return digest.hexdigest()


class _ModelState:
    __slots__ = ("accepted", "base_path", "error", "highest", "name", "pending", "tokens", "unlisted")

    def __init__(self, name: str, base_path: str) -> None:
        self.name = name
        self.base_path = base_path
        self.accepted: Release | None = None
        self.highest = -1  # the highest release accepted in this replica's life
        self.error: str | None = None  # the model is refused (nothing of it may be read)
        self.pending: tuple[int, str] | None = None  # a newer release waiting for its key
        self.tokens: dict[int, str] = {}  # version -> token published
        self.unlisted: frozenset[int] = frozenset()


class ReleasedOpener:
    """`FileOpener` and `VersionGate` of a replica with a pinned release key (see the module docstring).

    `plaintext` (development) serves unencrypted files that a release lists; otherwise every file is
    decrypted with the wrap key its release names."""

    def __init__(
        self,
        public_key: ed25519.Ed25519PublicKey,
        keys: KeyProvider,
        *,
        plaintext: bool = False,
        clock: Callable[[], float] = time.monotonic,
        bound_path_for: Callable[[str], str] = normalize_path,
    ) -> None:
        self._public_key = public_key
        self._keys = keys
        self._plaintext = plaintext
        self._clock = clock
        self._bound_path_for = bound_path_for
        self._lister = PlainOpener()
        self._lock = threading.Lock()
        self._models: dict[str, _ModelState] = {}

    @property
    def keys(self) -> KeyProvider:
        return self._keys

    # -- the source's gate ------------------------------------------------------------------------------

    def gate(self, model: ModelConfig, files: Sequence[str] | None) -> GatedVersions | None:
        grant = self._keys.current()
        with self._lock:
            state = self._models.get(model.name)
            if state is None or state.base_path != model.base_path:
                highest = -1 if state is None else state.highest
                state = self._models[model.name] = _ModelState(model.name, model.base_path)
                state.highest = highest
            if files is None:
                result = self._unlisted(model, state, grant)
            else:
                result = self._gate(model, state, _versions_on_disk(files), grant)
            wanted = {s.pending[1] for s in self._models.values() if s.pending is not None}
            wanted |= {s.accepted.key_id for s in self._models.values() if s.accepted is not None}
            models = set(self._models)
        if not self._plaintext:
            self._keys.want(wanted, models)
        return result

    def _unlisted(self, model: ModelConfig, state: _ModelState, grant: KeyGrant) -> GatedVersions | None:
        """The base path cannot be listed: keep what is loaded unless its release has been withdrawn."""
        accepted = state.accepted
        if grant.expired(self._clock()):
            return self._refuse(state, {}, "the key lease expired: this replica could not renew it")
        if accepted is None or state.error is not None:
            return None
        if accepted.release < grant.floors.get(model.name, 0):
            return self._refuse(state, {}, f"release {accepted.release} is below its floor (withdrawn)")
        if not self._plaintext and grant.key(accepted.key_id) is None:
            return self._refuse(state, {}, f"key {accepted.key_id!r} is no longer granted")
        return None

    def _gate(
        self, model: ModelConfig, state: _ModelState, on_disk: Mapping[int, _OnDisk], grant: KeyGrant
    ) -> GatedVersions:
        if grant.expired(self._clock()):
            return self._refuse(state, on_disk, "the key lease expired: this replica could not renew it")
        try:
            data = read_input(posixpath.join(model.base_path, MANIFEST_FILE), max_bytes=MAX_MANIFEST_BYTES)
        except OSError as exc:
            return self._refuse(state, on_disk, f"cannot read {MANIFEST_FILE} ({exc.__class__.__name__})")
        floor = max(grant.floors.get(model.name, 0), state.highest)
        try:
            release = verify_release(data, self._public_key, model=model.name, floor=floor)
        except ReleaseError as exc:
            return self._refuse(state, on_disk, str(exc))
        if not self._plaintext and grant.key(release.key_id) is None:
            kept = self._pending(model, state, release, grant)
            if isinstance(kept, str):
                return self._refuse(state, on_disk, kept)
            release = kept  # keep serving the accepted release until the new key arrives
        else:
            state.pending = None
        if state.accepted is None or state.accepted.release != release.release or state.error is not None:
            _log.info("model %s: release %d accepted (key %r)", model.name, release.release, release.key_id)
        state.accepted, state.error = release, None
        state.highest = max(state.highest, release.release)
        return self._publish(model, state, release, on_disk)

    def _pending(
        self, model: ModelConfig, state: _ModelState, release: Release, grant: KeyGrant
    ) -> Release | str:
        """A valid release whose key is not held: the release to serve meanwhile, or why none."""
        pending = (release.release, release.key_id)
        if state.pending != pending:
            _log.info("model %s: release %d needs key %r", model.name, release.release, release.key_id)
        state.pending = pending
        if release.key_id in grant.denied:
            return f"key {release.key_id!r} of release {release.release} is not granted"
        previous = state.accepted
        if previous is None or state.error is not None or grant.key(previous.key_id) is None:
            return f"waiting for key {release.key_id!r} of release {release.release}"
        if previous.release < grant.floors.get(model.name, 0):
            return f"release {previous.release} is below its floor; {release.release} waits for its key"
        return previous

    def _publish(
        self, model: ModelConfig, state: _ModelState, release: Release, on_disk: Mapping[int, _OnDisk]
    ) -> GatedVersions:
        versions: dict[int, str] = {}
        refused: dict[int, str] = {}
        for version, files in sorted(release.versions.items()):
            present = on_disk.get(version)
            if present is None:
                continue
            directory = posixpath.join(model.base_path, present.name)
            bound = {self._bound_path_for(posixpath.join(directory, rel)): rel for rel in present.files}
            extra = sorted(rel for path, rel in bound.items() if path not in files)
            missing = sorted(path for path in files if path not in bound)
            token = _token(release.key_id, files)
            if extra:
                refused[version] = f"{extra[0]} is not in release {release.release}"
            elif missing:
                refused[version] = f"{missing[0]} of release {release.release} is missing"
            elif state.tokens.get(version, token) != token:
                refused[version] = f"files changed in release {release.release}: reloading"
                state.tokens[version] = token
            else:
                state.tokens[version] = token
                versions[version] = directory
        unlisted = frozenset(on_disk) - frozenset(release.versions)
        if unlisted != state.unlisted and unlisted:
            _log.warning(
                "model %s: version(s) %s on disk are not in release %d: not served",
                model.name,
                ", ".join(map(str, sorted(unlisted))),
                release.release,
            )
        state.unlisted = unlisted
        return GatedVersions(MappingProxyType(versions), MappingProxyType(refused))

    def _refuse(self, state: _ModelState, on_disk: Mapping[int, _OnDisk], reason: str) -> GatedVersions:
        if state.error != reason:
            _log.warning("model %s refused: %s", state.name, reason)
        state.error = reason
        state.tokens.clear()
        known = set(on_disk) | (set(state.accepted.versions) if state.accepted is not None else set())
        return GatedVersions(MappingProxyType({}), MappingProxyType(dict.fromkeys(sorted(known), reason)))

    def releases(self) -> list[ModelRelease]:
        """Each gated model's accepted release (for the status endpoint)."""
        with self._lock:
            return [
                ModelRelease(
                    name,
                    s.accepted.release if s.accepted is not None else None,
                    s.accepted.key_id if s.accepted is not None else None,
                    s.error,
                )
                for name, s in sorted(self._models.items())
            ]

    # -- FileOpener -------------------------------------------------------------------------------------

    def list_files(self, directory: str) -> list[str]:
        return self._lister.list_files(directory)

    def read_bytes(self, path: str) -> bytes:
        release, version, key = self._release_for(path)
        data = read_input(path)  # read once: these bytes are checked and then decrypted
        bound = self._bound_path_for(path)
        try:
            release.check_file(version, bound, data)
        except ReleaseError as exc:
            raise ReleaseRefusedError(str(exc)) from None
        if key is None:
            return data
        plaintext = decrypt_bytes(data, key, bound_path=bound)
        try:
            return bytes(plaintext)
        finally:
            plaintext[:] = bytes(len(plaintext))  # wipe the decrypted buffer we own

    def _release_for(self, path: str) -> tuple[Release, int, WrapKey | None]:
        grant = self._keys.current()
        with self._lock:
            for name, state in self._models.items():
                prefix = state.base_path.rstrip("/") + "/"
                if not path.startswith(prefix):
                    continue
                version = parse_version_dir(path[len(prefix) :].split("/", 1)[0])
                if state.error is not None or state.accepted is None or version is None:
                    raise ReleaseRefusedError(f"model {name!r} has no valid release for {path}")
                release = state.accepted
                if version not in release.versions:
                    raise ReleaseRefusedError(
                        f"version {version} is not in release {release.release} of model {name!r}"
                    )
                break
            else:
                raise ReleaseRefusedError(f"{path} is not under a released model")
        if grant.expired(self._clock()):
            raise ReleaseRefusedError("the key lease expired")
        if self._plaintext:
            return release, version, None
        key = grant.key(release.key_id)
        if key is None:
            raise ReleaseRefusedError(f"key {release.key_id!r} of release {release.release} is not held")
        return release, version, key


@dataclass
class _OnDisk:
    name: str  # the directory's name as found (TF Serving also takes "007" for version 7)
    files: set[str]  # relative to the version directory


def _versions_on_disk(files: Sequence[str]) -> dict[int, _OnDisk]:
    """Version number -> its directory and the files under it."""
    found: dict[int, _OnDisk] = {}
    for rel in files:
        head, sep, tail = rel.partition("/")
        version = parse_version_dir(head) if sep else None
        if version is not None:
            found.setdefault(version, _OnDisk(head, set())).files.add(tail)
    return found


@dataclass(frozen=True, eq=False)  # eq=False: a registry keys its collectors by identity
class ReleaseMetrics(Collector):
    """Prometheus families of a release-gated replica (beside TF Serving's, on the same path):

    | family                                         | labels     | value                                |
    |------------------------------------------------|------------|--------------------------------------|
    | confserve_model_release                        | model_name | the release served (absent: none)     |
    | confserve_model_release_floor                  | model_name | the floor from the key service        |
    | confserve_key_lease_expiry_timestamp_seconds   |            | when the key lease ends (Unix time)  |
    """

    opener: ReleasedOpener
    _: KW_ONLY
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time

    def collect(self) -> Iterator[Metric]:
        releases = GaugeMetricFamily(
            RELEASE_METRIC, "The owner's release each model serves.", labels=["model_name"]
        )
        floors = GaugeMetricFamily(
            FLOOR_METRIC, "Each model's lowest acceptable release.", labels=["model_name"]
        )
        for model in self.opener.releases():
            if model.release is not None and model.error is None:
                releases.add_metric([model.model], model.release)
        grant = self.opener.keys.current()
        for name, floor in sorted(grant.floors.items()):
            floors.add_metric([name], floor)
        yield releases
        yield floors
        if grant.expires_at is not None:
            expiry = self.wall_clock() + (grant.expires_at - self.clock())
            yield GaugeMetricFamily(
                LEASE_EXPIRY_METRIC, "When the key lease ends (Unix seconds).", value=expiry
            )
