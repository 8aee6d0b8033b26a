"""Version policies: which of the versions found on disk a model should serve (pure functions)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from confserve.serving._config import AllVersions, LatestVersions, SpecificVersions, VersionPolicy

__all__ = ["parse_version_dir", "select_versions"]

# TF Serving treats a child of base_path as a version if its name parses as a non-negative int64.
_VERSION_RE = re.compile(r"[0-9]{1,18}")


def parse_version_dir(name: str) -> int | None:
    """The version number for a directory name, or None if it is not a version directory."""
    if not _VERSION_RE.fullmatch(name):
        return None
    return int(name)


def select_versions(policy: VersionPolicy, found: Iterable[int]) -> frozenset[int]:
    """The aspired versions among `found` under `policy`."""
    versions = frozenset(found)
    match policy:
        case LatestVersions(num_versions=n):
            return frozenset(sorted(versions, reverse=True)[:n])
        case AllVersions():
            return versions
        case SpecificVersions(versions=wanted):
            return versions & wanted
