"""Kubernetes objects for confserve, rendered from code into a kustomize tree and into deployments.

Theory of operation
-------------------
This module is the one source of the Kubernetes files. `render_k8s_tree()` returns the kustomize tree
committed under `deploy/kubernetes/` (a test checks the committed files equal it):

* `base/`: the model-server replicas (Deployment, Service, Ingress, HorizontalPodAutoscaler,
  PodDisruptionBudget, NetworkPolicy, ServiceAccount, Namespace) and the secret-provisioning endpoint as a
  Service of type ExternalName, so replicas find the owner's key server by a cluster name and nobody edits
  CoreDNS;
* `overlays/simulation/`: `confserve serve` in a simulated enclave (no SGX hardware; development only);
* `overlays/sgx/`: the Gramine-SGX image, with SGX devices and EPC from the Intel SGX device plugin
  (`sgx.intel.com/epc`, `/enclave`, `/provision`) instead of a privileged pod with hostPath /dev/sgx, and
  Intel's AESM (quote generation) as a native sidecar sharing its socket through an emptyDir;
* `secret-prov/`: optionally, the secret-provisioning service itself, for owners who run it in a cluster
  they trust (several replicas; policy from a ConfigMap, keys from a Secret the owner creates).

`render_k8s_deployment(settings)` writes a small kustomization that builds on one overlay and fills in
what differs per deployment: images, replicas, model, the EPC size, the key server's address and the
measurements (the policy the key service applies).

Every pod satisfies the "restricted" Pod Security Standard, which both namespaces enforce: non-root,
no privilege escalation, all capabilities dropped, RuntimeDefault seccomp, read-only root file system,
no hostPath. Readiness means attested, keyed and loaded: the model server's readiness URL turns ready
only after the key was released and every model loaded; before that the pod gets no traffic.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from confserve.errors import ConfserveError, Status
from confserve.replica import ServeOptions

if TYPE_CHECKING:
    from confserve.attestation import AllowRule

__all__ = [
    "OVERLAYS",
    "K8sError",
    "K8sSettings",
    "Measurement",
    "render_k8s_deployment",
    "render_k8s_tree",
    "to_yaml",
    "write_files",
]

Overlay = Literal["simulation", "sgx"]
OVERLAYS: Final[tuple[Overlay, ...]] = ("simulation", "sgx")

NAMESPACE: Final = "confserve"
SECRET_PROV_NAMESPACE: Final = "confserve-secret-prov"  # noqa: S105 - a name
APP: Final = "confserve"
SERVER: Final = "confserve-model-server"
SERVER_IMAGE: Final = "confserve-server"  # kustomize image names, replaced by `render k8s --image ...`
SERVER_SGX_IMAGE: Final = "confserve-server-sgx"
SECRET_PROV_IMAGE: Final = "confserve-secret-prov"  # noqa: S105 - a name
GRPC_PORT: Final = 8500  # TF Serving's ports
REST_PORT: Final = 8501
SECRET_PROV_PORT: Final = 4433  # Gramine's secret-provisioning port
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
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
_DNS1123: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")
_QUANTITY: Final = re.compile(r"[1-9][0-9]*(Mi|Gi)")
_IMAGE: Final = re.compile(r"[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?")


class K8sError(ConfserveError):
    """Kubernetes files cannot be rendered from these settings."""

    status = Status.INVALID_ARGUMENT


# --------------------------------------------------------------------------------------------------
# YAML: block style, keys in insertion order, strings quoted unless plainly safe.

_PLAIN: Final = re.compile(r"[A-Za-z_/.][A-Za-z0-9_./@=-]*")
# YAML 1.1 booleans and null, and the float specials (.inf, .nan), which a plain scalar would turn into.
_RESERVED: Final = frozenset(
    {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~", ".inf", ".nan"}
)


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return json.dumps(value)  # a JSON string is a YAML double-quoted scalar
    raise K8sError(f"cannot write {type(value).__name__} as YAML")


def _block(value: object, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            head = f"{pad}{_scalar(str(key))}:"
            if isinstance(item, Mapping | list) and item:
                lines.append(head)
                lines += _block(item, indent + 2)
            else:
                lines.append(f"{head} {_empty_or_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping) and item:
                inner = _block(item, indent + 2)
                lines.append(f"{pad}- {inner[0][indent + 2 :]}")
                lines += inner[1:]
            elif isinstance(item, Mapping | list) and item:
                raise K8sError("nested lists are not used in these files")
            else:
                lines.append(f"{pad}- {_empty_or_scalar(item)}")
    else:
        lines.append(pad + _scalar(value))
    return lines


def _empty_or_scalar(value: object) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(*documents: object, comment: str | None = None) -> str:
    """YAML text of `documents` (a multi-document stream when there are several)."""
    out: list[str] = []
    if comment:
        out += [f"# {line}".rstrip() for line in comment.splitlines()]
    for i, document in enumerate(documents):
        if i:
            out.append("---")
        out += _block(document, 0)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# Building blocks


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": component}


def _meta(name: str, component: str, **extra: object) -> dict[str, object]:
    meta: dict[str, object] = {"name": name, "labels": _labels(component)}
    meta.update(extra)
    return meta


def _restricted_container() -> dict[str, object]:
    """The container securityContext of the restricted Pod Security Standard, plus a read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security(uid: int) -> dict[str, object]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _namespace(name: str) -> dict[str, object]:
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


def _service_account(name: str, component: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(name, component),
        "automountServiceAccountToken": False,  # the servers never call the Kubernetes API
    }


SERVER_UID: Final = 10001  # the `confserve` user of the images (deploy/docker)


# --------------------------------------------------------------------------------------------------
# base/


def _server_deployment() -> dict[str, object]:
    selector = _labels("model-server")
    container: dict[str, object] = {
        "name": "model-server",
        "image": SERVER_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "workingDir": WORKDIR,
        "envFrom": [{"configMapRef": {"name": "confserve-model"}}],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "rest", "containerPort": REST_PORT, "protocol": "TCP"},
        ],
        # Up to 10 minutes to start: enclave creation (a 4 GiB enclave is committed page by page), the key
        # release (the client retries with backoff while the key server is unreachable), model load.
        "startupProbe": {"tcpSocket": {"port": "grpc"}, "periodSeconds": 10, "failureThreshold": 60},
        # Ready = attested, keyed, loaded: the server's readiness URL, over HTTPS on the REST port. The
        # kubelet does not verify the certificate and sends no client certificate (see deployment.md).
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": "rest", "scheme": "HTTPS"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        # Alive = the process still accepts connections; a slow model must not restart the pod.
        "livenessProbe": {
            "tcpSocket": {"port": "grpc"},
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        "securityContext": _restricted_container(),
        "volumeMounts": [
            {"name": "models", "mountPath": f"{WORKDIR}/models", "readOnly": True},
            {"name": "server-tls", "mountPath": f"{WORKDIR}/ssl.cfg", "subPath": "ssl.cfg", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, the container's only writable path
        ],
    }
    pod: dict[str, object] = {
        "serviceAccountName": SERVER,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(SERVER_UID),
        "terminationGracePeriodSeconds": 30,  # SIGTERM drains in-flight requests first
        "affinity": {
            "podAntiAffinity": {
                # Spread replicas over nodes (preferred, so one-node test clusters still schedule).
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
        },
        "containers": [container],
        "volumes": [
            # The encrypted model trees (`confserve model encrypt` output), shared by all replicas.
            {"name": "models", "persistentVolumeClaim": {"claimName": "confserve-models", "readOnly": True}},
            # ssl.cfg encrypted by `confserve tls ... --encrypt-with`: ciphertext, the host cannot use it.
            {"name": "server-tls", "secret": {"secretName": "confserve-server-tls", "defaultMode": 0o444}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(SERVER, "model-server"),
        "spec": {
            "replicas": 2,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            # Add a ready replica before removing one: capacity never drops during a rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": selector}, "spec": pod},
        },
    }


def _server_service() -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(SERVER, "model-server"),
        "spec": {
            "type": "ClusterIP",
            "selector": _labels("model-server"),
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "rest", "port": REST_PORT, "targetPort": "rest", "protocol": "TCP"},
            ],
        },
    }


def _ingress() -> dict[str, object]:
    def rule(host: str, port: str) -> dict[str, object]:
        backend = {"service": {"name": SERVER, "port": {"name": port}}}
        return {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}

    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _meta(
            SERVER,
            "model-server",
            annotations={
                # L4 routing on the TLS SNI: ingress-nginx forwards the encrypted stream and never holds a
                # key (the controller must run with --enable-ssl-passthrough). Other L7 annotations would
                # be ignored, so there are none.
                "nginx.ingress.kubernetes.io/ssl-passthrough": "true",
            },
        ),
        "spec": {
            "ingressClassName": "nginx",
            "rules": [rule(GRPC_HOST, "grpc"), rule(REST_HOST, "rest")],
        },
    }


def _hpa() -> dict[str, object]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(SERVER, "model-server"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": SERVER},
            "minReplicas": 2,
            "maxReplicas": 8,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
            "behavior": {
                # A new replica needs minutes (enclave, attestation, model): scale up early, down slowly.
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {"stabilizationWindowSeconds": 300},
            },
        },
    }


def _pdb(name: str, component: str) -> dict[str, object]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, component),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(component)}},
    }


_DNS_EGRESS: Final = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def _server_network_policy() -> dict[str, object]:
    ingress_controller = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
    }
    in_cluster_secret_prov = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": SECRET_PROV_NAMESPACE}},
        "podSelector": {"matchLabels": _labels("secret-prov")},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(SERVER, "model-server"),
        "spec": {
            "podSelector": {"matchLabels": _labels("model-server")},
            "policyTypes": ["Ingress", "Egress"],
            # Only the ingress controller reaches the replicas.
            "ingress": [
                {
                    "from": [ingress_controller],
                    "ports": [{"protocol": "TCP", "port": GRPC_PORT}, {"protocol": "TCP", "port": REST_PORT}],
                }
            ],
            # Replicas reach only DNS and the key server (outside: its address range; or in-cluster).
            "egress": [
                _DNS_EGRESS,
                {
                    "to": [{"ipBlock": {"cidr": PLACEHOLDER_CIDR}}, in_cluster_secret_prov],
                    "ports": [{"protocol": "TCP", "port": SECRET_PROV_PORT}],
                },
            ],
        },
    }


def _secret_prov_endpoint() -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta("secret-prov", "secret-prov-endpoint"),
        "spec": {
            # A DNS alias (CNAME) for the owner's key server: replicas and the measured manifest name
            # secret-prov.confserve.svc.cluster.local; where it points is changed here, not in CoreDNS.
            "type": "ExternalName",
            "externalName": DEFAULT_SECRET_PROV_HOST,
            "ports": [{"name": "secret-prov", "port": SECRET_PROV_PORT, "protocol": "TCP"}],
        },
    }


def _kustomization(**fields: object) -> dict[str, object]:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **fields}


_BASE_FILES: Final = {
    "namespace.yaml": lambda: _namespace(NAMESPACE),
    "serviceaccount.yaml": lambda: _service_account(SERVER, "model-server"),
    "deployment.yaml": _server_deployment,
    "service.yaml": _server_service,
    "ingress.yaml": _ingress,
    "hpa.yaml": _hpa,
    "pdb.yaml": lambda: _pdb(SERVER, "model-server"),
    "networkpolicy.yaml": _server_network_policy,
    "secret-prov-endpoint.yaml": _secret_prov_endpoint,
}


def _base() -> dict[str, object]:
    return _kustomization(
        namespace=NAMESPACE,
        resources=list(_BASE_FILES),
        configMapGenerator=[
            {
                "name": "confserve-model",
                # The model as bound by `confserve model encrypt --out models/NAME` (path relative to the
                # working directory); `render k8s --model-name/--model-bind-root` replaces them.
                "literals": ["MODEL_NAME=digits", "MODEL_BASE_PATH=models/digits"],
            }
        ],
    )


# --------------------------------------------------------------------------------------------------
# overlays/


def _simulation_args(servers: str) -> list[str]:
    options = ServeOptions(
        attestation="simulated",
        sim_platform="/etc/confserve/sim-platform",
        signing_key="/etc/confserve/enclave/enclave-key.pem",
        secret_provision_servers=servers,
        secret_provision_ca_chain_path="/etc/confserve/ca/ca.crt",  # noqa: S106 - a path, not a password
        model_name="$(MODEL_NAME)",
        model_base_path="$(MODEL_BASE_PATH)",
        port=GRPC_PORT,
        rest_api_port=REST_PORT,
        ssl_config_file="ssl.cfg",
        ssl_config_bound_path="ssl.cfg",
    )
    return ["serve", *options.validate().to_argv(explicit=("port", "rest_api_port"))]


def _simulation_patch(servers: str = f"{SECRET_PROV_ALIAS}:{SECRET_PROV_PORT}") -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": SERVER},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "model-server",
                            "command": ["confserve"],
                            "args": _simulation_args(servers),
                            "volumeMounts": [
                                {
                                    "name": "sim-platform",
                                    "mountPath": "/etc/confserve/sim-platform",
                                    "readOnly": True,
                                },
                                {
                                    "name": "sim-enclave",
                                    "mountPath": "/etc/confserve/enclave",
                                    "readOnly": True,
                                },
                                {
                                    "name": "secret-prov-ca",
                                    "mountPath": "/etc/confserve/ca",
                                    "readOnly": True,
                                },
                            ],
                        }
                    ],
                    "volumes": [
                        # SIMULATION ONLY: the simulated platform's keys let their holder forge quotes.
                        {
                            "name": "sim-platform",
                            "secret": {"secretName": "confserve-sim-platform", "defaultMode": 0o440},
                        },
                        {
                            "name": "sim-enclave",
                            "secret": {"secretName": "confserve-sim-enclave", "defaultMode": 0o440},
                        },
                        {"name": "secret-prov-ca", "configMap": {"name": "confserve-secret-prov-ca"}},
                    ],
                }
            }
        },
    }


def _mib(quantity: str) -> int:
    return int(quantity[:-2]) * (1024 if quantity.endswith("Gi") else 1)


def _sgx_memory_limit(epc: str) -> str:
    """The enclave (should it be paged out of EPC) plus 2 GiB for the untrusted side."""
    return f"{_mib(epc) + 2048}Mi"


def _sgx_patch(epc: str = "4Gi") -> dict[str, object]:
    aesm_mount = {"name": "aesmd-socket", "mountPath": "/var/run/aesmd"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": SERVER},
        "spec": {
            "template": {
                "spec": {
                    # Nodes with SGX, as labelled by node-feature-discovery for the Intel device plugin.
                    "nodeSelector": {"intel.feature.node.kubernetes.io/sgx": "true"},
                    # Intel's AESM as a native sidecar: Gramine asks it for DCAP quotes over its socket.
                    "initContainers": [
                        {
                            "name": "aesmd",
                            "image": SERVER_SGX_IMAGE,
                            "restartPolicy": "Always",
                            "command": ["/opt/intel/sgx-aesm-service/aesm/aesm_service", "--no-daemon"],
                            "env": [{"name": "LD_LIBRARY_PATH", "value": "/opt/intel/sgx-aesm-service/aesm"}],
                            "resources": {
                                "requests": {
                                    "cpu": "100m",
                                    "memory": "64Mi",
                                    "sgx.intel.com/enclave": "1",
                                    "sgx.intel.com/provision": "1",
                                    "sgx.intel.com/epc": "1Mi",
                                },
                                "limits": {
                                    "memory": "256Mi",
                                    "sgx.intel.com/enclave": "1",
                                    "sgx.intel.com/provision": "1",
                                    "sgx.intel.com/epc": "1Mi",
                                },
                            },
                            "securityContext": _restricted_container(),
                            "volumeMounts": [
                                aesm_mount,
                                {"name": "aesmd-data", "mountPath": "/var/opt/aesmd"},
                            ],
                        }
                    ],
                    "containers": [
                        {
                            "name": "model-server",
                            "image": SERVER_SGX_IMAGE,
                            # Arguments and environment are fixed in the measured manifest.
                            "command": ["gramine-sgx", "/opt/confserve/enclave/confserve"],
                            "resources": {
                                # Without EDMM the whole enclave is committed in EPC at start: request it.
                                # Memory: the untrusted side (loader, file buffers); the limit also leaves
                                # room for enclave pages the kernel pages out of EPC into memory.
                                "requests": {
                                    "cpu": "2",
                                    "memory": "1Gi",
                                    "sgx.intel.com/epc": epc,
                                    "sgx.intel.com/enclave": "1",
                                },
                                "limits": {
                                    "memory": _sgx_memory_limit(epc),
                                    "sgx.intel.com/epc": epc,
                                    "sgx.intel.com/enclave": "1",
                                },
                            },
                            "volumeMounts": [aesm_mount],
                        }
                    ],
                    "volumes": [
                        {"name": "aesmd-socket", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                        {"name": "aesmd-data", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                }
            }
        },
    }


def _pccs_network_policy() -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(f"{SERVER}-pccs", "model-server"),
        "spec": {
            "podSelector": {"matchLabels": _labels("model-server")},
            "policyTypes": ["Egress"],
            # The AESM sidecar fetches the platform's PCK certificate from the PCCS (additive to the
            # base policy; policies only ever allow).
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": PLACEHOLDER_PCCS_CIDR}}],
                    "ports": [{"protocol": "TCP", "port": 8081}],
                }
            ],
        },
    }


def _overlay(name: Overlay) -> dict[str, str]:
    if name == "simulation":
        return {
            "kustomization.yaml": to_yaml(
                _kustomization(resources=["../../base"], patches=[{"path": "deployment-patch.yaml"}]),
                comment="Simulated enclaves (no SGX hardware): development and CI only.",
            ),
            "deployment-patch.yaml": to_yaml(_simulation_patch()),
        }
    return {
        "kustomization.yaml": to_yaml(
            _kustomization(
                resources=["../../base", "networkpolicy-pccs.yaml"],
                patches=[{"path": "deployment-patch.yaml"}],
            ),
            comment="Gramine-SGX replicas: SGX devices and EPC from the Intel SGX device plugin.",
        ),
        "deployment-patch.yaml": to_yaml(_sgx_patch()),
        "networkpolicy-pccs.yaml": to_yaml(_pccs_network_policy()),
    }


# --------------------------------------------------------------------------------------------------
# secret-prov/: the key service, for owners who run it in a cluster they trust

SECRET_PROV_UID: Final = 10002
_KEYS_DIR: Final = "/run/secret-prov"  # tmpfs: keys copied with mode 0400 (the service refuses symlinks)


PLACEHOLDER_PCCS_URL: Final = "https://pccs.example.com:8081/sgx/certification/v4/"


def _secret_prov_args(simulated: bool = False) -> list[str]:
    args = [
        "secret-prov",
        "serve",
        f"--listen=0.0.0.0:{SECRET_PROV_PORT}",
        f"--cert={_KEYS_DIR}/server.crt",
        f"--key={_KEYS_DIR}/server.key",
        "--policy=/etc/confserve/policy/policy.toml",
        f"--secret=default={_KEYS_DIR}/wrap_key",
        "--audit-log=/var/lib/confserve/audit/audit.log",
        f"--metrics-listen=0.0.0.0:{SECRET_PROV_METRICS_PORT}",
    ]
    if simulated:
        return [*args, "--sim-platform=/etc/confserve/sim-platform"]
    return [*args, f"--pccs-url={PLACEHOLDER_PCCS_URL}"]  # the last argument: render k8s --pccs-url


def _secret_prov_statefulset() -> dict[str, object]:
    selector = _labels("secret-prov")
    keys_mount = {"name": "keys", "mountPath": _KEYS_DIR}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta("secret-prov", "secret-prov"),
        "spec": {
            # A StatefulSet rather than a Deployment: each instance keeps its own hash-chained audit log on
            # its own volume across restarts (docs/secret-provisioning.md: "give each its own log").
            "serviceName": "secret-prov-headless",
            "replicas": 3,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {
                    "serviceAccountName": "secret-prov",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": _pod_security(SECRET_PROV_UID),
                    "affinity": {
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
                    },
                    "initContainers": [
                        {
                            # Secret volume files are symlinks; the service wants 0400 regular files.
                            "name": "install-keys",
                            "image": SECRET_PROV_IMAGE,
                            "command": [
                                "install",
                                "-m",
                                "0400",
                                "/secrets/server.crt",
                                "/secrets/server.key",
                                "/secrets/wrap_key",
                                _KEYS_DIR + "/",
                            ],
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "16Mi"},
                                "limits": {"memory": "64Mi"},
                            },
                            "securityContext": _restricted_container(),
                            "volumeMounts": [
                                {"name": "secrets", "mountPath": "/secrets", "readOnly": True},
                                keys_mount,
                            ],
                        }
                    ],
                    "containers": [
                        {
                            "name": "secret-prov",
                            "image": SECRET_PROV_IMAGE,
                            "command": ["confserve"],
                            "args": _secret_prov_args(),
                            "ports": [
                                {"name": "secret-prov", "containerPort": SECRET_PROV_PORT, "protocol": "TCP"},
                                {
                                    "name": "metrics",
                                    "containerPort": SECRET_PROV_METRICS_PORT,
                                    "protocol": "TCP",
                                },
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": "metrics"},
                                "periodSeconds": 5,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": "metrics"},
                                "periodSeconds": 20,
                            },
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "128Mi"},
                                "limits": {"memory": "512Mi"},
                            },
                            "securityContext": _restricted_container(),
                            "volumeMounts": [
                                keys_mount,
                                {"name": "policy", "mountPath": "/etc/confserve/policy", "readOnly": True},
                                {"name": "audit", "mountPath": "/var/lib/confserve/audit"},
                            ],
                        }
                    ],
                    "volumes": [
                        # Created by the owner: kubectl create secret generic secret-prov-keys --from-file=...
                        {
                            "name": "secrets",
                            "secret": {"secretName": "secret-prov-keys", "defaultMode": 0o440},
                        },
                        {"name": "keys", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                        {"name": "policy", "configMap": {"name": "secret-prov-policy"}},
                    ],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "audit"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }
            ],
        },
    }


def _secret_prov_services() -> list[dict[str, object]]:
    ports = [
        {"name": "secret-prov", "port": SECRET_PROV_PORT, "targetPort": "secret-prov", "protocol": "TCP"}
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta("secret-prov", "secret-prov"),
            "spec": {"type": "ClusterIP", "selector": _labels("secret-prov"), "ports": ports},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta("secret-prov-headless", "secret-prov"),
            "spec": {"clusterIP": "None", "selector": _labels("secret-prov"), "ports": ports},
        },
    ]


def _secret_prov_network_policy() -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta("secret-prov", "secret-prov"),
        "spec": {
            "podSelector": {"matchLabels": _labels("secret-prov")},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
                            "podSelector": {"matchLabels": _labels("model-server")},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": SECRET_PROV_PORT}],
                }
            ],
            # DNS and the PCCS (collateral for quote verification); nothing else.
            "egress": [
                _DNS_EGRESS,
                {
                    "to": [{"ipBlock": {"cidr": PLACEHOLDER_PCCS_CIDR}}],
                    "ports": [{"protocol": "TCP", "port": 8081}],
                },
            ],
        },
    }


def _refuse_all_policy() -> str:
    from confserve.attestation import Policy, render_policy_toml  # noqa: PLC0415 - heavy, only here

    return render_policy_toml(
        Policy(),
        comment="Placeholder policy: no allow rule, so every enclave is refused until `confserve render k8s\n"
        "--mr-enclave ...` (or the owner) writes the measured identities here.",
    )


def _secret_prov_tree() -> dict[str, str]:
    return {
        "kustomization.yaml": to_yaml(
            _kustomization(
                namespace=SECRET_PROV_NAMESPACE,
                resources=[
                    "namespace.yaml",
                    "serviceaccount.yaml",
                    "statefulset.yaml",
                    "service.yaml",
                    "pdb.yaml",
                    "networkpolicy.yaml",
                ],
                configMapGenerator=[{"name": "secret-prov-policy", "files": ["policy.toml"]}],
            ),
            comment="The secret-provisioning service, for owners who run it in a cluster they trust.\n"
            "Create its keys first:\n"
            "  kubectl -n confserve-secret-prov create secret generic secret-prov-keys \\\n"
            "    --from-file=server.crt --from-file=server.key --from-file=wrap_key",
        ),
        "namespace.yaml": to_yaml(_namespace(SECRET_PROV_NAMESPACE)),
        "serviceaccount.yaml": to_yaml(_service_account("secret-prov", "secret-prov")),
        "statefulset.yaml": to_yaml(_secret_prov_statefulset()),
        "service.yaml": to_yaml(*_secret_prov_services()),
        "pdb.yaml": to_yaml(_pdb("secret-prov", "secret-prov")),
        "networkpolicy.yaml": to_yaml(_secret_prov_network_policy()),
        "policy.toml": _refuse_all_policy(),
    }


_TREE_HEADER: Final = (
    "# Rendered by `confserve render k8s-tree` (cluster/_k8s.py): edit the code, not this file.\n"
)


def render_k8s_tree() -> dict[str, str]:
    """The committed kustomize tree: relative path -> file text."""
    files = {f"base/{name}": to_yaml(build()) for name, build in _BASE_FILES.items()}
    files["base/kustomization.yaml"] = to_yaml(_base())
    for overlay in OVERLAYS:
        files.update({f"overlays/{overlay}/{n}": t for n, t in _overlay(overlay).items()})
    files.update({f"secret-prov/{n}": t for n, t in _secret_prov_tree().items()})
    return {rel: _TREE_HEADER + text for rel, text in files.items()}


# --------------------------------------------------------------------------------------------------
# A deployment: one overlay plus what differs per installation


@dataclass(frozen=True)
class Measurement:
    """One allow rule of the key service's policy (docs/policy.md): pin MRENCLAVE, or signer+product+SVN."""

    mr_enclave: str | None = None
    mr_signer: str | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None

    def rule(self, name: str) -> AllowRule:
        from confserve.attestation import AllowRule  # noqa: PLC0415 - heavy, only here

        if self.mr_enclave is None and None in (self.mr_signer, self.isv_prod_id, self.min_isv_svn):
            raise K8sError("a measurement pins mr_enclave, or all of mr_signer, isv_prod_id and isv_svn")
        hashes: dict[str, bytes | None] = {}
        for key, hexval in (("mr_enclave", self.mr_enclave), ("mr_signer", self.mr_signer)):
            if hexval is not None and not _HEX64.fullmatch(hexval):
                raise K8sError(f"{key} must be 64 hex characters")
            hashes[key] = None if hexval is None else bytes.fromhex(hexval)
        for key, number in (("isv_prod_id", self.isv_prod_id), ("min_isv_svn", self.min_isv_svn)):
            if number is not None and not 0 <= number <= 0xFFFF:
                raise K8sError(f"{key} {number} out of range 0..65535")
        return AllowRule(
            name=name,
            mr_enclave=hashes["mr_enclave"],
            mr_signer=hashes["mr_signer"],
            isv_prod_id=self.isv_prod_id,
            min_isv_svn=self.min_isv_svn,
        )

    @classmethod
    def from_json(cls, text: str) -> Measurement:
        """The output of `confserve measure --json` (pins mr_enclave; signer fields kept alongside)."""
        try:
            doc = json.loads(text)
            return cls(
                mr_enclave=str(doc["mr_enclave"]),
                mr_signer=str(doc["mr_signer"]),
                isv_prod_id=int(doc["isv_prod_id"]),
                min_isv_svn=int(doc["isv_svn"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise K8sError(f"not the output of `confserve measure --json`: {e}") from None


@dataclass(frozen=True)
class K8sSettings:
    overlay: Overlay
    tree: Path  # the committed kustomize tree (deploy/kubernetes)
    out: Path  # where the deployment's kustomization is written
    server_image: str | None = None  # e.g. registry.example.com/confserve-server@sha256:...
    secret_prov_image: str | None = None
    replicas: int = 2
    max_replicas: int = 8
    model_name: str = "digits"
    model_bind_root: str | None = None  # default models/MODEL_NAME
    epc: str = "4Gi"  # sgx: the enclave size `render gramine` printed
    secret_prov_host: str = DEFAULT_SECRET_PROV_HOST  # the ExternalName target
    secret_prov_cidr: str | None = None  # the key server's addresses, for the NetworkPolicy
    pccs_cidr: str | None = None
    pccs_url: str | None = None  # sgx with the key service in the cluster: its PCCS (collateral)
    # The server requires client certificates (`confserve tls twoway`): the kubelet has none, so readiness
    # becomes "the gRPC port is open", which the server does only once attested, keyed and loaded.
    mutual_tls: bool = False
    measurements: Sequence[Measurement] = field(default_factory=tuple)
    with_secret_prov: bool = False  # also write secret-prov/ (the key service in this cluster)


def _check(settings: K8sSettings) -> None:
    if settings.overlay not in OVERLAYS:
        raise K8sError(f"unknown overlay {settings.overlay!r} (choose from {', '.join(OVERLAYS)})")
    if not 1 <= settings.replicas <= settings.max_replicas <= 1000:
        raise K8sError("replicas must be between 1 and max replicas (at most 1000)")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9._]{0,126}[a-z0-9])?", settings.model_name, re.IGNORECASE):
        raise K8sError(f"model name {settings.model_name!r} is not a plain name")
    if not _QUANTITY.fullmatch(settings.epc):
        raise K8sError(f"EPC size {settings.epc!r} must look like 4Gi or 512Mi")
    if not _DNS1123.fullmatch(settings.secret_prov_host):
        raise K8sError(f"key server host {settings.secret_prov_host!r} is not a DNS name")
    for image in (settings.server_image, settings.secret_prov_image):
        if image is not None and not _IMAGE.fullmatch(image):
            raise K8sError(f"image {image!r} is not NAME[:TAG][@sha256:DIGEST] in lower case")
    for cidr in (settings.secret_prov_cidr, settings.pccs_cidr):
        if cidr is not None:
            import ipaddress  # noqa: PLC0415 - only here

            try:
                ipaddress.ip_network(cidr)
            except ValueError:
                raise K8sError(f"{cidr!r} is not an address range (CIDR)") from None
    if settings.pccs_url is not None and not re.fullmatch(
        r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[\x21-\x7e]*", settings.pccs_url
    ):
        raise K8sError(f"PCCS URL {settings.pccs_url!r} must be an https:// URL")
    if not settings.measurements:
        raise K8sError("give at least one measurement: the key service refuses every enclave without one")


def _image_entry(name: str, image: str) -> dict[str, str]:
    ref, _, digest = image.partition("@")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    entry = {"name": name}
    if colon > slash:
        entry["newName"], entry["newTag"] = ref[:colon], ref[colon + 1 :]
    else:
        entry["newName"] = ref
    if digest:
        entry["digest"] = digest
    return entry


def _policy(settings: K8sSettings) -> str:
    from confserve.attestation import Policy, render_policy_toml  # noqa: PLC0415 - heavy, only here

    policy = Policy(
        rules=tuple(m.rule(f"{settings.overlay}-{i}") for i, m in enumerate(settings.measurements)),
        allow_simulated=settings.overlay == "simulation",
    )
    return render_policy_toml(
        policy, comment="Rendered by `confserve render k8s`: the identities that receive the model key."
    )


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()


_PatchOps = list[tuple[str, str, str, list[dict[str, object]]]]  # (kind, name, file, JSON 6902 operations)


def render_k8s_deployment(settings: K8sSettings) -> dict[str, str]:
    """A kustomization (relative path -> text) under `settings.out` built on the committed tree."""
    _check(settings)
    overlay_dir = settings.tree / "overlays" / settings.overlay
    if not (overlay_dir / "kustomization.yaml").is_file():
        raise K8sError(f"{overlay_dir} is not the kustomize tree (deploy/kubernetes/overlays/...)")
    bind_root = settings.model_bind_root or f"models/{settings.model_name}"
    images = []
    if settings.server_image:
        name = SERVER_SGX_IMAGE if settings.overlay == "sgx" else SERVER_IMAGE
        images.append(_image_entry(name, settings.server_image))
    # JSON 6902 patches, one file each (kind, name, file, operations).
    ops: _PatchOps = [
        (
            "HorizontalPodAutoscaler",
            SERVER,
            "patch-hpa.yaml",
            [
                _replace("/spec/minReplicas", settings.replicas),
                _replace("/spec/maxReplicas", settings.max_replicas),
            ],
        ),
        (
            "Service",
            "secret-prov",
            "patch-secret-prov-endpoint.yaml",
            [_replace("/spec/externalName", settings.secret_prov_host)],
        ),
    ]
    if settings.secret_prov_cidr:
        # egress[1] is the key server's rule (egress[0] is DNS): see _server_network_policy.
        ops.append(
            (
                "NetworkPolicy",
                SERVER,
                "patch-networkpolicy.yaml",
                [_replace("/spec/egress/1/to/0/ipBlock/cidr", settings.secret_prov_cidr)],
            )
        )
    if settings.pccs_cidr and settings.overlay == "sgx":
        ops.append(
            (
                "NetworkPolicy",
                f"{SERVER}-pccs",
                "patch-networkpolicy-pccs.yaml",
                [_replace("/spec/egress/0/to/0/ipBlock/cidr", settings.pccs_cidr)],
            )
        )
    if settings.overlay == "sgx":
        epc = "/spec/template/spec/containers/0/resources/{}/sgx.intel.com~1epc"
        ops.append(
            (
                "Deployment",
                SERVER,
                "patch-epc.yaml",
                [
                    *(_replace(epc.format(kind), settings.epc) for kind in ("requests", "limits")),
                    _replace(
                        "/spec/template/spec/containers/0/resources/limits/memory",
                        _sgx_memory_limit(settings.epc),
                    ),
                ],
            )
        )
    if settings.mutual_tls:
        probe = {"tcpSocket": {"port": "grpc"}, "periodSeconds": 5, "failureThreshold": 2}
        ops.append(
            (
                "Deployment",
                SERVER,
                "patch-readiness.yaml",
                [_replace("/spec/template/spec/containers/0/readinessProbe", probe)],
            )
        )
    patches = [{"path": file, "target": {"kind": kind, "name": name}} for kind, name, file, _ in ops]
    kustomization = _kustomization(
        resources=[_rel(overlay_dir, settings.out)],
        replicas=[{"name": SERVER, "count": settings.replicas}],
        configMapGenerator=[
            {
                "name": "confserve-model",
                "namespace": NAMESPACE,
                "behavior": "replace",
                "literals": [f"MODEL_NAME={settings.model_name}", f"MODEL_BASE_PATH={bind_root}"],
            }
        ],
        patches=patches,
    )
    if images:
        kustomization["images"] = images
    files = {
        "kustomization.yaml": to_yaml(
            kustomization, comment=f"Rendered by `confserve render k8s` ({settings.overlay} overlay)."
        )
    }
    files.update({file: to_yaml(operations) for _, _, file, operations in ops})
    if settings.with_secret_prov:
        files.update({f"secret-prov/{rel}": text for rel, text in _secret_prov_deployment(settings).items()})
    else:
        files["policy.toml"] = _policy(settings)
    return files


def _secret_prov_deployment(settings: K8sSettings) -> dict[str, str]:
    """secret-prov/ of a deployment: the key service with this deployment's policy."""
    sp = _kustomization(
        resources=[_rel(settings.tree / "secret-prov", settings.out / "secret-prov")],
        configMapGenerator=[
            {
                "name": "secret-prov-policy",
                "namespace": SECRET_PROV_NAMESPACE,
                "behavior": "replace",
                "files": ["policy.toml"],
            }
        ],
    )
    files = {"policy.toml": _policy(settings)}
    if settings.secret_prov_image:
        sp["images"] = [_image_entry(SECRET_PROV_IMAGE, settings.secret_prov_image)]
    ops: _PatchOps = []
    if settings.overlay == "simulation":
        sp["patches"] = [{"path": "simulation-patch.yaml"}]
        files["simulation-patch.yaml"] = to_yaml(_secret_prov_simulation_patch())
    else:
        if settings.pccs_url:
            last = len(_secret_prov_args()) - 1  # --pccs-url is the last argument
            path = f"/spec/template/spec/containers/0/args/{last}"
            ops.append(
                (
                    "StatefulSet",
                    "secret-prov",
                    "patch-pccs-url.yaml",
                    [_replace(path, f"--pccs-url={settings.pccs_url}")],
                )
            )
        if settings.pccs_cidr:
            # egress[1] is the PCCS rule (egress[0] is DNS): see _secret_prov_network_policy.
            ops.append(
                (
                    "NetworkPolicy",
                    "secret-prov",
                    "patch-networkpolicy-pccs.yaml",
                    [_replace("/spec/egress/1/to/0/ipBlock/cidr", settings.pccs_cidr)],
                )
            )
    if ops:
        sp["patches"] = [{"path": f, "target": {"kind": k, "name": n}} for k, n, f, _ in ops]
        files.update({f: to_yaml(o) for _, _, f, o in ops})
    files["kustomization.yaml"] = to_yaml(
        sp, comment="Rendered by `confserve render k8s`: the key service and its policy."
    )
    return files


def _replace(path: str, value: object) -> dict[str, object]:
    return {"op": "replace", "path": path, "value": value}


def _secret_prov_simulation_patch() -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "secret-prov", "namespace": SECRET_PROV_NAMESPACE},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "secret-prov",
                            "args": _secret_prov_args(simulated=True),
                            "volumeMounts": [
                                {
                                    "name": "sim-platform",
                                    "mountPath": "/etc/confserve/sim-platform",
                                    "readOnly": True,
                                }
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "sim-platform",
                            "secret": {"secretName": "confserve-sim-platform", "defaultMode": 0o440},
                        }
                    ],
                }
            }
        },
    }


def write_files(root: Path, files: Mapping[str, str]) -> list[Path]:
    """Write `files` under `root` (directories created); returns the paths written."""
    written = []
    for rel, text in sorted(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
