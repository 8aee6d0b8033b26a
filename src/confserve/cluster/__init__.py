"""Running confserve: the local multi-process cluster and its live view, and the renderers of nginx,
Kubernetes and Gramine files.

The renderers are light (standard library) and load with the package; the local cluster, its check
and its live view (TLS, the client, the attestation stack) load on first use of a name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confserve._lazy import lazy_exports
from confserve.cluster._gramine import (
    VARIANTS,
    EnclavePlan,
    GramineConfig,
    GramineError,
    Variant,
    plan_enclave,
    render_gramine_manifest,
)
from confserve.cluster._k8s import (
    K8sSettings,
    Measurement,
    render_k8s_deployment,
    render_k8s_tree,
    write_files,
)
from confserve.cluster._k8s_common import OVERLAYS, K8sError, Overlay
from confserve.cluster._nginx import (
    NginxConfig,
    NginxError,
    NginxProcess,
    find_nginx,
    find_stream_module,
    render_nginx,
)

if TYPE_CHECKING:
    from confserve.cluster._check import CheckResult, audit_entries, check_cluster
    from confserve.cluster._dashboard import Dashboard, render_table, render_text
    from confserve.cluster._local import ClusterState, LocalCluster
    from confserve.cluster._monitor import Monitor
    from confserve.cluster._workspace import Workspace, WorkspaceError, prepare_workspace

# Where each lazily imported name lives: the module is imported on first use.
_LAZY: dict[str, str] = {
    "CheckResult": "_check",
    "audit_entries": "_check",
    "check_cluster": "_check",
    "Dashboard": "_dashboard",
    "render_table": "_dashboard",
    "render_text": "_dashboard",
    "ClusterState": "_local",
    "LocalCluster": "_local",
    "Monitor": "_monitor",
    "Workspace": "_workspace",
    "WorkspaceError": "_workspace",
    "prepare_workspace": "_workspace",
}

__all__ = [
    "OVERLAYS",
    "VARIANTS",
    "CheckResult",
    "ClusterState",
    "Dashboard",
    "EnclavePlan",
    "GramineConfig",
    "GramineError",
    "K8sError",
    "K8sSettings",
    "LocalCluster",
    "Measurement",
    "Monitor",
    "NginxConfig",
    "NginxError",
    "NginxProcess",
    "Overlay",
    "Variant",
    "Workspace",
    "WorkspaceError",
    "audit_entries",
    "check_cluster",
    "find_nginx",
    "find_stream_module",
    "plan_enclave",
    "prepare_workspace",
    "render_gramine_manifest",
    "render_k8s_deployment",
    "render_k8s_tree",
    "render_nginx",
    "render_table",
    "render_text",
    "write_files",
]


__getattr__ = lazy_exports(__name__, _LAZY)
