"""The bound path: which string a protected file stores, exactly as Gramine computes it.

Gramine binds a protected file to the *normalised host path* it is opened under (docs/formats.md#pf-path): the
mount URI without `file:`, plus `/` and the path relative to the mount point, normalised lexically by
`get_norm_path`. The comparison on open is byte-for-byte. No symlink resolution, no cwd joining, no basename:
"models/m/1/saved_model.pb" and "/models/m/1/saved_model.pb" are different bindings.
"""

from __future__ import annotations

from confserve.pf._errors import InvalidPathError
from confserve.pf._format import PATH_MAX_SIZE

__all__ = ["bind_path", "normalize_path"]


def normalize_path(path: str) -> str:
    """Gramine's lexical normalisation (docs/formats.md#pf-path).

    Collapses repeated `/`, drops `.` components, lets `x/..` remove `x`, keeps leading `..` in a
    relative path, drops `..` at the root of an absolute path, removes a trailing `/`, and keeps an
    absolute path absolute and a relative path relative.
    """
    absolute = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append("..")
            continue
        parts.append(part)
    joined = "/".join(parts)
    return "/" + joined if absolute else joined


def bind_path(path: str) -> bytes:
    """The exact bytes stored in (and compared against) a protected file's header for `path`."""
    normalized = normalize_path(path)
    if not normalized or normalized == "/":
        raise InvalidPathError(f"cannot bind a protected file to the empty path {path!r}")
    if "\x00" in normalized:
        raise InvalidPathError("a bound path cannot contain a NUL character")
    encoded = normalized.encode("utf-8")
    if len(encoded) >= PATH_MAX_SIZE:
        raise InvalidPathError(
            f"bound path is {len(encoded)} bytes; Gramine allows at most {PATH_MAX_SIZE - 1}"
        )
    return encoded
