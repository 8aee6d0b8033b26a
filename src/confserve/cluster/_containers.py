"""The simulation overlay on a real container engine: the objects `confserve render k8s --overlay
simulation --with-secret-prov` renders, run with podman or docker (scripts/container-cluster).

Theory of operation
-------------------
There is no Kubernetes here, so the Kubernetes objects are the input and this module is the scheduler.
`kubectl kustomize` builds the deployment's two kustomizations into plain objects; the owner's
out-of-band objects (the Secrets and the ConfigMap `kubectl create` makes in docs/deployment.md, and the
models volume) are made from the workspace; `plan()` maps every object to engine resources, refusing any
kind or field it does not know rather than dropping it silently:

| object                         | on the engine                                                      |
|--------------------------------|--------------------------------------------------------------------|
| Deployment (N replicas)        | N containers `<name>-<i>`                                           |
| StatefulSet (N replicas)       | N containers `<name>-<ordinal>`; each claim template a named volume |
| initContainers                 | one-shot containers, run to completion before the pod's container   |
| command, args, env, envFrom,   | entrypoint, arguments (`$(VAR)` expanded as the kubelet does),      |
| workingDir                     | environment, working directory                                      |
| securityContext                | --user uid:gid, --read-only, --cap-drop ALL, no-new-privileges; the |
|                                | engine's default seccomp profile is RuntimeDefault; runAsNonRoot is |
|                                | checked; fsGroup is the group of Secret files and emptyDirs         |
| resources.limits.memory        | --memory (requests are scheduling hints: nothing to schedule here)  |
| Secret, ConfigMap volumes      | files staged on the host (defaultMode, group fsGroup, items,        |
|                                | subPath), bind-mounted read-only                                    |
| emptyDir                       | medium Memory, one container: a tmpfs mount (sizeLimit, mode 1777); |
|                                | shared with an init container: a directory owned by the pod's user |
|                                | on the host's /dev/shm (sizeLimit not enforced); else a volume      |
| persistentVolumeClaim          | a host directory the caller names (the models), read-only           |
| Service (ClusterIP, headless)  | DNS aliases `<svc>.<ns>.svc.cluster.local` on the selected          |
|                                | containers (and per-pod names for a headless Service)               |
| Service (ExternalName)         | its name as an alias on the target's containers (ours only)         |
| readinessProbe, startupProbe   | the probe, run inside the container by its Python (`exec`); the     |
|                                | startup probe's period x failureThreshold is the start deadline     |
| Ingress (ssl-passthrough)      | nginx (deploy/docker/lb.Dockerfile) with confserve's load-balancer  |
|                                | configuration: rule 1 on port 8443, rule 2 on 8444, TLS passed      |
|                                | through to the replicas behind the rule's Service port              |
| NetworkPolicy                  | one internal network with no route out (stricter than both         |
|                                | policies); only the load balancer is also on an edge network, and   |
|                                | publishes its ports on 127.0.0.1 only                               |
| Namespace, ServiceAccount,     | nothing: names only (no API server, no voluntary disruptions, a     |
| PodDisruptionBudget, HPA       | fixed replica count)                                                |

Every resource carries the label `io.confserve.simulation=<name>`, and `down()` removes everything with
it (containers, volumes, networks) plus the staged files, so nothing is left behind, also after a crash.
The start order is the dependency order: the key service, then the replicas (each attests to it and
fetches the model key before opening its ports), then the load balancer.
"""

from __future__ import annotations

import base64
import json
import os
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from confserve import pf
from confserve.cluster._nginx import NginxConfig, render_nginx
from confserve.errors import ConfserveError, Status

__all__ = [
    "LABEL",
    "ContainerSpec",
    "ContainersError",
    "Engine",
    "Mount",
    "Plan",
    "Probe",
    "StagedFile",
    "VolumeSpec",
    "container_args",
    "expand_env",
    "find_engine",
    "host_ulimits",
    "memory_root",
    "plan",
    "secret_object",
]

LABEL: Final = "io.confserve.simulation"
LB_NAME: Final = "confserve-lb"
LB_PORTS: Final = (8443, 8444)  # container ports of the load balancer, one per Ingress rule (at most 2)
LB_CONFIG: Final = "/etc/confserve-lb/nginx.conf"  # where lb.Dockerfile's ENTRYPOINT reads it
CLUSTER_DOMAIN: Final = "svc.cluster.local"
# Ulimits: runc refuses to start a container whose limits exceed the host's hard limits, and the engines'
# defaults (nofile 1048576) do on hosts with lower ones. Never more than these, never more than the host.
_NOFILE_MAX: Final = 65536
_NPROC_MAX: Final = 32768
# The probe, run inside the container by its Python: like the kubelet's tcpSocket and httpGet (HTTPS
# without verifying the certificate, as the kubelet does). Exit 0 when ready.
_PROBE_CODE: Final = (
    "import socket,ssl,sys,urllib.request\n"
    "kind,port,path=sys.argv[1],int(sys.argv[2]),sys.argv[3]\n"
    "if kind=='tcp':\n"
    "    socket.create_connection(('127.0.0.1',port),timeout=2).close()\n"
    "else:\n"
    "    ctx=ssl._create_unverified_context() if kind=='https' else None\n"
    "    urllib.request.urlopen(f'{kind}://127.0.0.1:{port}{path}',timeout=2,context=ctx).read()\n"
)
_ENV_REF: Final = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_SIZE: Final = re.compile(r"([0-9]+)(Ki|Mi|Gi)?")
_HANDLED_KINDS: Final = frozenset(
    {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "StatefulSet",
        "Ingress",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
)
# Pod and container fields this mapping understands; anything else in a rendered object is an error.
_POD_FIELDS: Final = frozenset(
    {
        "serviceAccountName",
        "automountServiceAccountToken",
        "enableServiceLinks",
        "securityContext",
        "terminationGracePeriodSeconds",
        "affinity",  # one host: anti-affinity has nothing to spread over
        "initContainers",
        "containers",
        "volumes",
    }
)
_CONTAINER_FIELDS: Final = frozenset(
    {
        "name",
        "image",
        "imagePullPolicy",
        "command",
        "args",
        "env",
        "envFrom",
        "workingDir",
        "ports",
        "startupProbe",
        "readinessProbe",
        "livenessProbe",  # the engine does not restart; a dead replica shows in the check instead
        "resources",
        "securityContext",
        "volumeMounts",
    }
)


class ContainersError(ConfserveError, status=Status.FAILED_PRECONDITION):
    """The objects cannot be run on the container engine, or the engine failed."""


# --------------------------------------------------------------------------------------------------
# What runs: plain data, built from the objects by plan()


@dataclass(frozen=True)
class Mount:
    kind: Literal["bind", "volume", "tmpfs"]
    target: str
    source: str = ""  # host path (bind) or volume name (volume)
    read_only: bool = False
    size: str | None = None  # tmpfs


@dataclass(frozen=True)
class Probe:
    kind: Literal["tcp", "http", "https"]
    port: int
    path: str = "/"

    def argv(self) -> list[str]:
        return ["python3", "-c", _PROBE_CODE, self.kind, str(self.port), self.path]


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    args: tuple[str, ...]
    entrypoint: str | None = None  # None: the image's
    user: str | None = None  # uid:gid
    group_add: tuple[int, ...] = ()
    workdir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    read_only_root: bool = False
    cap_drop_all: bool = False
    no_new_privileges: bool = False
    memory: str | None = None  # bytes, as a string
    stop_timeout_seconds: int = 30
    aliases: tuple[str, ...] = ()
    edge: bool = False  # also on the edge network, with its ports published on 127.0.0.1
    publish: tuple[int, ...] = ()  # container ports published on 127.0.0.1 (a free port each)
    readiness: Probe | None = None
    start_deadline_seconds: float = 120.0
    one_shot: bool = False  # an init container: runs to completion
    container_ports: Mapping[str, int] = field(default_factory=dict)  # name -> port


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    tmpfs: bool = False
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class StagedFile:
    """A Secret or ConfigMap key as a file under the staging directory (a volume the kubelet would make)."""

    path: str  # relative to the staging directory
    data: bytes
    mode: int
    gid: int | None = None


@dataclass(frozen=True)
class Plan:
    prefix: str  # the simulation's name: label value and name prefix of networks and volumes
    files: tuple[StagedFile, ...]
    volumes: tuple[VolumeSpec, ...]
    stages: tuple[tuple[ContainerSpec, ...], ...]  # started in order, each stage ready before the next
    ingress_hosts: tuple[tuple[str, int], ...]  # (Ingress host, load-balancer container port)
    lb_config: str

    @property
    def internal_network(self) -> str:
        return f"{self.prefix}-internal"

    @property
    def edge_network(self) -> str:
        return f"{self.prefix}-edge"

    def containers(self) -> list[ContainerSpec]:
        return [c for stage in self.stages for c in stage]

    def find(self, name: str) -> ContainerSpec:
        for c in self.containers():
            if c.name == name:
                return c
        raise ContainersError(f"no container {name!r} in the plan")


# --------------------------------------------------------------------------------------------------
# Small rules


def expand_env(value: str, env: Mapping[str, str]) -> str:
    """The kubelet's expansion of command and args: `$(VAR)` becomes VAR's value when VAR is defined (else
    it stays as written), `$$` becomes `$`."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _ENV_REF.sub(one, value)


def _bytes(quantity: str) -> str:
    match = _SIZE.fullmatch(quantity)
    if match is None:
        raise ContainersError(f"cannot map the quantity {quantity!r} (expected N, NKi, NMi or NGi)")
    scale = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}[match.group(2)]
    return str(int(match.group(1)) * scale)


def memory_root(prefix: str) -> Path:
    """Where the memory-backed emptyDirs shared between containers live on the host (a tmpfs)."""
    return Path("/dev/shm") / prefix  # noqa: S108 - created 0700, removed by down()


def host_ulimits() -> dict[str, int]:
    """nofile and nproc for containers: the engines' defaults, capped at this host's hard limits."""
    out = {}
    for name, which, most in (
        ("nofile", resource.RLIMIT_NOFILE, _NOFILE_MAX),
        ("nproc", resource.RLIMIT_NPROC, _NPROC_MAX),
    ):
        hard = resource.getrlimit(which)[1]
        out[name] = most if hard == resource.RLIM_INFINITY else min(most, hard)
    return out


def secret_object(
    kind: Literal["Secret", "ConfigMap"], name: str, namespace: str, files: Mapping[str, bytes]
) -> dict[str, Any]:
    """What `kubectl create secret generic` / `create configmap` with `--from-file` makes."""
    meta = {"name": name, "namespace": namespace}
    if kind == "Secret":
        data = {k: base64.b64encode(v).decode() for k, v in files.items()}
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta, "data": data}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {k: v.decode() for k, v in files.items()},
    }


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _ident(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind')} {_get(obj, 'metadata', 'namespace')}/{_get(obj, 'metadata', 'name')}"


# --------------------------------------------------------------------------------------------------
# The mapping


@dataclass
class _Context:
    objects: list[dict[str, Any]]
    claims: Mapping[str, Path]
    prefix: str
    lb_image: str
    stream_module: str | None
    memory_root: Path
    files: list[StagedFile] = field(default_factory=list)
    volumes: list[VolumeSpec] = field(default_factory=list)

    def lookup(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        for obj in self.objects:
            meta = obj.get("metadata") or {}
            if obj.get("kind") == kind and meta.get("name") == name and meta.get("namespace") == namespace:
                return obj
        raise ContainersError(f"{kind} {namespace}/{name} is referenced but not among the objects")


def _key_data(obj: Mapping[str, Any]) -> dict[str, bytes]:
    if obj["kind"] == "Secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    return {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}


def _stage(ctx: _Context, obj: Mapping[str, Any], source: Mapping[str, Any], gid: int | None) -> str:
    """Stage a Secret or ConfigMap volume's files; returns their directory (relative)."""
    data = _key_data(obj)
    mode = int(source.get("defaultMode", 0o644))
    directory = f"{obj['kind'].lower()}/{_get(obj, 'metadata', 'namespace')}/{_get(obj, 'metadata', 'name')}"
    items = source.get("items")
    chosen = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
    for key, path in chosen.items():
        if key not in data:
            raise ContainersError(f"{_ident(obj)} has no key {key!r}")
        if "/" in path or path.startswith("."):
            raise ContainersError(f"{_ident(obj)}: item path {path!r} is not a plain file name")
        staged = StagedFile(f"{directory}/{path}", data[key], mode, gid)
        if staged not in ctx.files:
            ctx.files.append(staged)
    return directory


def _pod_volumes(
    ctx: _Context, namespace: str, pod_name: str, pod: Mapping[str, Any], uid: int | None, gid: int | None
) -> dict[str, Mount]:
    """Each pod volume as a mount source: (kind, source) with an empty target, filled per volumeMount."""
    out: dict[str, Mount] = {}
    users: dict[str, int] = {}  # volume -> how many containers of the pod mount it
    for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        for vm in container.get("volumeMounts") or []:
            users[vm["name"]] = users.get(vm["name"], 0) + 1
    for volume in pod.get("volumes") or []:
        name = volume["name"]
        if "secret" in volume:
            obj = ctx.lookup("Secret", namespace, volume["secret"]["secretName"])
            out[name] = Mount("bind", "", _stage(ctx, obj, volume["secret"], gid), read_only=True)
        elif "configMap" in volume:
            obj = ctx.lookup("ConfigMap", namespace, volume["configMap"]["name"])
            out[name] = Mount("bind", "", _stage(ctx, obj, volume["configMap"], gid), read_only=True)
        elif "emptyDir" in volume:
            spec = volume["emptyDir"] or {}
            size = _bytes(spec["sizeLimit"]) if spec.get("sizeLimit") else None
            memory = spec.get("medium") == "Memory"
            if memory and users.get(name, 0) <= 1:
                # One container: a tmpfs mount of its own, sized, world-writable as an emptyDir is.
                out[name] = Mount("tmpfs", "", size=size)
                continue
            # Shared (an init container fills it): it must outlive each container, as an emptyDir lives
            # with its pod. A tmpfs volume of the engine is a new, empty tmpfs at every mount, so a memory
            # emptyDir is a directory on the host's /dev/shm instead; others are named volumes.
            vol = VolumeSpec(f"{ctx.prefix}-{pod_name}-{name}", tmpfs=memory, uid=uid, gid=gid)
            ctx.volumes.append(vol)
            source = str(ctx.memory_root / vol.name) if memory else vol.name
            out[name] = Mount("bind" if memory else "volume", "", source)
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in ctx.claims:
                raise ContainersError(f"no host directory for the claim {claim!r}")
            out[name] = Mount(
                "bind",
                "",
                str(ctx.claims[claim]),
                read_only=bool(volume["persistentVolumeClaim"].get("readOnly")),
            )
        else:
            raise ContainersError(f"pod volume {name!r}: only secret, configMap, emptyDir and claims map")
    return out


def _probe(spec: Mapping[str, Any] | None, ports: Mapping[str, int]) -> Probe | None:
    if not spec:
        return None

    def port_of(value: object) -> int:
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value in ports:
            return ports[value]
        raise ContainersError(f"probe port {value!r} is not a port of the container")

    if "tcpSocket" in spec:
        return Probe("tcp", port_of(spec["tcpSocket"]["port"]))
    if "httpGet" in spec:
        get = spec["httpGet"]
        scheme = str(get.get("scheme", "HTTP")).lower()
        if scheme not in ("http", "https"):
            raise ContainersError(f"probe scheme {scheme!r}")
        return Probe(
            "https" if scheme == "https" else "http", port_of(get["port"]), str(get.get("path", "/"))
        )
    raise ContainersError("only tcpSocket and httpGet probes map")


def _container(
    ctx: _Context,
    namespace: str,
    pod_name: str,
    pod: Mapping[str, Any],
    spec: Mapping[str, Any],
    volumes: Mapping[str, Mount],
    *,
    one_shot: bool,
) -> ContainerSpec:
    unknown = set(spec) - _CONTAINER_FIELDS
    if unknown:
        raise ContainersError(f"container {spec.get('name')!r}: fields {sorted(unknown)} do not map")
    pod_sec = pod.get("securityContext") or {}
    sec = {**pod_sec, **(spec.get("securityContext") or {})}
    uid, gid = sec.get("runAsUser"), sec.get("runAsGroup", sec.get("runAsUser"))
    if sec.get("runAsNonRoot") and (uid is None or uid == 0):
        raise ContainersError(f"container {spec['name']!r}: runAsNonRoot needs a numeric non-zero runAsUser")
    if sec.get("privileged"):
        raise ContainersError(f"container {spec['name']!r} asks to be privileged")
    env: dict[str, str] = {}
    for source in spec.get("envFrom") or []:
        if "configMapRef" not in source:
            raise ContainersError("envFrom: only configMapRef maps")
        obj = ctx.lookup("ConfigMap", namespace, source["configMapRef"]["name"])
        env.update({k: v.decode() for k, v in _key_data(obj).items()})
    for item in spec.get("env") or []:
        if "value" not in item:
            raise ContainersError(f"env {item.get('name')!r}: only literal values map")
        env[item["name"]] = expand_env(str(item["value"]), env)
    command = [expand_env(str(a), env) for a in spec.get("command") or []]
    args = [expand_env(str(a), env) for a in spec.get("args") or []]
    mounts = []
    for vm in spec.get("volumeMounts") or []:
        base = volumes.get(vm["name"])
        if base is None:
            raise ContainersError(f"volumeMount {vm['name']!r} names no pod volume")
        source = base.source
        if vm.get("subPath"):
            if base.kind != "bind":
                raise ContainersError("subPath maps only for secret, configMap and claim volumes")
            source = f"{source}/{vm['subPath']}"
        mounts.append(
            replace(
                base,
                target=vm["mountPath"],
                source=source,
                read_only=base.read_only or bool(vm.get("readOnly")),
            )
        )
    ports = {p["name"]: int(p["containerPort"]) for p in spec.get("ports") or [] if "name" in p}
    startup = spec.get("startupProbe") or {}
    deadline = (
        float(startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)) if startup else 120.0
    )
    readiness = _probe(spec.get("readinessProbe") or startup or None, ports)
    memory = _get(spec, "resources", "limits", "memory")
    caps = _get(sec, "capabilities", "drop") or []
    fs_group = pod_sec.get("fsGroup")
    return ContainerSpec(
        name=pod_name if not one_shot else f"{pod_name}-init-{spec['name']}",
        image=str(spec["image"]),
        entrypoint=command[0] if command else None,
        args=tuple(command[1:] + args),
        user=None if uid is None else f"{uid}:{gid}",
        group_add=(fs_group,) if fs_group is not None and fs_group != gid else (),
        workdir=spec.get("workingDir"),
        env=tuple(sorted(env.items())),
        mounts=tuple(mounts),
        read_only_root=bool(sec.get("readOnlyRootFilesystem")),
        cap_drop_all="ALL" in caps,
        no_new_privileges=sec.get("allowPrivilegeEscalation") is False,
        memory=_bytes(memory) if memory else None,
        stop_timeout_seconds=int(pod.get("terminationGracePeriodSeconds", 30)),
        readiness=None if one_shot else readiness,
        start_deadline_seconds=deadline,
        one_shot=one_shot,
        container_ports=ports,
    )


def _workload_pods(ctx: _Context, obj: Mapping[str, Any]) -> list[list[ContainerSpec]]:
    """One list per pod: its init containers in order, then its container (one per pod here)."""
    namespace = _get(obj, "metadata", "namespace")
    name = _get(obj, "metadata", "name")
    pod = _get(obj, "spec", "template", "spec") or {}
    unknown = set(pod) - _POD_FIELDS
    if unknown:
        raise ContainersError(f"{_ident(obj)}: pod fields {sorted(unknown)} do not map")
    if len(pod.get("containers") or []) != 1:
        raise ContainersError(f"{_ident(obj)}: one container per pod maps (sidecars do not)")
    sec = pod.get("securityContext") or {}
    uid, gid = sec.get("runAsUser"), sec.get("fsGroup", sec.get("runAsGroup"))
    pods = []
    for index in range(int(_get(obj, "spec", "replicas") or 1)):
        pod_name = f"{name}-{index}"
        volumes = _pod_volumes(ctx, namespace, pod_name, pod, uid, gid)
        for template in _get(obj, "spec", "volumeClaimTemplates") or []:
            claim = template["metadata"]["name"]
            vol = VolumeSpec(f"{ctx.prefix}-{pod_name}-{claim}")
            ctx.volumes.append(vol)
            volumes = {**volumes, claim: Mount("volume", "", vol.name)}
        members = [
            _container(ctx, namespace, pod_name, pod, c, volumes, one_shot=True)
            for c in pod.get("initContainers") or []
        ]
        members.append(
            _container(ctx, namespace, pod_name, pod, pod["containers"][0], volumes, one_shot=False)
        )
        pods.append(members)
    return pods


def _selects(selector: Mapping[str, str], workload: Mapping[str, Any]) -> bool:
    labels = _get(workload, "spec", "template", "metadata", "labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def plan(
    objects: Iterable[Mapping[str, Any]],
    *,
    claims: Mapping[str, Path],
    prefix: str,
    lb_image: str,
    stream_module: str | None,
) -> Plan:
    """Map the objects (rendered and out-of-band) to what runs on the engine; see the module docstring."""
    objs = [dict(o) for o in objects]
    for obj in objs:
        if obj.get("kind") not in _HANDLED_KINDS:
            raise ContainersError(f"{_ident(obj)}: this kind does not map to the container engine")
    ctx = _Context(objs, claims, prefix, lb_image, stream_module, memory_root(prefix))
    workloads = [o for o in objs if o["kind"] in ("StatefulSet", "Deployment")]
    # Dependency order: the key service (StatefulSet) before the replicas (Deployment).
    workloads.sort(key=lambda o: o["kind"] != "StatefulSet")
    pods = {id(w): _workload_pods(ctx, w) for w in workloads}
    aliases: dict[str, list[str]] = {}  # container name -> DNS names
    services = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs if o["kind"] == "Service"
    }

    def backing(namespace: str, service: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], ContainerSpec]]:
        selector = _get(service, "spec", "selector") or {}
        found: list[tuple[Mapping[str, Any], ContainerSpec]] = []
        for w in workloads:
            if _get(w, "metadata", "namespace") == namespace and _selects(selector, w):
                found += [(w, members[-1]) for members in pods[id(w)]]
        return found

    for (namespace, name), service in services.items():
        fqdn = f"{name}.{namespace}.{CLUSTER_DOMAIN}"
        if _get(service, "spec", "type") == "ExternalName":
            target = str(_get(service, "spec", "externalName"))
            ours = [
                (ns, n)
                for (ns, n) in services
                if f"{n}.{ns}.{CLUSTER_DOMAIN}" == target and (ns, n) != (namespace, name)
            ]
            if not ours:
                raise ContainersError(f"{_ident(service)} points at {target}, which is not run here")
            for _, container in backing(ours[0][0], services[ours[0]]):
                aliases.setdefault(container.name, []).append(fqdn)
            continue
        headless = _get(service, "spec", "clusterIP") == "None"
        for _, container in backing(namespace, service):
            aliases.setdefault(container.name, []).append(fqdn)
            if headless:
                aliases[container.name].append(f"{container.name}.{fqdn}")
    stages: list[tuple[ContainerSpec, ...]] = []
    for w in workloads:
        stage = []
        for members in pods[id(w)]:
            main = members[-1]
            stage += members[:-1]
            stage.append(replace(main, aliases=tuple(sorted(set(aliases.get(main.name, []))))))
        stages.append(tuple(stage))
    hosts, lb_config = _ingress(ctx, objs, services, backing)
    lb = ContainerSpec(
        name=LB_NAME,
        image=lb_image,
        args=(),
        user=None,  # the image's non-root user
        mounts=(
            Mount("bind", LB_CONFIG, "lb/nginx.conf", read_only=True),
            Mount("tmpfs", "/tmp", size=str(16 << 20)),  # noqa: S108 - the container's own tmpfs
        ),
        read_only_root=True,
        cap_drop_all=True,
        no_new_privileges=True,
        stop_timeout_seconds=10,
        edge=True,
        publish=tuple(port for _, port in hosts),
    )
    ctx.files.append(StagedFile("lb/nginx.conf", lb_config.encode(), 0o444))
    stages.append((lb,))
    return Plan(prefix, tuple(ctx.files), tuple(ctx.volumes), tuple(stages), tuple(hosts), lb_config)


def _ingress(
    ctx: _Context,
    objs: Sequence[Mapping[str, Any]],
    services: Mapping[tuple[str, str], Mapping[str, Any]],
    backing: Callable[[str, Mapping[str, Any]], list[tuple[Mapping[str, Any], ContainerSpec]]],
) -> tuple[list[tuple[str, int]], str]:
    ingresses = [o for o in objs if o["kind"] == "Ingress"]
    if len(ingresses) != 1:
        raise ContainersError("exactly one Ingress maps to the load balancer")
    ingress = ingresses[0]
    if _get(ingress, "metadata", "annotations", "nginx.ingress.kubernetes.io/ssl-passthrough") != "true":
        raise ContainersError(
            f"{_ident(ingress)}: only TLS passthrough maps (the load balancer holds no key)"
        )
    namespace = ingress["metadata"]["namespace"]
    rules = _get(ingress, "spec", "rules") or []
    if not 1 <= len(rules) <= len(LB_PORTS):
        raise ContainersError(f"{_ident(ingress)}: 1 or 2 rules map, not {len(rules)}")
    listen: list[tuple[str, int, list[str]]] = []
    for rule, lb_port in zip(rules, LB_PORTS, strict=False):
        paths = _get(rule, "http", "paths") or []
        if len(paths) != 1 or paths[0].get("path", "/") != "/":
            raise ContainersError(f"{_ident(ingress)}: one path '/' per rule maps (passthrough has no paths)")
        backend = _get(paths[0], "backend", "service") or {}
        service = services.get((namespace, str(backend.get("name"))))
        if service is None:
            raise ContainersError(f"{_ident(ingress)}: no Service {backend.get('name')!r}")
        wanted = backend.get("port") or {}
        sport = next(
            (
                p
                for p in _get(service, "spec", "ports") or []
                if p.get("name") == wanted.get("name") or p.get("port") == wanted.get("number")
            ),
            None,
        )
        if sport is None:
            raise ContainersError(f"{_ident(service)} has no port {wanted}")
        target = sport.get("targetPort", sport["port"])
        backends = []
        for _, container in backing(namespace, service):
            port = target if isinstance(target, int) else container.container_ports.get(str(target))
            if port is None:
                raise ContainersError(f"{container.name} has no port named {target!r}")
            backends.append(f"{container.name}:{port}")
        if not backends:
            raise ContainersError(f"{_ident(service)} selects no container")
        listen.append((str(rule["host"]), lb_port, backends))
    config = NginxConfig(
        grpc_listen=f"0.0.0.0:{listen[0][1]}",
        grpc_backends=listen[0][2],
        run_dir=Path("/tmp"),  # noqa: S108 - inside the load balancer's container (a tmpfs)
        rest_listen=f"0.0.0.0:{listen[1][1]}" if len(listen) > 1 else None,
        rest_backends=listen[1][2] if len(listen) > 1 else (),
        stream_module=ctx.stream_module,
    )
    return [(host, port) for host, port, _ in listen], render_nginx(config)


# --------------------------------------------------------------------------------------------------
# Engine command lines (pure) and the engine itself (the one place that runs it)


def _mount_option(m: Mount, staging: Path) -> str:
    if m.kind == "bind":
        source = Path(m.source) if os.path.isabs(m.source) else staging / m.source
        option = f"type=bind,source={source},target={m.target}"
    elif m.kind == "volume":
        option = f"type=volume,source={m.source},target={m.target}"
    else:
        option = f"type=tmpfs,target={m.target},tmpfs-mode=1777" + (f",tmpfs-size={m.size}" if m.size else "")
    return option + (",readonly" if m.read_only else "")


def container_args(
    spec: ContainerSpec, plan_: Plan, *, staging: Path, ulimits: Mapping[str, int], engine: str
) -> list[str]:
    """`create` arguments for one container (podman and docker take the same ones)."""
    args = ["create", "--name", spec.name, "--label", f"{LABEL}={plan_.prefix}", "--pull=never"]
    # Ports are published on the network a container is created on: the edge network for the load
    # balancer, which start() then connects to the internal one.
    args += ["--network", plan_.edge_network if spec.edge else plan_.internal_network]
    args += [f"--network-alias={alias}" for alias in spec.aliases]
    for limit, value in sorted(ulimits.items()):
        args += ["--ulimit", f"{limit}={value}:{value}"]
    if spec.entrypoint is not None:
        args += ["--entrypoint", spec.entrypoint]
    if spec.user is not None:
        args += ["--user", spec.user]
    args += [f"--group-add={g}" for g in spec.group_add]
    if spec.workdir:
        args += ["--workdir", spec.workdir]
    for key, text in spec.env:
        args += ["--env", f"{key}={text}"]
    for m in spec.mounts:
        args += ["--mount", _mount_option(m, staging)]
    if spec.read_only_root:
        args += ["--read-only"]
        if engine == "podman":
            args += ["--read-only-tmpfs=false"]  # as in Kubernetes: writable only where a volume is
    if spec.cap_drop_all:
        args += ["--cap-drop", "ALL"]
    if spec.no_new_privileges:
        args += ["--security-opt", "no-new-privileges"]
    if spec.memory:
        args += ["--memory", spec.memory]
    args += ["--stop-timeout", str(spec.stop_timeout_seconds)]
    for port in spec.publish:
        args += ["--publish", f"127.0.0.1::{port}"]
    args.append(spec.image)
    args += list(spec.args)
    return args


def find_engine(preferred: str | None = None) -> str:
    """podman or docker (the engine that runs containers; buildah only builds)."""
    for name in [preferred] if preferred else ["podman", "docker"]:
        if name and shutil.which(name):
            return name
    raise ContainersError(
        "no container engine: install podman (Debian: apt-get install podman) or docker"
        if not preferred
        else f"{preferred} is not installed"
    )


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class Engine:
    """The container engine's command line, and the only place this module runs it."""

    def __init__(self, name: str, run: Runner = subprocess.run) -> None:
        self.name = name
        self._run = run

    def __call__(self, *args: str, check: bool = True, timeout: float = 300.0) -> str:
        done = self._run([self.name, *args], capture_output=True, text=True, check=False, timeout=timeout)
        if check and done.returncode != 0:
            raise ContainersError(
                f"{self.name} {args[0]} failed (exit {done.returncode}): {done.stderr.strip()[-600:]}"
            )
        return str(done.stdout)

    def result(self, *args: str, timeout: float = 300.0) -> tuple[int, str, str]:
        """Exit code, stdout and stderr."""
        done = self._run([self.name, *args], capture_output=True, text=True, check=False, timeout=timeout)
        return done.returncode, str(done.stdout), str(done.stderr)

    def ok(self, *args: str, timeout: float = 30.0) -> bool:
        try:
            done = self._run([self.name, *args], capture_output=True, text=True, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def labelled(self, kind: Literal["container", "volume", "network"], prefix: str) -> list[str]:
        listing = {
            "container": ("ps", "-a", "--format", "{{.Names}}"),
            "volume": ("volume", "ls", "--format", "{{.Name}}"),
            "network": ("network", "ls", "--format", "{{.Name}}"),
        }[kind]
        out = self(*listing[:-2], "--filter", f"label={LABEL}={prefix}", *listing[-2:])
        return [line.strip() for line in out.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# Bringing a plan up and down


Progress = Callable[[str], None]


def write_staged(staging: Path, files: Iterable[StagedFile]) -> None:
    """Write the staged files as the kubelet writes a Secret volume: mode, group fsGroup, owner root."""
    staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    for f in files:
        path = staging / f.path
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with pf.atomic_output(path, mode=f.mode, replace=True) as handle:  # keys among them: mode first
            handle.write(f.data)
        if f.gid is not None:
            os.chown(path, 0, f.gid, follow_symlinks=False)


def create_resources(engine: Engine, plan_: Plan) -> None:
    label = f"{LABEL}={plan_.prefix}"
    engine("network", "create", "--internal", "--label", label, plan_.internal_network)
    engine("network", "create", "--label", label, plan_.edge_network)
    for vol in plan_.volumes:
        if vol.tmpfs:
            directory = memory_root(plan_.prefix) / vol.name
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chown(directory, vol.uid if vol.uid is not None else 0, vol.gid if vol.gid is not None else 0)
            continue
        engine("volume", "create", "--label", label, vol.name)


def wait_ready(
    engine: Engine,
    spec: ContainerSpec,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_seconds: float = 1.0,
) -> float:
    """Run the readiness probe until it passes; fails early when the container stopped. Returns seconds."""
    start = clock()
    while True:
        if spec.readiness is None:
            sleep(
                poll_seconds
            )  # no probe: running a moment after start (nginx fails at once on a bad config)
        elif engine.ok("exec", spec.name, *spec.readiness.argv(), timeout=10.0):
            return clock() - start
        state = engine("inspect", "--format", "{{.State.Status}}", spec.name, check=False).strip()
        if state not in ("running", "created", "configured"):
            _, out, err = engine.result("logs", "--tail", "15", spec.name)
            logs = out + err
            raise ContainersError(f"{spec.name} stopped ({state}) before it was ready; last lines:\n{logs}")
        if spec.readiness is None:
            return clock() - start
        if clock() - start > spec.start_deadline_seconds:
            raise ContainersError(f"{spec.name} not ready after {spec.start_deadline_seconds:.0f} s")
        sleep(poll_seconds)


def start(engine: Engine, plan_: Plan, *, staging: Path, progress: Progress) -> dict[str, float]:
    """Create and start every container, stage by stage; returns seconds to ready per container."""
    ulimits = host_ulimits()
    timings: dict[str, float] = {}
    for stage in plan_.stages:
        begun = time.monotonic()
        mains = []
        for spec in stage:
            engine(*container_args(spec, plan_, staging=staging, ulimits=ulimits, engine=engine.name))
            if spec.edge:
                engine("network", "connect", plan_.internal_network, spec.name)
            if spec.one_shot:
                progress(f"running {spec.name}")
                engine("start", "--attach", spec.name, timeout=120.0)
                code = engine("inspect", "--format", "{{.State.ExitCode}}", spec.name).strip()
                if code != "0":
                    raise ContainersError(f"init container {spec.name} exited with {code}")
            else:
                engine("start", spec.name)
                mains.append(spec)
        progress("started " + ", ".join(s.name for s in mains) + "; waiting until ready")
        for spec in mains:
            wait_ready(engine, spec)
            timings[spec.name] = time.monotonic() - begun
            progress(f"{spec.name} is ready ({timings[spec.name]:.1f} s)")
    return timings


def published_ports(engine: Engine, plan_: Plan) -> dict[str, int]:
    """Ingress host -> the 127.0.0.1 port the load balancer publishes it on."""
    out = {}
    for host, port in plan_.ingress_hosts:
        text = engine("port", LB_NAME, f"{port}/tcp").strip().splitlines()
        address = text[0] if text else ""
        ip, _, number = address.rpartition(":")
        if ip != "127.0.0.1" or not number.isdigit():
            raise ContainersError(
                f"the load balancer's port {port} is published on {address!r}, not 127.0.0.1"
            )
        out[host] = int(number)
    return out


def down(engine: Engine, prefix: str, staging: Path | None = None) -> list[str]:
    """Remove every container, volume and network labelled with `prefix`, and the staged files."""
    removed = []
    containers = engine.labelled("container", prefix)
    if containers:
        engine("rm", "--force", "--time", "10", *containers, timeout=120.0)
        removed += containers
    volumes = engine.labelled("volume", prefix)
    if volumes:
        engine("volume", "rm", "--force", *volumes)
        removed += volumes
    networks = engine.labelled("network", prefix)
    if networks:
        engine("network", "rm", *networks)
        removed += networks
    for directory in (staging, memory_root(prefix)):
        if directory is not None and directory.exists():
            shutil.rmtree(directory)
            removed.append(str(directory))
    return removed


def measure_replica(engine: Engine, plan_: Plan, spec: ContainerSpec, *, staging: Path) -> dict[str, Any]:
    """`serve --print_measurement` in the replica's own image, with its exact arguments and mounts."""
    args = container_args(spec, plan_, staging=staging, ulimits=host_ulimits(), engine=engine.name)
    name_at = args.index("--name")
    args[name_at + 1] = f"{spec.name}-measure"
    args[args.index("--network") + 1] = "none"
    args = [a for a in args if not a.startswith("--network-alias=")]
    args[0] = "run"
    args.insert(1, "--rm")
    out = engine(*args, "--print_measurement")
    try:
        doc = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ContainersError(f"serve --print_measurement printed no JSON: {out[-300:]!r}") from None
    if not isinstance(doc, dict) or "mr_enclave" not in doc:
        raise ContainersError("serve --print_measurement printed no measurement")
    return doc
