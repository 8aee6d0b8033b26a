"""Model serving core: model store (source, version policy, manager), SavedModel loading, DataPlane.

Imports no gRPC or HTTP framework. `DataPlane`, `SavedModelLoader` and `SavedModelServable` need the
TensorFlow Serving protos (which import TensorFlow), so they are imported lazily on first access; the rest
of the package is importable without TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confserve._lazy import lazy_exports
from confserve.serving._admission import Admission
from confserve.serving._config import (
    AllVersions,
    LatestVersions,
    ModelConfig,
    SpecificVersions,
    VersionPolicy,
    model_configs_from_proto,
    parse_model_server_config,
)
from confserve.serving._errors import (
    ConfigError,
    FailedPreconditionError,
    InvalidInputError,
    LoadError,
    ModelUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
    ResourceExhaustedError,
    ServingError,
    UnimplementedError,
    log_unexpected,
)
from confserve.serving._manager import (
    TRANSITIONS,
    Loader,
    ManagerSettings,
    ModelManager,
    ServableHandle,
    State,
    VersionStatus,
)
from confserve.serving._memory import (
    MemoryBudget,
    MemoryLimits,
    RequestMemory,
    default_memory_limits,
    replica_memory_bytes,
    trim_heap,
)
from confserve.serving._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from confserve.serving._metrics import DEFAULT_METRICS_PATH, ServingMetrics
from confserve.serving._opener import FileOpener, PlainOpener
from confserve.serving._policy import select_versions
from confserve.serving._protected import ProtectedOpener
from confserve.serving._releases import (
    FLOOR_METRIC,
    LEASE_EXPIRY_METRIC,
    RELEASE_METRIC,
    GatedVersions,
    KeyGrant,
    KeyProvider,
    ModelRelease,
    ReleasedOpener,
    ReleaseMetrics,
    ReleaseRefusedError,
    StaticKeys,
    VersionGate,
)
from confserve.serving._source import AspiredVersions, FileSystemSource
from confserve.serving._store import ModelStore
from confserve.serving._tensors import dtype_name

if TYPE_CHECKING:
    from confserve.serving._dataplane import GRPC, REST, DataPlane, DataPlaneSettings, Servable
    from confserve.serving._savedmodel import (
        DEFAULT_SAVED_MODEL_TAGS,
        SavedModelLoader,
        SavedModelServable,
        parse_saved_model_tags,
        set_tensorflow_threads,
    )
    from confserve.serving._warmup import WarmupLoader

__all__ = [
    "DEFAULT_METRICS_PATH",
    "DEFAULT_SAVED_MODEL_TAGS",
    "FLOOR_METRIC",
    "GRPC",
    "LEASE_EXPIRY_METRIC",
    "METRICS_CONTENT_TYPE",
    "RELEASE_METRIC",
    "REST",
    "TRANSITIONS",
    "Admission",
    "AllVersions",
    "AspiredVersions",
    "ConfigError",
    "DataPlane",
    "DataPlaneSettings",
    "FailedPreconditionError",
    "FileOpener",
    "FileSystemSource",
    "GatedVersions",
    "InvalidInputError",
    "KeyGrant",
    "KeyProvider",
    "LatestVersions",
    "LoadError",
    "Loader",
    "ManagerSettings",
    "MemoryBudget",
    "MemoryLimits",
    "ModelConfig",
    "ModelManager",
    "ModelRelease",
    "ModelStore",
    "ModelUnavailableError",
    "NotFoundError",
    "PermissionDeniedError",
    "PlainOpener",
    "ProtectedOpener",
    "ReleaseMetrics",
    "ReleaseRefusedError",
    "ReleasedOpener",
    "RequestMemory",
    "RequestTooLargeError",
    "ResourceExhaustedError",
    "SavedModelLoader",
    "SavedModelServable",
    "Servable",
    "ServableHandle",
    "ServingError",
    "ServingMetrics",
    "SpecificVersions",
    "State",
    "StaticKeys",
    "UnimplementedError",
    "VersionGate",
    "VersionPolicy",
    "VersionStatus",
    "WarmupLoader",
    "default_memory_limits",
    "dtype_name",
    "log_unexpected",
    "model_configs_from_proto",
    "parse_model_server_config",
    "parse_saved_model_tags",
    "replica_memory_bytes",
    "select_versions",
    "set_tensorflow_threads",
    "trim_heap",
]

_LAZY = {
    "DataPlane": "_dataplane",
    "DataPlaneSettings": "_dataplane",
    "GRPC": "_dataplane",
    "REST": "_dataplane",
    "Servable": "_dataplane",
    "SavedModelLoader": "_savedmodel",
    "SavedModelServable": "_savedmodel",
    "DEFAULT_SAVED_MODEL_TAGS": "_savedmodel",
    "parse_saved_model_tags": "_savedmodel",
    "set_tensorflow_threads": "_savedmodel",
    "WarmupLoader": "_warmup",
}

__getattr__ = lazy_exports(__name__, _LAZY)
