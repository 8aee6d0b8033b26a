"""Model configuration: TF Serving's `ModelServerConfig` text proto, parsed with the real protos.

Only `model_config_list` is supported (as in TF Serving without custom sources). Each entry becomes a
frozen `ModelConfig`; everything is validated here, once, so the store never sees a bad value.
Source: tensorflow_serving/config/model_server_config.proto, g3doc/serving_config.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from confserve.serving._errors import ConfigError

__all__ = [
    "AllVersions",
    "LatestVersions",
    "ModelConfig",
    "SpecificVersions",
    "VersionPolicy",
    "model_configs_from_proto",
    "parse_model_server_config",
]

# g3doc/api_rest.md: "version labels must match [a-zA-Z0-9_]+".
_LABEL_RE = re.compile(r"[A-Za-z0-9_]+")
# Model names appear in REST paths (/v1/models/<name>); '/' and ':' would make them ambiguous.
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_PLATFORM = "tensorflow"


@dataclass(frozen=True)
class LatestVersions:
    """Serve the `num_versions` highest version numbers found."""

    num_versions: int = 1


@dataclass(frozen=True)
class AllVersions:
    """Serve every version found."""


@dataclass(frozen=True)
class SpecificVersions:
    """Serve exactly these versions (those present on disk)."""

    versions: frozenset[int]


VersionPolicy = LatestVersions | AllVersions | SpecificVersions


@dataclass(frozen=True)
class ModelConfig:
    """One served model: where its versions live and which of them to serve."""

    name: str
    base_path: str
    platform: str = _PLATFORM
    version_policy: VersionPolicy = LatestVersions()
    version_labels: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


def parse_model_server_config(text: str) -> tuple[ModelConfig, ...]:
    """Parse an ASCII ModelServerConfig (the `--model_config_file` format)."""
    message = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        # TF Serving's wording (its text-format parser's error, as main.cc reports a bad --model_config_file).
        raise ConfigError(f"Error parsing text-format tensorflow.serving.ModelServerConfig: {exc}") from None
    return model_configs_from_proto(message)


def model_configs_from_proto(message: model_server_config_pb2.ModelServerConfig) -> tuple[ModelConfig, ...]:
    """Validate a ModelServerConfig message and convert it to frozen `ModelConfig`s."""
    kind = message.WhichOneof("config")
    if kind is None:
        return ()
    if kind != "model_config_list":
        raise ConfigError(f"unsupported ModelServerConfig field: {kind} (only model_config_list)")
    configs: list[ModelConfig] = []
    seen: set[str] = set()
    for entry in message.model_config_list.config:
        config = _model_config(entry)
        if config.name in seen:
            raise ConfigError(f"duplicate model name in config: {config.name}")
        seen.add(config.name)
        configs.append(config)
    return tuple(configs)


def _model_config(entry: model_server_config_pb2.ModelConfig) -> ModelConfig:
    name = entry.name
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"invalid model name: {name!r}")
    if not entry.base_path:
        raise ConfigError(f"model {name}: base_path is required")
    platform = entry.model_platform or _PLATFORM
    if platform != _PLATFORM:
        raise ConfigError(f"model {name}: unsupported model_platform {platform!r}")
    labels: dict[str, int] = {}
    for label, version in entry.version_labels.items():
        if not _LABEL_RE.fullmatch(label):
            raise ConfigError(f"model {name}: invalid version label {label!r} (must match [a-zA-Z0-9_]+)")
        labels[label] = version
    return ModelConfig(
        name=name,
        base_path=entry.base_path,
        platform=platform,
        version_policy=_policy(name, entry),
        version_labels=MappingProxyType(labels),
    )


def _policy(name: str, entry: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    policy = entry.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return AllVersions()
    if kind == "specific":
        versions = frozenset(policy.specific.versions)
        if not versions:
            raise ConfigError(f"model {name}: specific version policy lists no versions")
        if any(v < 0 for v in versions):
            raise ConfigError(f"model {name}: version numbers must not be negative")
        return SpecificVersions(versions)
    if kind == "latest":
        # file_system_storage_path_source.proto: num_versions "The default is 1", so 0 means 1.
        return LatestVersions(max(1, policy.latest.num_versions))
    return LatestVersions()  # no policy: TF Serving serves the latest version
