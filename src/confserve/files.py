"""Opening a file someone named: regular files only, and never more than the caller's maximum.

Standard library only, and importing nothing else of confserve, so every layer (`pf` included) may use it.

Every file confserve reads because a user, a configuration or the host named it goes through
`open_input` or `read_input`. A plain `open()` of a FIFO blocks until a writer appears (forever, if none
does), a device such as /dev/zero never ends, and a directory or a socket fails with an error that names
neither the file nor the problem. Here the path is opened with O_NONBLOCK (so opening a FIFO returns at
once) and O_NOCTTY (so a terminal never becomes the controlling one), `fstat` of the open descriptor
decides (no window between the check and the use), and anything but a regular file is refused with
`NotRegularFileError`. A socket cannot be opened at all (ENXIO); that is reported the same way. Both errors
are `OSError`s, so callers that already turn an unreadable file into their own error keep doing so.

A maximum, where the caller gives one, is checked against the size `fstat` reports and again while
reading (a file may grow after the check), so a caller never holds more than `max_bytes`.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat
from typing import Final

__all__ = [
    "MAX_SMALL_FILE_BYTES",
    "FileTooLargeError",
    "NotRegularFileError",
    "open_input",
    "read_input",
    "read_input_text",
]

StrPath = str | os.PathLike[str]

# Configurations, policies, measurements, certificates, keys, quotes and collateral are a few KB each (a
# DCAP collateral with its CRLs and chains about 20 KB); 1 MiB is far above any of them and bounds what a
# hostile file can make a parser hold.
MAX_SMALL_FILE_BYTES: Final = 1 << 20

_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
_CHUNK: Final = 1 << 20


class NotRegularFileError(OSError):
    """The path names a directory, FIFO, socket or device where a regular file is expected."""

    def __init__(self, path: StrPath, mode: int) -> None:
        kind = next((name for test, name in _KINDS if test(mode)), "a special file")
        super().__init__(errno.EINVAL, f"{kind}, not a regular file", os.fspath(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class FileTooLargeError(OSError):
    """The file is larger than the caller accepts."""

    def __init__(self, path: StrPath, max_bytes: int) -> None:
        super().__init__(errno.EFBIG, f"file too large (more than {max_bytes} bytes)", os.fspath(path))
        self.max_bytes = max_bytes

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def open_input(path: StrPath, *, max_bytes: int | None = None, follow_symlinks: bool = True) -> io.FileIO:
    """Open a regular file for reading (unbuffered, blocking); anything else raises NotRegularFileError.

    Symbolic links are followed (configurations name files through them) unless `follow_symlinks` is
    false, when a link is an OSError (ELOOP). The caller owns the result.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (or a device without a driver): say what it is
            try:
                mode = os.stat(path, follow_symlinks=follow_symlinks).st_mode
            except OSError:
                raise exc from None
            raise NotRegularFileError(path, mode) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(path, st.st_mode)
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileTooLargeError(path, max_bytes)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_input(path: StrPath, *, max_bytes: int | None = None) -> bytes:
    """The whole content of a regular file, refused if it is (or grows while read) over `max_bytes`."""
    with open_input(path, max_bytes=max_bytes) as handle:
        if max_bytes is None:
            return handle.readall()
        chunks: list[bytes] = []
        total = 0
        while chunk := handle.read(min(_CHUNK, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise FileTooLargeError(path, max_bytes)
        return b"".join(chunks)


def read_input_text(path: StrPath, *, max_bytes: int | None = None, encoding: str = "utf-8") -> str:
    """`read_input` decoded (strictly: a UnicodeDecodeError is the caller's to report)."""
    return read_input(path, max_bytes=max_bytes).decode(encoding)
