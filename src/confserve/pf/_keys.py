"""Wrap keys: the 16 raw bytes from which every protected file's metadata key is derived
(docs/formats.md#pf-wrap-key).

A key file holds exactly 16 raw bytes (no hex, no newline), as `gramine-sgx-pf-crypt gen-key` writes.
`WrapKey` never shows its bytes in `repr` or `str`, so it cannot leak into a log line by accident.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from confserve.files import open_input
from confserve.pf._errors import WrapKeyError
from confserve.pf._format import KEY_SIZE
from confserve.pf._output import write_private_file

__all__ = ["WrapKey"]


class WrapKey:
    """A 16-byte AES-128 key-derivation key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | bytearray) -> None:
        if not isinstance(key, bytes | bytearray):
            raise WrapKeyError(f"a wrap key must be bytes, not {type(key).__name__}")
        if len(key) != KEY_SIZE:
            raise WrapKeyError(f"a wrap key is {KEY_SIZE} bytes, got {len(key)}")
        self._key = bytes(key)

    @classmethod
    def generate(cls) -> WrapKey:
        """A fresh key from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(KEY_SIZE))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WrapKey:
        """Read a key file of exactly 16 raw bytes."""
        try:
            with open_input(path) as f:
                data = f.read(KEY_SIZE + 1)
        except OSError as e:
            raise WrapKeyError(f"cannot read wrap key file {os.fspath(path)!r}: {e.strerror}") from None
        if len(data) != KEY_SIZE:
            size = f"{len(data)}" if len(data) <= KEY_SIZE else f"more than {KEY_SIZE}"
            raise WrapKeyError(
                f"wrap key file {os.fspath(path)!r} holds {size} bytes; it must hold exactly "
                f"{KEY_SIZE} raw bytes"
            )
        return cls(data)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key with mode 0600 (`write_private_file`: atomic, no symlink followed). Refuses to
        replace an existing file unless `overwrite`: replacing a key makes everything encrypted under
        it unreadable."""
        try:
            write_private_file(path, self._key, replace=overwrite)
        except FileExistsError:
            raise WrapKeyError(
                f"wrap key file {os.fspath(path)!r} already exists; not replacing it"
            ) from None
        except OSError as e:
            raise WrapKeyError(f"cannot write wrap key file {os.fspath(path)!r}: {e.strerror}") from None

    def raw(self) -> bytes:
        """The key bytes. Handle with care: never log them."""
        return self._key

    def fingerprint(self) -> str:
        """A public identifier of the key (16 hex digits of a domain-separated SHA-256), safe to log."""
        return hashlib.sha256(b"confserve wrap key fingerprint\0" + self._key).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WrapKey) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"WrapKey(fingerprint={self.fingerprint()})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("wrap keys are not picklable")
