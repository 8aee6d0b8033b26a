"""Running confserve: the local multi-process cluster and rendering of nginx, Kubernetes and Gramine files."""

from confserve.cluster._gramine import (
    VARIANTS,
    EnclavePlan,
    GramineConfig,
    GramineError,
    plan_enclave,
    render_gramine_manifest,
)
from confserve.cluster._k8s import (
    OVERLAYS,
    K8sError,
    K8sSettings,
    Measurement,
    render_k8s_deployment,
    render_k8s_tree,
    write_files,
)
from confserve.cluster._nginx import (
    NginxConfig,
    NginxError,
    NginxProcess,
    find_nginx,
    find_stream_module,
    render_nginx,
)

__all__ = [
    "OVERLAYS",
    "VARIANTS",
    "EnclavePlan",
    "GramineConfig",
    "GramineError",
    "K8sError",
    "K8sSettings",
    "Measurement",
    "NginxConfig",
    "NginxError",
    "NginxProcess",
    "find_nginx",
    "find_stream_module",
    "plan_enclave",
    "render_gramine_manifest",
    "render_k8s_deployment",
    "render_k8s_tree",
    "render_nginx",
    "write_files",
]
