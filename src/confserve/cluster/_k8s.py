"""Kubernetes objects for confserve, rendered from code into a kustomize tree and into deployments.

Theory of operation
-------------------
This module and its helpers are the one source of the Kubernetes files, one job per module: the
objects of the model server (`_k8s_server`) and of the key service (`_k8s_keyservice`), what they share
(`_k8s_common`), the YAML writer (`_k8s_yaml`), and here the renderer. `render_k8s_tree()` returns the
kustomize tree committed under `deploy/kubernetes/` (a test checks the committed files equal it):

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
from typing import TYPE_CHECKING, Final

from confserve.cluster._k8s_common import (
    DEFAULT_SECRET_PROV_HOST,
    NAMESPACE,
    OVERLAYS,
    SECRET_PROV_IMAGE,
    SECRET_PROV_NAMESPACE,
    SERVER,
    SERVER_IMAGE,
    SERVER_SGX_IMAGE,
    K8sError,
    Overlay,
    new_kustomization,
    replace_op,
)
from confserve.cluster._k8s_keyservice import (
    secret_prov_args,
    secret_prov_files,
    secret_prov_simulation_patch,
)
from confserve.cluster._k8s_server import BASE_FILES, base_kustomization, overlay_files, sgx_memory_limit
from confserve.cluster._k8s_yaml import to_yaml

if TYPE_CHECKING:
    from confserve.attestation import AllowRule

__all__ = ["K8sSettings", "Measurement", "render_k8s_deployment", "render_k8s_tree", "write_files"]


_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
_DNS1123: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")
_QUANTITY: Final = re.compile(r"[1-9][0-9]*(Mi|Gi)")
_IMAGE: Final = re.compile(r"[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?")


_TREE_HEADER: Final = (
    "# Rendered by `confserve render k8s-tree` (cluster/_k8s.py): edit the code, not this file.\n"
)


def render_k8s_tree() -> dict[str, str]:
    """The committed kustomize tree: relative path -> file text."""
    files = {f"base/{name}": to_yaml(build()) for name, build in BASE_FILES.items()}
    files["base/kustomization.yaml"] = to_yaml(base_kustomization())
    for overlay in OVERLAYS:
        files.update({f"overlays/{overlay}/{n}": t for n, t in overlay_files(overlay).items()})
    files.update({f"secret-prov/{n}": t for n, t in secret_prov_files().items()})
    return {rel: _TREE_HEADER + text for rel, text in files.items()}


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
                replace_op("/spec/minReplicas", settings.replicas),
                replace_op("/spec/maxReplicas", settings.max_replicas),
            ],
        ),
        (
            "Service",
            "secret-prov",
            "patch-secret-prov-endpoint.yaml",
            [replace_op("/spec/externalName", settings.secret_prov_host)],
        ),
    ]
    if settings.secret_prov_cidr:
        # egress[1] is the key server's rule (egress[0] is DNS): see _k8s_server._server_network_policy.
        ops.append(
            (
                "NetworkPolicy",
                SERVER,
                "patch-networkpolicy.yaml",
                [replace_op("/spec/egress/1/to/0/ipBlock/cidr", settings.secret_prov_cidr)],
            )
        )
    if settings.pccs_cidr and settings.overlay == "sgx":
        ops.append(
            (
                "NetworkPolicy",
                f"{SERVER}-pccs",
                "patch-networkpolicy-pccs.yaml",
                [replace_op("/spec/egress/0/to/0/ipBlock/cidr", settings.pccs_cidr)],
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
                    *(replace_op(epc.format(kind), settings.epc) for kind in ("requests", "limits")),
                    replace_op(
                        "/spec/template/spec/containers/0/resources/limits/memory",
                        sgx_memory_limit(settings.epc),
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
                [replace_op("/spec/template/spec/containers/0/readinessProbe", probe)],
            )
        )
    patches = [{"path": file, "target": {"kind": kind, "name": name}} for kind, name, file, _ in ops]
    kustomization = new_kustomization(
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
    sp = new_kustomization(
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
        files["simulation-patch.yaml"] = to_yaml(secret_prov_simulation_patch())
    else:
        if settings.pccs_url:
            last = len(secret_prov_args()) - 1  # --pccs-url is the last argument
            path = f"/spec/template/spec/containers/0/args/{last}"
            ops.append(
                (
                    "StatefulSet",
                    "secret-prov",
                    "patch-pccs-url.yaml",
                    [replace_op(path, f"--pccs-url={settings.pccs_url}")],
                )
            )
        if settings.pccs_cidr:
            # egress[1] is the PCCS rule (egress[0] is DNS): see _k8s_keyservice._secret_prov_network_policy.
            ops.append(
                (
                    "NetworkPolicy",
                    "secret-prov",
                    "patch-networkpolicy-pccs.yaml",
                    [replace_op("/spec/egress/1/to/0/ipBlock/cidr", settings.pccs_cidr)],
                )
            )
    if ops:
        sp["patches"] = [{"path": f, "target": {"kind": k, "name": n}} for k, n, f, _ in ops]
        files.update({f: to_yaml(o) for _, _, f, o in ops})
    files["kustomization.yaml"] = to_yaml(
        sp, comment="Rendered by `confserve render k8s`: the key service and its policy."
    )
    return files


def write_files(root: Path, files: Mapping[str, str]) -> list[Path]:
    """Write `files` under `root` (directories created); returns the paths written."""
    written = []
    for rel, text in sorted(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
