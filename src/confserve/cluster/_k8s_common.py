"""What the Kubernetes objects of the model server and of the key service share: names, ports, images,
the placeholders an owner replaces, the "restricted" Pod Security building blocks, and the error."""

from __future__ import annotations

from typing import Final, Literal, get_args

from confserve.errors import ConfserveError, Status

__all__ = [
    "APP",
    "DEFAULT_SECRET_PROV_HOST",
    "DNS_EGRESS",
    "GRPC_HOST",
    "GRPC_PORT",
    "NAMESPACE",
    "OVERLAYS",
    "PLACEHOLDER_CIDR",
    "PLACEHOLDER_PCCS_CIDR",
    "PLACEHOLDER_PCCS_URL",
    "READY_PATH",
    "REST_HOST",
    "REST_PORT",
    "SECRET_PROV_ALIAS",
    "SECRET_PROV_IMAGE",
    "SECRET_PROV_METRICS_PORT",
    "SECRET_PROV_NAMESPACE",
    "SECRET_PROV_PORT",
    "SECRET_PROV_UID",
    "SERVER",
    "SERVER_IMAGE",
    "SERVER_SGX_IMAGE",
    "SERVER_UID",
    "WORKDIR",
    "K8sError",
    "Overlay",
    "component_labels",
    "disruption_budget",
    "namespace_object",
    "new_kustomization",
    "object_meta",
    "pod_security",
    "pod_template_patch",
    "replace_op",
    "restricted_container",
    "service_account",
    "spread_over_nodes",
]


Overlay = Literal["simulation", "sgx"]
OVERLAYS: Final[tuple[Overlay, ...]] = get_args(Overlay)

NAMESPACE: Final = "confserve"
SECRET_PROV_NAMESPACE: Final = "confserve-secret-prov"  # noqa: S105 - a name
APP: Final = "confserve"
SERVER: Final = "confserve-model-server"
SERVER_IMAGE: Final = "confserve-server"  # kustomize image names, replaced by `render k8s --image ...`
SERVER_SGX_IMAGE: Final = "confserve-server-sgx"
SECRET_PROV_IMAGE: Final = "confserve-secret-prov"  # noqa: S105 - a name
GRPC_PORT: Final = 8500  # TF Serving's ports
REST_PORT: Final = 8501
# confserve.provisioning.DEFAULT_PORT (Gramine's), repeated so rendering stays light (a test checks).
SECRET_PROV_PORT: Final = 4433
SECRET_PROV_METRICS_PORT: Final = 9433
# The model server's readiness URL (REST port, HTTPS): ready only once attested, keyed and loaded.
READY_PATH: Final = "/v1/confserve/ready"
WORKDIR: Final = "/srv/confserve"  # Gramine's host directory: models/ and ssl.cfg are bound relative to it
GRPC_HOST: Final = "grpc.tf-serving.service.com"  # the reference's gRPC host name
REST_HOST: Final = "rest.tf-serving.service.com"
# A documentation address (RFC 5737): replaced by `render k8s --secret-prov-cidr`. NetworkPolicy cannot
# name a DNS name, so the key server's egress rule needs its address range.
PLACEHOLDER_CIDR: Final = "192.0.2.10/32"
PLACEHOLDER_PCCS_CIDR: Final = "192.0.2.20/32"
DEFAULT_SECRET_PROV_HOST: Final = "attestation.service.com"  # noqa: S105 - the reference's key server name
SECRET_PROV_ALIAS: Final = f"secret-prov.{NAMESPACE}.svc.cluster.local"  # in the measured manifest


class K8sError(ConfserveError, status=Status.INVALID_ARGUMENT):
    """Kubernetes files cannot be rendered from these settings."""


def component_labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": component}


def object_meta(name: str, component: str, **extra: object) -> dict[str, object]:
    meta: dict[str, object] = {"name": name, "labels": component_labels(component)}
    meta.update(extra)
    return meta


def restricted_container() -> dict[str, object]:
    """The container securityContext of the restricted Pod Security Standard, plus a read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security(uid: int) -> dict[str, object]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def spread_over_nodes(selector: dict[str, str]) -> dict[str, object]:
    """A pod's `affinity`: its replicas on different nodes where possible (preferred, not required, so a
    one-node test cluster still schedules them all)."""
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": selector},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }


def namespace_object(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }


def service_account(name: str, component: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_meta(name, component),
        "automountServiceAccountToken": False,  # the servers never call the Kubernetes API
    }


SERVER_UID: Final = 10001  # the `confserve` user of the images (deploy/docker)


def disruption_budget(name: str, component: str) -> dict[str, object]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(name, component),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": component_labels(component)}},
    }


DNS_EGRESS: Final = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def new_kustomization(**fields: object) -> dict[str, object]:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **fields}


SECRET_PROV_UID: Final = 10002


PLACEHOLDER_PCCS_URL: Final = "https://pccs.example.com:8081/sgx/certification/v4/"


def replace_op(path: str, value: object) -> dict[str, object]:
    return {"op": "replace", "path": path, "value": value}


def pod_template_patch(kind: str, metadata: dict[str, str], pod_spec: dict[str, object]) -> dict[str, object]:
    """A strategic-merge patch of the pod template of the workload `kind` named in `metadata`."""
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": metadata,
        "spec": {"template": {"spec": pod_spec}},
    }
