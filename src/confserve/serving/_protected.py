"""An opener for model trees stored as Gramine protected files (decrypted in memory only).

Every file of a version must be a protected file under the wrap key; a plaintext or tampered file fails
the load (fail closed), it is never served as-is. Each file is bound to a path when encrypted (see
confserve.pf); by default that must be the path the server opens it under, so the host cannot swap files
between models, versions or names. `bound_path_for` maps an opened path to its expected binding when the
tree was encrypted for another root (for example the in-enclave mount point).
"""

from __future__ import annotations

from collections.abc import Callable

from confserve.pf import WrapKey, normalize_path, read_protected
from confserve.serving._opener import PlainOpener

__all__ = ["ProtectedOpener"]


class ProtectedOpener:
    """`FileOpener` that decrypts Gramine protected files with `key`; listings are plain (file names are
    not encrypted by the format)."""

    def __init__(self, key: WrapKey, *, bound_path_for: Callable[[str], str] | None = None) -> None:
        self._key = key
        self._bound_path_for = bound_path_for or normalize_path
        self._lister = PlainOpener()

    def read_bytes(self, path: str) -> bytes:
        plaintext = read_protected(path, self._key, bound_path=self._bound_path_for(path))
        try:
            return bytes(plaintext)
        finally:
            plaintext[:] = bytes(len(plaintext))  # wipe the decrypted buffer we own

    def list_files(self, directory: str) -> list[str]:
        return self._lister.list_files(directory)
