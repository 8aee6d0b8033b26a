"""The model server's Kubernetes objects: `base/` (Deployment, Service, Ingress, HorizontalPodAutoscaler,
PodDisruptionBudget, NetworkPolicy, ServiceAccount, Namespace, and the key server as an ExternalName
Service) and the two overlays, `simulation` (`confserve serve` in a simulated enclave) and `sgx` (the
Gramine-SGX image with the SGX device plugin's resources and Intel's AESM as a sidecar)."""

from __future__ import annotations

from typing import Final

from confserve.cluster._k8s_common import (
    DEFAULT_SECRET_PROV_HOST,
    DNS_EGRESS,
    GRPC_HOST,
    GRPC_PORT,
    NAMESPACE,
    PLACEHOLDER_CIDR,
    PLACEHOLDER_PCCS_CIDR,
    READY_PATH,
    REST_HOST,
    REST_PORT,
    SECRET_PROV_ALIAS,
    SECRET_PROV_NAMESPACE,
    SECRET_PROV_PORT,
    SERVER,
    SERVER_IMAGE,
    SERVER_SGX_IMAGE,
    SERVER_UID,
    WORKDIR,
    Overlay,
    component_labels,
    disruption_budget,
    namespace_object,
    new_kustomization,
    object_meta,
    pod_security,
    pod_template_patch,
    restricted_container,
    service_account,
    spread_over_nodes,
)
from confserve.cluster._k8s_yaml import to_yaml
from confserve.replica import ServeOptions

__all__ = [
    "BASE_FILES",
    "RELEASE_KEY_CONFIGMAP",
    "RELEASE_KEY_PATH",
    "base_kustomization",
    "overlay_files",
    "sgx_memory_limit",
    "sgx_patch",
]


def _server_deployment() -> dict[str, object]:
    selector = component_labels("model-server")
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
        "securityContext": restricted_container(),
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
        "securityContext": pod_security(SERVER_UID),
        "terminationGracePeriodSeconds": 30,  # SIGTERM drains in-flight requests first
        "affinity": spread_over_nodes(selector),
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
        "metadata": object_meta(SERVER, "model-server"),
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
        "metadata": object_meta(SERVER, "model-server"),
        "spec": {
            "type": "ClusterIP",
            "selector": component_labels("model-server"),
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
        "metadata": object_meta(
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
        "metadata": object_meta(SERVER, "model-server"),
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


def _server_network_policy() -> dict[str, object]:
    ingress_controller = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
    }
    in_cluster_secret_prov = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": SECRET_PROV_NAMESPACE}},
        "podSelector": {"matchLabels": component_labels("secret-prov")},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(SERVER, "model-server"),
        "spec": {
            "podSelector": {"matchLabels": component_labels("model-server")},
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
                DNS_EGRESS,
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
        "metadata": object_meta("secret-prov", "secret-prov-endpoint"),
        "spec": {
            # A DNS alias (CNAME) for the owner's key server: replicas and the measured manifest name
            # secret-prov.confserve.svc.cluster.local; where it points is changed here, not in CoreDNS.
            "type": "ExternalName",
            "externalName": DEFAULT_SECRET_PROV_HOST,
            "ports": [{"name": "secret-prov", "port": SECRET_PROV_PORT, "protocol": "TCP"}],
        },
    }


BASE_FILES: Final = {
    "namespace.yaml": lambda: namespace_object(NAMESPACE),
    "serviceaccount.yaml": lambda: service_account(SERVER, "model-server"),
    "deployment.yaml": _server_deployment,
    "service.yaml": _server_service,
    "ingress.yaml": _ingress,
    "hpa.yaml": _hpa,
    "pdb.yaml": lambda: disruption_budget(SERVER, "model-server"),
    "networkpolicy.yaml": _server_network_policy,
    "secret-prov-endpoint.yaml": _secret_prov_endpoint,
}


def base_kustomization() -> dict[str, object]:
    return new_kustomization(
        namespace=NAMESPACE,
        resources=list(BASE_FILES),
        configMapGenerator=[
            {
                "name": "confserve-model",
                # The model as bound by `confserve model encrypt --out models/NAME` (path relative to the
                # working directory); `render k8s --model-name/--model-bind-root` replaces them.
                "literals": ["MODEL_NAME=digits", "MODEL_BASE_PATH=models/digits"],
            }
        ],
    )


# The owner's release public key (`confserve release gen-key`: release.pub.pem), from a ConfigMap the owner
# creates (docs/deployment.md): replicas serve only what a signed release lists (docs/releases.md). Its
# content is part of the replica's measurement, so a host that swaps it changes the identity.
RELEASE_KEY_CONFIGMAP: Final = "confserve-release-public-key"
RELEASE_KEY_DIR: Final = "/etc/confserve/release"
RELEASE_KEY_PATH: Final = f"{RELEASE_KEY_DIR}/release.pub.pem"


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
        release_public_key=RELEASE_KEY_PATH,
    )
    return ["serve", *options.validate().to_argv(explicit=("port", "rest_api_port"))]


def _simulation_patch(servers: str = f"{SECRET_PROV_ALIAS}:{SECRET_PROV_PORT}") -> dict[str, object]:
    return pod_template_patch(
        "Deployment",
        {"name": SERVER},
        {
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
                        {"name": "release-public-key", "mountPath": RELEASE_KEY_DIR, "readOnly": True},
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
                {"name": "release-public-key", "configMap": {"name": RELEASE_KEY_CONFIGMAP}},
            ],
        },
    )


def _mib(quantity: str) -> int:
    return int(quantity[:-2]) * (1024 if quantity.endswith("Gi") else 1)


def sgx_memory_limit(epc: str) -> str:
    """The enclave (should it be paged out of EPC) plus 2 GiB for the untrusted side."""
    return f"{_mib(epc) + 2048}Mi"


def sgx_patch(epc: str = "4Gi") -> dict[str, object]:
    aesm_mount = {"name": "aesmd-socket", "mountPath": "/var/run/aesmd"}
    return pod_template_patch(
        "Deployment",
        {"name": SERVER},
        {
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
                    "securityContext": restricted_container(),
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
                            "memory": sgx_memory_limit(epc),
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
        },
    )


def _pccs_network_policy() -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(f"{SERVER}-pccs", "model-server"),
        "spec": {
            "podSelector": {"matchLabels": component_labels("model-server")},
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


def overlay_files(name: Overlay) -> dict[str, str]:
    if name == "simulation":
        return {
            "kustomization.yaml": to_yaml(
                new_kustomization(resources=["../../base"], patches=[{"path": "deployment-patch.yaml"}]),
                comment="Simulated enclaves (no SGX hardware): development and CI only.",
            ),
            "deployment-patch.yaml": to_yaml(_simulation_patch()),
        }
    return {
        "kustomization.yaml": to_yaml(
            new_kustomization(
                resources=["../../base", "networkpolicy-pccs.yaml"],
                patches=[{"path": "deployment-patch.yaml"}],
            ),
            comment="Gramine-SGX replicas: SGX devices and EPC from the Intel SGX device plugin.",
        ),
        "deployment-patch.yaml": to_yaml(sgx_patch()),
        "networkpolicy-pccs.yaml": to_yaml(_pccs_network_policy()),
    }
