"""Release gating in the model store: only what a valid owner-signed release lists is served, each file
checked against the release on the bytes that are then decrypted. Every attack of docs/releases.md is
refused with its reason in the model status, while other models keep serving."""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from confserve import pf
from confserve.releases import MANIFEST_FILE, MAX_MANIFEST_BYTES, ReleaseKey, manifest_for_tree, sign_release
from confserve.serving import (
    AllVersions,
    KeyGrant,
    LatestVersions,
    ModelConfig,
    ModelManager,
    ModelStore,
    ReleasedOpener,
    ReleaseMetrics,
    ReleaseRefusedError,
    State,
    StaticKeys,
)


class ReadingLoader:
    """Reads every file of a version through the opener, as the SavedModel loader does."""

    def __init__(self, opener: ReleasedOpener) -> None:
        self.opener = opener
        self.loaded: list[tuple[str, int]] = []

    def load(self, model: str, version: int, path: str) -> dict[str, bytes]:
        files = self.opener.list_files(path)
        contents = {rel: self.opener.read_bytes(posixpath.join(path, rel)) for rel in files}
        self.loaded.append((model, version))
        return contents

    def unload(self, servable: dict[str, bytes]) -> None:
        pass


@dataclass
class Owner:
    """The owner's side: keys, and a host directory (the replica's working directory) with models."""

    host: Path
    release_key: ReleaseKey
    keys: dict[str, pf.WrapKey]

    def write_version(self, model: str, version: int, content: bytes, key_id: str = "k1") -> None:
        """Encrypt a two-file version bound to models/MODEL/VERSION/..., as `model encrypt` does."""
        base = self.host / "models" / model / str(version)
        (base / "variables").mkdir(parents=True, exist_ok=True)
        for rel, data in (("saved_model.pb", b"pb:" + content), ("variables/v.data", b"data:" + content)):
            bound = f"models/{model}/{version}/{rel}"
            (base / rel).write_bytes(pf.encrypt_bytes(data, self.keys[key_id], bound_path=bound))

    def publish(
        self, model: str, number: int, key_id: str = "k1", *, signer: ReleaseKey | None = None
    ) -> bytes:
        base = self.host / "models" / model
        versions = manifest_for_tree(base, f"models/{model}")
        text = sign_release(
            signer or self.release_key, model=model, release=number, key_id=key_id, versions=versions
        )
        (base / MANIFEST_FILE).write_bytes(text)
        return text


class Replica:
    """A replica's model store with a pinned release key, in the host directory (bound paths relative)."""

    def __init__(
        self, owner: Owner, models: tuple[str, ...], grant: KeyGrant, *, every_version: bool = False
    ) -> None:
        self.now = 100.0
        self.keys = StaticKeys(grant)
        self.opener = ReleasedOpener(owner.release_key.public_key, self.keys, clock=lambda: self.now)
        self.loader = ReadingLoader(self.opener)
        self.manager: ModelManager[dict[str, bytes]] = ModelManager(self.loader)
        policy = AllVersions() if every_version else LatestVersions()
        configs = [ModelConfig(m, f"models/{m}", version_policy=policy) for m in models]
        self.store = ModelStore(configs, self.opener, self.manager)

    def poll(self) -> None:
        self.store.poll_once()

    def status(self, model: str) -> dict[int, tuple[State, str | None]]:
        return {s.version: (s.state, s.error) for s in self.manager.model_status(model)}

    def serving(self, model: str) -> tuple[int, dict[str, bytes]]:
        with self.manager.acquire(model) as handle:
            return handle.version, handle.servable


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[Owner]:
    host = tmp_path / "host"
    host.mkdir()
    old = os.getcwd()
    os.chdir(host)  # the replica runs in the host directory: bound paths are models/NAME/...
    try:
        yield Owner(host, ReleaseKey.generate(), {"k1": pf.WrapKey.generate(), "k2": pf.WrapKey.generate()})
    finally:
        os.chdir(old)


def grant_of(owner: Owner, *key_ids: str, **floors: int) -> KeyGrant:
    return KeyGrant(keys={k: owner.keys[k] for k in key_ids}, floors=floors, expires_at=1000.0)


@pytest.fixture
def served(owner: Owner) -> Replica:
    """Models m (release 1: version 1) and other (release 1: version 1), both served."""
    for model in ("m", "other"):
        owner.write_version(model, 1, b"v1")
        owner.publish(model, 1)
    replica = Replica(owner, ("m", "other"), grant_of(owner, "k1"))
    replica.poll()
    assert replica.serving("m") == (1, {"saved_model.pb": b"pb:v1", "variables/v.data": b"data:v1"})
    return replica


def assert_other_serves(replica: Replica) -> None:
    assert replica.status("other") == {1: (State.AVAILABLE, None)}


def test_a_valid_release_is_served_and_its_key_wanted(served: Replica) -> None:
    assert served.keys.wanted == (frozenset({"k1"}), frozenset({"m", "other"}))
    assert [(r.model, r.release, r.key_id, r.error) for r in served.opener.releases()] == [
        ("m", 1, "k1", None),
        ("other", 1, "k1", None),
    ]


def test_an_older_file_at_the_same_path_is_refused(owner: Owner, served: Replica) -> None:
    """The host puts back the ciphertext of an older file: same key, same bound path, valid on its own."""
    old = (owner.host / "models/m/1/variables/v.data").read_bytes()
    owner.write_version("m", 2, b"v2")
    owner.publish("m", 2)
    served.poll()
    assert served.serving("m")[0] == 2
    # Version 2 is re-encrypted by the owner with new content; the host swaps in an older copy of one file
    # at version 2's path (encrypted for that path under the same key: a valid protected file).
    older = pf.encrypt_bytes(b"data:v1", owner.keys["k1"], bound_path="models/m/2/variables/v.data")
    assert pf.decrypt_bytes(older, owner.keys["k1"], bound_path="models/m/2/variables/v.data") == b"data:v1"
    (owner.host / "models/m/2/variables/v.data").write_bytes(older)
    with pytest.raises(ReleaseRefusedError, match=r"models/m/2/variables/v.data differs from release 2"):
        served.opener.read_bytes("models/m/2/variables/v.data")
    # A reload of the version fails with that reason (as after a restart); version 1's old file too.
    fresh = Replica(owner, ("m",), grant_of(owner, "k1"))
    fresh.poll()
    assert fresh.status("m")[2][0] is State.LOADING
    assert "differs from release 2" in str(fresh.status("m")[2][1])
    assert old != older


def test_a_whole_older_version_is_not_served(owner: Owner, served: Replica) -> None:
    """Release 2 lists version 2 only; the host puts version 1's directory back."""
    shutil.move(owner.host / "models/m/1", owner.host / "v1")
    owner.write_version("m", 2, b"v2")
    owner.publish("m", 2)
    served.poll()
    shutil.move(owner.host / "v1", owner.host / "models/m/1")  # put back
    loads = len(served.loader.loaded)
    for _ in range(2):
        served.poll()
    assert served.serving("m")[0] == 2
    assert served.status("m")[1][0] is State.END
    assert len(served.loader.loaded) == loads  # never loaded again
    with pytest.raises(ReleaseRefusedError, match="version 1 is not in release 2"):
        served.opener.read_bytes("models/m/1/saved_model.pb")


def test_an_older_manifest_is_refused_once_a_newer_one_was_accepted(owner: Owner, served: Replica) -> None:
    old_manifest = (owner.host / "models/m" / MANIFEST_FILE).read_bytes()
    owner.write_version("m", 2, b"v2")
    owner.publish("m", 2)
    served.poll()
    (owner.host / "models/m" / MANIFEST_FILE).write_bytes(old_manifest)  # the host rolls back
    served.poll()
    status = served.status("m")
    assert all(state is State.END for state, _ in status.values())
    assert "release 1 of model 'm' is below its floor 2 (withdrawn)" in str(status[2][1])
    assert_other_serves(served)


def test_a_withdrawn_release_is_unloaded_when_the_floor_rises(owner: Owner, served: Replica) -> None:
    served.keys.grant = grant_of(owner, "k1", m=2)  # the owner withdrew release 1 of m
    served.poll()
    assert served.status("m") == {1: (State.END, "release 1 of model 'm' is below its floor 2 (withdrawn)")}
    assert_other_serves(served)
    # The owner publishes release 2: served again.
    owner.write_version("m", 2, b"v2")
    owner.publish("m", 2)
    served.poll()
    assert served.serving("m") == (2, {"saved_model.pb": b"pb:v2", "variables/v.data": b"data:v2"})


def test_a_withdrawn_release_is_refused_even_if_its_directory_cannot_be_listed(
    owner: Owner, served: Replica
) -> None:
    (owner.host / "models/m").rename(owner.host / "hidden")  # the host hides the tree
    served.poll()
    assert served.status("m")[1][0] is State.AVAILABLE  # a storage error alone unloads nothing
    served.keys.grant = grant_of(owner, "k1", m=2)
    served.poll()
    assert served.status("m") == {1: (State.END, "release 1 is below its floor (withdrawn)")}


@pytest.mark.parametrize("signer", ["other key", "unsigned", "edited"])
def test_a_manifest_not_signed_by_the_owner_is_refused(owner: Owner, served: Replica, signer: str) -> None:
    owner.write_version("m", 2, b"v2")
    manifest = owner.host / "models/m" / MANIFEST_FILE
    if signer == "other key":
        owner.publish("m", 2, signer=ReleaseKey.generate())
        reason = "not signed by the owner's release key"
    elif signer == "unsigned":
        manifest.write_text('{"format": "confserve-release-v1", "payload": "", "signature": ""}')
        reason = "not signed by the owner's release key"
    else:
        text = owner.publish("m", 2).replace(b'"signature": "', b'"signature": "AAAA')
        manifest.write_bytes(text)
        reason = "malformed|not signed"
    served.poll()
    state, error = served.status("m")[1]
    assert state is State.END
    assert error is not None
    assert any(part in error for part in reason.split("|")), error
    assert_other_serves(served)


def test_a_missing_or_oversized_manifest_is_refused(owner: Owner, served: Replica) -> None:
    manifest = owner.host / "models/m" / MANIFEST_FILE
    manifest.write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    served.poll()
    assert "cannot read release.json" in str(served.status("m")[1][1])
    manifest.unlink()
    served.poll()
    assert served.status("m")[1] == (State.END, "cannot read release.json (FileNotFoundError)")
    assert_other_serves(served)


def test_a_file_added_to_a_version_is_refused(owner: Owner, served: Replica) -> None:
    extra = owner.host / "models/m/1/variables/extra.data"
    extra.write_bytes(pf.encrypt_bytes(b"x", owner.keys["k1"], bound_path="models/m/1/variables/extra.data"))
    served.poll()
    assert served.status("m") == {1: (State.END, "variables/extra.data is not in release 1")}
    assert_other_serves(served)
    with pytest.raises(ReleaseRefusedError, match="not in release 1"):  # a read races the poll: refused too
        served.opener.read_bytes("models/m/1/variables/extra.data")
    extra.unlink()
    served.poll()
    served.poll()
    assert served.status("m") == {1: (State.AVAILABLE, None)}


def test_a_refused_version_is_unloaded_even_when_no_other_is_available(owner: Owner) -> None:
    """Refusal is not a version transition: the refused version goes at once, even when the model's
    other versions are not available (here version 2 fails to load: one of its files was swapped)."""
    for version in (1, 2):
        owner.write_version("m", version, b"v%d" % version)
    owner.publish("m", 1)
    pb2 = owner.host / "models/m/2/saved_model.pb"
    pb2.write_bytes(pf.encrypt_bytes(b"other", owner.keys["k1"], bound_path="models/m/2/saved_model.pb"))
    replica = Replica(owner, ("m",), grant_of(owner, "k1"), every_version=True)
    replica.poll()
    assert replica.status("m")[1] == (State.AVAILABLE, None)
    assert replica.status("m")[2][0] is State.LOADING
    extra = owner.host / "models/m/1/extra"
    extra.write_bytes(b"x")
    replica.poll()
    assert replica.status("m")[1] == (State.END, "extra is not in release 1")
    extra.unlink()
    replica.poll()
    replica.poll()
    assert replica.status("m")[1] == (State.AVAILABLE, None)


def test_a_file_missing_from_a_version_is_refused(owner: Owner, served: Replica) -> None:
    (owner.host / "models/m/1/variables/v.data").unlink()
    served.poll()
    assert served.status("m") == {1: (State.END, "models/m/1/variables/v.data of release 1 is missing")}


def test_a_version_whose_files_changed_is_reloaded(owner: Owner, served: Replica) -> None:
    owner.write_version("m", 1, b"v1 fixed")
    owner.publish("m", 2)
    served.poll()
    assert served.status("m") == {1: (State.END, "files changed in release 2: reloading")}
    served.poll()
    assert served.serving("m") == (
        1,
        {"saved_model.pb": b"pb:v1 fixed", "variables/v.data": b"data:v1 fixed"},
    )


def test_an_expired_lease_or_a_withdrawn_key_stops_serving(owner: Owner, served: Replica) -> None:
    served.now = 1000.0
    served.poll()
    assert served.status("m") == {1: (State.END, "the key lease expired: this replica could not renew it")}
    assert served.status("other")[1][0] is State.END
    with pytest.raises(ReleaseRefusedError):
        served.opener.read_bytes("models/other/1/saved_model.pb")
    served.now = 100.0
    served.keys.grant = KeyGrant(keys={}, expires_at=1000.0, denied=frozenset({"k1"}))
    served.poll()
    assert served.status("m") == {1: (State.END, "key 'k1' of release 1 is not granted")}


def test_key_rotation_keeps_serving_until_the_new_key_arrives(owner: Owner, served: Replica) -> None:
    """The rotated release lists version 2 only, under k2; version 1 stays on disk while replicas move."""
    shutil.move(owner.host / "models/m/1", owner.host / "v1")
    owner.write_version("m", 2, b"v2", key_id="k2")
    owner.publish("m", 2, key_id="k2")
    shutil.move(owner.host / "v1", owner.host / "models/m/1")
    served.poll()  # k2 not held yet: release 1 keeps serving, k2 is wanted
    assert served.serving("m")[0] == 1
    assert served.keys.wanted[0] == {"k1", "k2"}
    served.keys.grant = grant_of(owner, "k1", "k2")
    served.poll()
    assert served.serving("m") == (2, {"saved_model.pb": b"pb:v2", "variables/v.data": b"data:v2"})
    assert served.status("m")[1][0] is State.END  # unloaded once version 2 was available
    assert served.keys.wanted[0] == {"k1", "k2"}  # k1: model other
    # The old key retired: nothing of m needs it.
    served.keys.grant = grant_of(owner, "k2")
    served.poll()
    assert served.serving("m")[0] == 2


def test_a_new_key_that_is_not_granted_refuses_the_model(owner: Owner, served: Replica) -> None:
    owner.write_version("m", 2, b"v2", key_id="k2")
    owner.publish("m", 2, key_id="k2")
    served.keys.grant = KeyGrant(keys={"k1": owner.keys["k1"]}, expires_at=1000.0, denied=frozenset({"k2"}))
    served.poll()
    assert served.status("m")[1] == (State.END, "key 'k2' of release 2 is not granted")


def test_a_first_release_without_its_key_waits(owner: Owner) -> None:
    owner.write_version("m", 1, b"v1")
    owner.publish("m", 1)
    replica = Replica(owner, ("m",), KeyGrant(expires_at=1000.0))
    replica.poll()
    assert replica.status("m") == {1: (State.END, "waiting for key 'k1' of release 1")}
    assert replica.keys.wanted == (frozenset({"k1"}), frozenset({"m"}))
    replica.keys.grant = grant_of(owner, "k1")
    replica.poll()
    assert replica.serving("m")[0] == 1


def test_reads_outside_a_released_model_are_refused(owner: Owner, served: Replica) -> None:
    with pytest.raises(ReleaseRefusedError, match="not under a released model"):
        served.opener.read_bytes("models/unknown/1/saved_model.pb")
    with pytest.raises(ReleaseRefusedError, match="version 3 is not in release 1"):
        served.opener.read_bytes("models/m/3/saved_model.pb")


def test_plaintext_releases(owner: Owner) -> None:
    """Development (--allow_plaintext): unencrypted files, still checked against the release."""
    base = owner.host / "models/p/1"
    base.mkdir(parents=True)
    (base / "saved_model.pb").write_bytes(b"plain")
    owner.publish("p", 1)
    opener = ReleasedOpener(owner.release_key.public_key, StaticKeys(KeyGrant()), plaintext=True)
    manager: ModelManager[dict[str, bytes]] = ModelManager(ReadingLoader(opener))
    ModelStore([ModelConfig("p", "models/p")], opener, manager).poll_once()
    with manager.acquire("p") as handle:
        assert handle.servable == {"saved_model.pb": b"plain"}
    (base / "saved_model.pb").write_bytes(b"swapped")
    with pytest.raises(ReleaseRefusedError, match="differs from release 1"):
        opener.read_bytes("models/p/1/saved_model.pb")


def test_release_metrics(owner: Owner, served: Replica) -> None:
    served.keys.grant = grant_of(owner, "k1", m=1)
    served.poll()
    registry = CollectorRegistry()
    registry.register(ReleaseMetrics(served.opener, clock=lambda: served.now, wall_clock=lambda: 5000.0))
    text = generate_latest(registry).decode()
    assert 'confserve_model_release{model_name="m"} 1.0' in text
    assert 'confserve_model_release{model_name="other"} 1.0' in text
    assert 'confserve_model_release_floor{model_name="m"} 1.0' in text
    assert "confserve_key_lease_expiry_timestamp_seconds 5900.0" in text  # expires 900 s after "now"
    served.keys.grant = grant_of(owner, "k1", m=2)  # m withdrawn: no release served
    served.poll()
    text = generate_latest(registry).decode()
    assert 'confserve_model_release{model_name="m"}' not in text
    assert 'confserve_model_release_floor{model_name="m"} 2.0' in text
