"""The file-system source: polls each model's base_path and publishes its aspired versions.

A version is a child directory of base_path named by a non-negative integer and holding a
`saved_model.pb` (the opener decides whether that file is encrypted). Each poll publishes, per model, the
*complete* aspired set chosen by the version policy; the manager reconciles towards it, so a version left
out is unloaded. A model whose base_path cannot be listed is left out of the poll result (the manager then
keeps what it has) rather than published as empty, so a transient storage error does not unload a model.

When the opener is also a `VersionGate` (a replica with a pinned release key, `_releases`), the gate says
which versions exist: only those its model's signed release lists, and which are refused (with a reason;
the manager unloads them).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from confserve.serving._config import ModelConfig
from confserve.serving._opener import FileOpener
from confserve.serving._policy import parse_version_dir, select_versions
from confserve.serving._releases import VersionGate

__all__ = ["AspiredVersions", "FileSystemSource"]

_log = logging.getLogger(__name__)
_SAVED_MODEL_PB = "saved_model.pb"


@dataclass(frozen=True)
class AspiredVersions:
    """The full desired state of one model: version -> directory, plus version labels, and the versions
    refused (version -> reason: never served, unloaded if loaded)."""

    model: str
    paths: Mapping[int, str]
    labels: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    refused: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))


class FileSystemSource:
    """Lists version directories through a `FileOpener` and applies each model's version policy."""

    def __init__(self, models: Sequence[ModelConfig], opener: FileOpener) -> None:
        self._models = tuple(models)
        self._opener = opener
        self._gate = opener if isinstance(opener, VersionGate) else None

    @property
    def model_names(self) -> frozenset[str]:
        return frozenset(m.name for m in self._models)

    def poll(self) -> list[AspiredVersions]:
        """One pass over every configured model; models that could not be listed are omitted."""
        result: list[AspiredVersions] = []
        for model in self._models:
            try:
                files: list[str] | None = self._opener.list_files(model.base_path)
            except OSError as exc:
                _log.warning("model %s: cannot list base path: %s", model.name, exc.__class__.__name__)
                files = None
            refused: Mapping[int, str] = MappingProxyType({})
            if self._gate is not None:
                # Even unlistable, a gated model is refused once its release is withdrawn or its lease over.
                gated = self._gate.gate(model, files)
                if gated is None:
                    continue
                found, refused = dict(gated.versions), gated.refused
            elif files is None:
                continue
            else:
                found = self._versions(model, files)
            chosen = select_versions(model.version_policy, found)
            if not chosen and found:
                _log.warning("model %s: no version found on disk matches the version policy", model.name)
            result.append(
                AspiredVersions(
                    model=model.name,
                    paths=MappingProxyType({v: found[v] for v in sorted(chosen)}),
                    labels=model.version_labels,
                    refused=refused,
                )
            )
        return result

    @staticmethod
    def _versions(model: ModelConfig, files: list[str]) -> dict[int, str]:
        found: dict[int, str] = {}
        for rel in files:
            parts = rel.split("/")
            if len(parts) == 2 and parts[1] == _SAVED_MODEL_PB:
                version = parse_version_dir(parts[0])
                if version is not None:
                    found[version] = posixpath.join(model.base_path, parts[0])
        return found
