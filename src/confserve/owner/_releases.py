"""The owner's releases: publish a signed release of an encrypted model tree, and rotate its key.

`publish_release` signs what the tree holds now (every version directory and file) as the model's next
release. `rotate_key` re-encrypts the versions of the current release under a new wrap key, as *new*
version numbers, and publishes a release that lists only those (docs/releases.md, "Key rotation"):

1. the policy grants the replicas both keys (the owner edits it and reloads the key service);
2. `rotate_key`: each file of each current version is read once, checked against the current release,
   decrypted in memory with the old key and encrypted with the new one, bound to its new version's path;
   each new version appears at once (written under a name the replicas ignore, then renamed); the new
   release is written last, atomically;
3. replicas see the new release at their next poll, fetch the new key (a renewal at once), load the new
   versions and unload the old ones once the new ones are available: TF Serving's version transition,
   so requests never fail;
4. the owner retires the old key from the policy (and may raise the model's floor to the new release, so
   a host can no longer put the old release back).

New version numbers, not the same ones: a version number names fixed content in TF Serving (a client may
pin it), and a replica serves a version from memory once loaded, so re-encrypting a version in place
would need the replica to reload a version it already serves. Clients that pin a version use labels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from confserve import pf
from confserve.files import read_input
from confserve.releases import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    Release,
    ReleaseError,
    ReleaseKey,
    manifest_for_tree,
    sign_release,
    verify_release,
)

__all__ = ["current_release", "publish_release", "rotate_key"]


def current_release(base: Path, model: str, key: ReleaseKey) -> Release | None:
    """The release published in `base`, verified with the owner's own key; None if there is none."""
    manifest = base / MANIFEST_FILE
    if not manifest.exists():
        return None
    try:
        return verify_release(read_input(manifest, max_bytes=MAX_MANIFEST_BYTES), key.public_key, model=model)
    except ReleaseError as exc:
        raise ReleaseError(f"{manifest}: {exc} (move it away to start the numbering again)") from None


def _write_release(base: Path, text: bytes) -> None:
    # a polling replica sees the old or the new manifest, never half of one
    pf.write_public_file(base / MANIFEST_FILE, text, replace=True)


def publish_release(
    base: Path,
    *,
    model: str,
    bind_root: str,
    key: ReleaseKey,
    key_id: str | None = None,
    number: int | None = None,
) -> Release:
    """Sign the tree as it is now as the model's next release (or `number`, which must be higher).
    `key_id`: the wrap key's id (default: the previous release's, else "default")."""
    previous = current_release(base, model, key)
    if number is None:
        number = 0 if previous is None else previous.release + 1
    elif previous is not None and number <= previous.release:
        raise ReleaseError(f"release {number} is not above the published release {previous.release}")
    if key_id is None:
        key_id = previous.key_id if previous is not None else "default"
    versions = manifest_for_tree(base, bind_root)
    text = sign_release(key, model=model, release=number, key_id=key_id, versions=versions)
    _write_release(base, text)
    return verify_release(text, key.public_key, model=model)


def rotate_key(
    base: Path,
    *,
    model: str,
    bind_root: str,
    key: ReleaseKey,
    old_key: pf.WrapKey,
    new_key: pf.WrapKey,
    new_key_id: str,
) -> tuple[Release, dict[int, int]]:
    """Re-encrypt the current release's versions under `new_key` as new versions and publish the next
    release listing only them; returns it and old version -> new version."""
    current = current_release(base, model, key)
    if current is None:
        raise ReleaseError(f"{base} has no release to rotate (publish one first)")
    if new_key_id == current.key_id:
        raise ReleaseError(f"release {current.release} already uses key {new_key_id!r}: name the new key")
    root = bind_root.rstrip("/")
    on_disk = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
    first = max([*current.versions, *on_disk]) + 1
    renumbered = {old: first + i for i, old in enumerate(sorted(current.versions))}
    versions: dict[int, dict[str, str]] = {}
    for old, new in renumbered.items():
        versions[new] = _reencrypt_version(base, root, current, old, new, old_key, new_key)
    text = sign_release(key, model=model, release=current.release + 1, key_id=new_key_id, versions=versions)
    _write_release(base, text)
    return verify_release(text, key.public_key, model=model), renumbered


def _reencrypt_version(
    base: Path, root: str, current: Release, old: int, new: int, old_key: pf.WrapKey, new_key: pf.WrapKey
) -> dict[str, str]:
    """Version `old` of `current`, re-encrypted as version `new`; returns its files (bound path -> hash)."""
    staging = base / f".{new}.partial-{os.getpid()}"
    files: dict[str, str] = {}
    prefix = f"{root}/"
    try:
        for bound in sorted(current.version_files(old)):
            if not bound.startswith(prefix):
                raise ReleaseError(f"{bound} is not under the bind root {root}")
            _, _, rest = bound[len(prefix) :].partition("/")  # VERSION/REST
            data = read_input(base / bound[len(prefix) :])
            current.check_file(old, bound, data)  # only what the release lists is carried over
            plaintext = pf.decrypt_bytes(data, old_key, bound_path=bound)
            try:
                new_bound = f"{root}/{new}/{rest}"
                ciphertext = pf.encrypt_bytes(bytes(plaintext), new_key, bound_path=new_bound)
            finally:
                plaintext[:] = bytes(len(plaintext))  # wipe the decrypted buffer
            target = staging / rest
            target.parent.mkdir(parents=True, exist_ok=True)
            pf.write_public_file(target, ciphertext)
            files[new_bound] = hashlib.sha256(ciphertext).hexdigest()
        os.rename(staging, base / str(new))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files
