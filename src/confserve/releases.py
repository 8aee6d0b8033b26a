"""Owner-signed model releases: what a replica may load, and how fresh it must be.

Protected files authenticate each file's content and bind it to a path, but give no freshness: the
host can put back an older file, an older version or a withdrawn model encrypted under the same key.
A release closes that. The owner signs, with an Ed25519 release key, a manifest of one model:

| field      | meaning                                                                              |
|------------|--------------------------------------------------------------------------------------|
| `model`    | the model's name                                                                     |
| `release`  | the release number, monotonic per model (a replica refuses one below its floor)     |
| `key_id`   | the id of the wrap key the files are encrypted under                                 |
| `versions` | version -> {bound path -> SHA-256 of the file's ciphertext}: every file the version has |

The file `release.json` beside the versions (in the model's base path) holds the canonical JSON of that
manifest (base64) and the signature over exactly those bytes, so no re-serialisation can change what
was signed. The owner's public release key is part of a replica's measured configuration, so the host
cannot swap it. A replica loads only versions a valid release lists, and only files whose ciphertext
hash matches (checked on the bytes it then decrypts); docs/releases.md has the whole scheme.

Standard library and `cryptography` only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from confserve.errors import ConfserveError, Status

__all__ = [
    "MANIFEST_FILE",
    "MAX_MANIFEST_BYTES",
    "Release",
    "ReleaseError",
    "ReleaseKey",
    "load_public_key",
    "manifest_for_tree",
    "public_key_id",
    "sign_release",
    "verify_release",
]

FORMAT: Final = "confserve-release-v1"
MANIFEST_FILE: Final = "release.json"
# A manifest lists a few files per version and a few versions: 1 MiB bounds what a host can make us parse.
MAX_MANIFEST_BYTES: Final = 1 << 20
_MAX_RELEASE: Final = 2**53  # exact in JSON numbers everywhere
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ReleaseError(ConfserveError):
    """A release manifest that must not be trusted: malformed, not signed by the pinned key, for another
    model, below the floor, or a file that does not match it. The message says which, never a key."""

    status = Status.FAILED_PRECONDITION


@dataclass(frozen=True)
class Release:
    """A verified release manifest."""

    model: str
    release: int
    key_id: str
    versions: dict[int, dict[str, str]]  # version -> {bound path -> ciphertext SHA-256 (hex)}

    def version_files(self, version: int) -> dict[str, str]:
        files = self.versions.get(version)
        if files is None:
            raise ReleaseError(f"model {self.model!r}: version {version} is not in release {self.release}")
        return files

    def check_file(self, version: int, bound_path: str, ciphertext: bytes) -> None:
        """Raise ReleaseError unless the release lists `bound_path` in `version` with this content."""
        expected = self.version_files(version).get(bound_path)
        if expected is None:
            raise ReleaseError(f"{bound_path} is not in release {self.release} of model {self.model!r}")
        if hashlib.sha256(ciphertext).hexdigest() != expected:
            raise ReleaseError(f"{bound_path} differs from release {self.release} of model {self.model!r}")


def public_key_id(key: ed25519.Ed25519PublicKey) -> str:
    """A short, stable id of a release public key: the SHA-256 of its raw 32 bytes, first 16 hex digits."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(data: bytes) -> ed25519.Ed25519PublicKey:
    """The owner's release public key from PEM; anything else is refused."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ReleaseError("the release public key is not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ReleaseError("the release public key is not an Ed25519 key")
    return key


class ReleaseKey:
    """The owner's Ed25519 release signing key. Never shown in repr."""

    def __init__(self, private: ed25519.Ed25519PrivateKey) -> None:
        self._private = private

    def __repr__(self) -> str:
        return f"ReleaseKey(id={self.key_id})"

    @classmethod
    def generate(cls) -> ReleaseKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> ReleaseKey:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ReleaseError("not a PEM private key (an unencrypted Ed25519 release key)") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ReleaseError("the release key is not an Ed25519 key")
        return cls(key)

    def private_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._private.public_key()

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def key_id(self) -> str:
        return public_key_id(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)


def _canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_release(
    key: ReleaseKey, *, model: str, release: int, key_id: str, versions: dict[int, dict[str, str]]
) -> bytes:
    """The text of a release.json for this manifest, signed with `key`."""
    _check_fields(model, release, key_id, {str(v): files for v, files in versions.items()})
    payload = _canonical(
        {
            "format": FORMAT,
            "model": model,
            "release": release,
            "key_id": key_id,
            "versions": {str(v): dict(sorted(files.items())) for v, files in sorted(versions.items())},
        }
    )
    document = {
        "format": FORMAT,
        "signer": key.key_id,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signature": base64.b64encode(key.sign(payload)).decode("ascii"),
    }
    return (json.dumps(document, indent=1) + "\n").encode("ascii")


def verify_release(
    data: bytes, public_key: ed25519.Ed25519PublicKey, *, model: str, floor: int = 0
) -> Release:
    """Verify a release.json against the pinned public key, for `model`, at or above `floor`."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ReleaseError(f"release manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ReleaseError(f"not a {FORMAT} release manifest")
        payload = base64.b64decode(document["payload"], validate=True)
        signature = base64.b64decode(document["signature"], validate=True)
    except ReleaseError:
        raise
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise ReleaseError("the release manifest is malformed") from None
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        raise ReleaseError("the release manifest is not signed by the owner's release key") from None
    try:
        fields = json.loads(payload)
        if not isinstance(fields, dict) or fields.get("format") != FORMAT:
            raise ReleaseError("the signed manifest has an unknown format")
        name, number, key_id, versions = (
            fields["model"],
            fields["release"],
            fields["key_id"],
            fields["versions"],
        )
    except ReleaseError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ReleaseError("the signed manifest is malformed") from None
    _check_fields(name, number, key_id, versions)
    if name != model:
        raise ReleaseError(f"the release manifest is for model {name!r}, not {model!r}")
    if number < floor:
        raise ReleaseError(f"release {number} of model {model!r} is below its floor {floor} (withdrawn)")
    return Release(
        model=name,
        release=number,
        key_id=key_id,
        versions={int(v): dict(files) for v, files in versions.items()},
    )


def _check_fields(model: object, release: object, key_id: object, versions: object) -> None:
    if not isinstance(model, str) or not _NAME.fullmatch(model):
        raise ReleaseError("the release names no valid model")
    if type(release) is not int or not 0 <= release < _MAX_RELEASE:
        raise ReleaseError("the release number is not a non-negative integer")
    if not isinstance(key_id, str) or not _NAME.fullmatch(key_id):
        raise ReleaseError("the release names no valid key id")
    if not isinstance(versions, dict) or not versions:
        raise ReleaseError("the release lists no version")
    for version, files in versions.items():
        if not isinstance(version, str) or not version.isdigit() or len(version) > 19:
            raise ReleaseError("a release version is not a non-negative integer")
        if not isinstance(files, dict) or not files:
            raise ReleaseError(f"release version {version} lists no file")
        for path, digest in files.items():
            if not isinstance(path, str) or not path or "\x00" in path or len(path) > 4096:
                raise ReleaseError(f"release version {version} lists an invalid path")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise ReleaseError(f"release version {version}: {path} has no SHA-256")


def manifest_for_tree(base_dir: Path, bind_root: str) -> dict[int, dict[str, str]]:
    """The versions of an encrypted model tree (BASE/VERSION/...) with each file's bound path (under
    `bind_root`, as `model encrypt --bind-root` bound it) and the SHA-256 of its ciphertext."""
    versions: dict[int, dict[str, str]] = {}
    for entry in sorted(base_dir.iterdir()):
        if not entry.is_dir() or entry.is_symlink() or not entry.name.isdigit():
            continue
        files: dict[str, str] = {}
        for path in sorted(p for p in entry.rglob("*") if p.is_file() and not p.is_symlink()):
            bound = f"{bind_root.rstrip('/')}/{path.relative_to(base_dir).as_posix()}"
            with path.open("rb") as handle:
                files[bound] = hashlib.file_digest(handle, "sha256").hexdigest()
        if files:
            versions[int(entry.name)] = files
    if not versions:
        raise ReleaseError(f"{base_dir} holds no version directory with files")
    return versions
