"""Errors of the protected-file engine.

Every authentication failure (a wrong key, a tampered header, node or tree, a truncated or extended file)
is one `IntegrityError`, and no error ever carries plaintext.
"""

from __future__ import annotations

__all__ = [
    "FormatError",
    "IntegrityError",
    "InvalidPathError",
    "OutputIsInputError",
    "PathMismatchError",
    "PfError",
    "TooLargeError",
    "VersionError",
    "WrapKeyError",
]


class PfError(Exception):
    """Root of every error raised by `confserve.pf`."""


class FormatError(PfError):
    """The input is not a protected file (wrong magic, size not a whole number of 4096-byte nodes)."""


class VersionError(FormatError):
    """A protected file of a format version this reader does not know (Gramine reads only 1 and 2)."""


class IntegrityError(PfError):
    """Authentication failed: wrong key, or the file was modified, truncated, extended or reordered."""


class PathMismatchError(PfError):
    """The file is authentic but bound to another path than the one it is being opened under."""

    def __init__(self, expected: str, stored: str, *, stored_is_normalized: bool = True) -> None:
        hint = "" if stored_is_normalized else " (not normalised, so Gramine can never open this file)"
        super().__init__(f"file is bound to path {stored!r}{hint}, not {expected!r}")
        self.expected = expected
        self.stored = stored


class TooLargeError(PfError):
    """The plaintext is larger than the caller accepts, or than this process can hold in memory."""


class InvalidPathError(PfError, ValueError):
    """A bound path that cannot be stored: empty, containing NUL, or longer than 771 bytes."""


class WrapKeyError(PfError, ValueError):
    """A wrap key of the wrong size, or a key file that cannot be read or written safely."""


class OutputIsInputError(PfError):
    """The output would overwrite the input: the same file (under any spelling, symlink or hard link), or
    for a directory, a place inside the input tree. Refused before anything is written."""
