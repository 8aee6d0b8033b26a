"""Writing files safely: the one writer of secret material (keys, plaintext, ssl.cfg) and of the files
written beside it.

Theory of operation. The bytes go to a new temporary file in the target's directory, opened with
O_CREAT|O_EXCL|O_NOFOLLOW (so nothing already there, a symlink planted by someone else included, is
opened or followed) and given its final mode with fchmod before the first byte is written (the mode
given to open is filtered by the umask; fchmod is not). Once every byte is written the file is
fsynced and moved into place in one step:

- `replace=False` (the default): a hard link to the target name, which fails if anything, even a
  dangling symlink, already has that name; the temporary name is then removed. Refusing is the safe
  default: replacing a key makes everything encrypted under it unreadable.
- `replace=True`: a rename over the target, which replaces a symlink itself rather than the file it
  points to.

The directory is fsynced after the move, so the new name survives a crash. On any failure the
temporary file is removed and the target is untouched: there is never a partial file under the
target's name. Errors are `OSError`s (`FileExistsError` when the target exists and `replace` is
False); callers turn them into their own errors and never put the data in a message.

The temporary file and the link both live in the target's directory: a filesystem without hard
links (some network and FAT filesystems) cannot take `replace=False` writes and says so with an
OSError.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["PRIVATE_MODE", "PUBLIC_MODE", "atomic_output", "write_private_file", "write_public_file"]

PRIVATE_MODE = 0o600  # keys, plaintext, configuration holding a key: the owner only
PUBLIC_MODE = 0o644  # certificates, public keys, encrypted files: anyone may read


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _naming(exc: OSError, target: Path) -> OSError:
    """The same error, naming the target rather than the temporary file (what the user asked for)."""
    return type(exc)(exc.errno, exc.strerror, os.fspath(target))


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, mode: int = PRIVATE_MODE, replace: bool = False
) -> Iterator[BinaryIO]:
    """A writable (and readable, seekable) file that appears at `path`, with `mode`, only when the
    block ends without an exception (see the module's docstring)."""
    target = Path(path)
    directory = target.parent
    tmp = directory / f".{target.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise _naming(exc, target) from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w+b") as handle:
            fd = -1  # the file object owns it now
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target, follow_symlinks=False)  # fails if the name exists: create-if-absent
            except OSError as exc:
                raise _naming(exc, target) from None
            os.unlink(tmp)
        _fsync_directory(directory)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_private_file(path: str | os.PathLike[str], data: bytes, *, replace: bool = False) -> None:
    """Write secret `data` (a key, plaintext, a configuration holding a key) to `path` with mode 0600,
    atomically; refuses to replace an existing file unless `replace` (FileExistsError)."""
    with atomic_output(path, mode=PRIVATE_MODE, replace=replace) as handle:
        handle.write(data)


def write_public_file(path: str | os.PathLike[str], data: bytes, *, replace: bool = False) -> None:
    """`write_private_file` for what anyone may read (certificates, public keys): mode 0644."""
    with atomic_output(path, mode=PUBLIC_MODE, replace=replace) as handle:
        handle.write(data)
