"""The key service's Kubernetes objects (`secret-prov/`), for owners who run it in a cluster they trust:
a StatefulSet of several replicas, its Services, PodDisruptionBudget and NetworkPolicy, its policy from
a ConfigMap (refusing everything until the owner writes one) and its keys from a Secret the owner
creates."""

from __future__ import annotations

from typing import Final

from confserve.cluster._k8s_common import (
    DNS_EGRESS,
    NAMESPACE,
    PLACEHOLDER_PCCS_CIDR,
    PLACEHOLDER_PCCS_URL,
    SECRET_PROV_IMAGE,
    SECRET_PROV_METRICS_PORT,
    SECRET_PROV_NAMESPACE,
    SECRET_PROV_PORT,
    SECRET_PROV_UID,
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

__all__ = ["secret_prov_args", "secret_prov_files", "secret_prov_simulation_patch"]


_KEYS_DIR: Final = "/run/secret-prov"  # tmpfs: keys copied with mode 0400 (the service refuses symlinks)


def secret_prov_args(simulated: bool = False) -> list[str]:
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
    selector = component_labels("secret-prov")
    keys_mount = {"name": "keys", "mountPath": _KEYS_DIR}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": object_meta("secret-prov", "secret-prov"),
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
                    "securityContext": pod_security(SECRET_PROV_UID),
                    "affinity": spread_over_nodes(selector),
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
                            "securityContext": restricted_container(),
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
                            "args": secret_prov_args(),
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
                            "securityContext": restricted_container(),
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
            "metadata": object_meta("secret-prov", "secret-prov"),
            "spec": {"type": "ClusterIP", "selector": component_labels("secret-prov"), "ports": ports},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": object_meta("secret-prov-headless", "secret-prov"),
            "spec": {"clusterIP": "None", "selector": component_labels("secret-prov"), "ports": ports},
        },
    ]


def _secret_prov_network_policy() -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta("secret-prov", "secret-prov"),
        "spec": {
            "podSelector": {"matchLabels": component_labels("secret-prov")},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
                            "podSelector": {"matchLabels": component_labels("model-server")},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": SECRET_PROV_PORT}],
                }
            ],
            # DNS and the PCCS (collateral for quote verification); nothing else.
            "egress": [
                DNS_EGRESS,
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


def secret_prov_files() -> dict[str, str]:
    return {
        "kustomization.yaml": to_yaml(
            new_kustomization(
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
        "namespace.yaml": to_yaml(namespace_object(SECRET_PROV_NAMESPACE)),
        "serviceaccount.yaml": to_yaml(service_account("secret-prov", "secret-prov")),
        "statefulset.yaml": to_yaml(_secret_prov_statefulset()),
        "service.yaml": to_yaml(*_secret_prov_services()),
        "pdb.yaml": to_yaml(disruption_budget("secret-prov", "secret-prov")),
        "networkpolicy.yaml": to_yaml(_secret_prov_network_policy()),
        "policy.toml": _refuse_all_policy(),
    }


def secret_prov_simulation_patch() -> dict[str, object]:
    return pod_template_patch(
        "StatefulSet",
        {"name": "secret-prov", "namespace": SECRET_PROV_NAMESPACE},
        {
            "containers": [
                {
                    "name": "secret-prov",
                    "args": secret_prov_args(simulated=True),
                    "volumeMounts": [
                        {
                            "name": "sim-platform",
                            "mountPath": "/etc/confserve/sim-platform",
                            "readOnly": True,
                        }
                    ],
                }
            ],
            # The platform's public part (sim-platform publish: root certificate, collateral), never its
            # private keys: a verifier needs only what a PCCS would serve.
            "volumes": [{"name": "sim-platform", "configMap": {"name": "confserve-sim-platform-public"}}],
        },
    )
