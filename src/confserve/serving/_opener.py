"""Where model bytes come from: a `FileOpener` reads whole files into memory.

The loader never opens model files itself; it asks an opener. `PlainOpener` reads ordinary files. An
opener for Gramine protected files (decrypting with a key released after attestation) plugs in here with
the same two methods, so the store and loader do not know whether a model was encrypted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from confserve.files import read_input

__all__ = ["FileOpener", "PlainOpener"]


@runtime_checkable
class FileOpener(Protocol):
    """Reads model files. Paths are host paths; listings are relative POSIX paths, sorted."""

    def read_bytes(self, path: str) -> bytes:
        """Return the whole (plaintext) content of the file at `path`; raise OSError if unreadable."""
        ...

    def list_files(self, directory: str) -> list[str]:
        """Relative paths of all regular files under `directory`, recursively, sorted.

        Raise OSError (e.g. FileNotFoundError) if `directory` cannot be listed.
        """
        ...


class PlainOpener:
    """Reads unencrypted files from the local file system."""

    def read_bytes(self, path: str) -> bytes:
        return read_input(path)  # a regular file only: the host could swap in a FIFO after listing

    def list_files(self, directory: str) -> list[str]:
        root = Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(f"not a directory: {directory}")
        found: list[str] = []
        # followlinks=False: a symlinked directory inside a model tree is not walked (no loops).
        for current, _dirs, files in os.walk(root):
            for name in files:
                full = Path(current) / name
                if full.is_file():
                    found.append(full.relative_to(root).as_posix())
        return sorted(found)
