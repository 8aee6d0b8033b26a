"""The simulated cluster in containers, end to end (scripts/container-cluster).

Order: the owner's workspace (as `confserve up` makes it, with the key service's certificate naming its
cluster DNS names) -> `confserve render k8s --overlay simulation --with-secret-prov --mutual-tls` with the
built images -> `kubectl kustomize` of both kustomizations -> the owner's out-of-band objects (the
Secrets and ConfigMap of docs/deployment.md, made from the workspace's files) -> `_containers.plan` ->
the replicas' measurement, printed by `serve --print_measurement` in the server image with the replica's
exact arguments and mounts -> render again with that measurement (the key service's policy) -> start ->
the check: `confserve predict --attest` in the client image, through the load balancer, over gRPC with
two-way TLS -> (with --once) tear down.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from confserve.attestation import SIM_COLLATERAL_FILE, SIM_ROOT_FILE
from confserve.cluster import _containers as c
from confserve.cluster._k8s import K8sSettings, Measurement, render_k8s_deployment, write_files
from confserve.cluster._k8s_common import GRPC_HOST, NAMESPACE, SECRET_PROV_ALIAS, SECRET_PROV_NAMESPACE
from confserve.cluster._workspace import Workspace, confserve_command, prepare_workspace

__all__ = ["SimulationResult", "SimulationSettings", "images", "main", "run_simulation"]

SECRET_PROV_HOST: Final = f"secret-prov.{SECRET_PROV_NAMESPACE}.svc.cluster.local"
MODEL: Final = "digits"
_PLACEHOLDER: Final = Measurement(mr_enclave="0" * 64)  # refuses everything; replaced once measured
_CLIENT_UID: Final = 10003  # deploy/docker/client.Dockerfile
Progress = Callable[[str], None]


def images(tag: str) -> dict[str, str]:
    """The names scripts/build-images gives the images."""
    return {role: f"localhost/confserve-{role}:{tag}" for role in ("server", "secret-prov", "client", "lb")}


@dataclass(frozen=True)
class SimulationSettings:
    workspace: Path
    tree: Path  # deploy/kubernetes
    engine: str | None = None
    tag: str = "local"
    name: str = "confserve-sim"  # the label value and the prefix of networks and volumes

    @property
    def staging(self) -> Path:
        return Path(os.path.abspath(self.workspace)) / "containers"


@dataclass
class SimulationResult:
    ready_seconds: dict[str, float] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # Ingress host -> 127.0.0.1 port
    mr_enclave: str = ""
    predicted: int | None = None
    label: int | None = None
    releases: int = 0  # key releases in the key service's audit logs
    attested_line: str = ""
    plan: c.Plan | None = None  # what runs

    @property
    def passed(self) -> bool:
        return self.predicted is not None and self.predicted == self.label


def _kubectl() -> str:
    sibling = Path(sys.executable).parent / "kubectl"
    found = shutil.which("kubectl") or (str(sibling) if sibling.exists() else None)
    if found is None:
        raise c.ContainersError("kubectl is missing (scripts/bootstrap installs it into .venv)")
    return found


def _objects(directory: Path) -> list[dict[str, Any]]:
    import yaml  # type: ignore[import-untyped]  # noqa: PLC0415 - a dev dependency, as kubectl is

    done = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise c.ContainersError(f"kubectl kustomize {directory} failed: {done.stderr.strip()[-600:]}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def out_of_band(ws: Workspace) -> list[dict[str, Any]]:
    """The objects docs/deployment.md has the owner create with kubectl, from the workspace's files."""
    sim = {p.name: p.read_bytes() for p in sorted(ws.sim.iterdir()) if p.is_file()}
    public = {
        n: (ws.sim / n).read_bytes() for n in (SIM_ROOT_FILE, SIM_COLLATERAL_FILE)
    }  # sim-platform publish
    keys = {n: (ws.secret_prov / n).read_bytes() for n in ("server.crt", "server.key", "wrap_key")}
    return [
        c.secret_object(
            "Secret", "confserve-server-tls", NAMESPACE, {"ssl.cfg": (ws.host / "ssl.cfg").read_bytes()}
        ),
        c.secret_object("Secret", "confserve-sim-platform", NAMESPACE, sim),
        c.secret_object(
            "Secret", "confserve-sim-enclave", NAMESPACE, {"enclave-key.pem": ws.signer.read_bytes()}
        ),
        c.secret_object(
            "ConfigMap",
            "confserve-secret-prov-ca",
            NAMESPACE,
            {"ca.crt": (ws.secret_prov / "ca.crt").read_bytes()},
        ),
        c.secret_object(
            "ConfigMap",
            "confserve-release-public-key",
            NAMESPACE,
            {"release.pub.pem": ws.release_public_key.read_bytes()},
        ),
        c.secret_object("Secret", "secret-prov-keys", SECRET_PROV_NAMESPACE, keys),
        c.secret_object("ConfigMap", "confserve-sim-platform-public", SECRET_PROV_NAMESPACE, public),
    ]


def _prepare(ws: Workspace, progress: Progress) -> None:
    if not ws.wrap_key.exists():
        # The replicas reach the key service by its cluster names; its certificate must carry them.
        progress("creating the key service's CA, certificate (cluster DNS names) and the wrap key")
        ws.owner.mkdir(mode=0o700, parents=True, exist_ok=True)
        cmd = confserve_command("secret-prov", "init", str(ws.secret_prov))
        cmd += ["--hostname", SECRET_PROV_ALIAS, "--hostname", SECRET_PROV_HOST]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise c.ContainersError(f"secret-prov init failed: {done.stderr.strip()[-400:]}")
    # The overlay's replicas ask the key service for the default key only (docs/deployment.md).
    prepare_workspace(ws, model=MODEL, tls="twoway", progress=progress, own_model_key=False)


def _render(settings: SimulationSettings, measurement: Measurement) -> list[dict[str, Any]]:
    names = images(settings.tag)
    out = settings.staging / "deploy"
    if out.exists():
        shutil.rmtree(out)
    k8s = K8sSettings(
        overlay="simulation",
        tree=settings.tree,
        out=out,
        server_image=names["server"],
        secret_prov_image=names["secret-prov"],
        secret_prov_host=SECRET_PROV_HOST,
        mutual_tls=True,
        measurements=(measurement,),
        with_secret_prov=True,
    )
    write_files(out, render_k8s_deployment(k8s))
    return _objects(out) + _objects(out / "secret-prov")


def _plan(
    settings: SimulationSettings, engine: c.Engine, objects: list[dict[str, Any]], ws: Workspace
) -> c.Plan:
    lb = images(settings.tag)["lb"]
    module = "/usr/lib/nginx/modules/ngx_stream_module.so"  # Debian's dynamic module; built in elsewhere
    ulimits = [a for k, v in sorted(c.host_ulimits().items()) for a in ("--ulimit", f"{k}={v}:{v}")]
    has_module = engine.ok(
        "run", "--rm", "--pull=never", "--network", "none", *ulimits, "--entrypoint", "test", lb, "-f", module
    )
    return c.plan(
        [*objects, *out_of_band(ws)],
        claims={"confserve-models": ws.host / "models"},
        prefix=settings.name,
        lb_image=lb,
        stream_module=module if has_module else None,
    )


def _client_files(ws: Workspace, staging: Path) -> tuple[Path, int]:
    """The client's bundle, the owner's policy, the platform's public root and one held-out digit, readable
    by the client image's user. Returns the directory and the digit's label."""
    import numpy as np  # noqa: PLC0415

    from confserve.owner import load_digits_dataset  # noqa: PLC0415

    _, _, test_images, test_labels = load_digits_dataset()
    directory = staging / "client"
    files = [
        c.StagedFile(f"client/tls/{n}", (ws.client / n).read_bytes(), 0o440, _CLIENT_UID)
        for n in ("ca.crt", "client.crt", "client.key")
    ]
    files += [
        c.StagedFile(f"client/sim/{n}", (ws.sim / n).read_bytes(), 0o440, _CLIENT_UID)
        for n in ("root_ca.cert.pem", "collateral.json")
    ]
    policy = staging / "deploy" / "secret-prov" / "policy.toml"
    files.append(c.StagedFile("client/policy.toml", policy.read_bytes(), 0o440, _CLIENT_UID))
    c.write_staged(staging, files)
    np.save(directory / "digit.npy", test_images[:1])
    os.chown(directory / "digit.npy", 0, _CLIENT_UID)
    (directory / "digit.npy").chmod(0o440)
    return directory, int(test_labels[0])


def check(engine: c.Engine, settings: SimulationSettings, ws: Workspace, result: SimulationResult) -> None:
    """An attested inference with the client image through the load balancer (gRPC, two-way TLS)."""
    directory, label = _client_files(ws, settings.staging)
    port = dict(_lb_ports(settings))[GRPC_HOST]
    ulimits = [a for k, v in sorted(c.host_ulimits().items()) for a in ("--ulimit", f"{k}={v}:{v}")]
    args = [
        "run", "--rm", "--pull=never", "--label", f"{c.LABEL}={settings.name}",
        "--network", f"{settings.name}-edge", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", *ulimits,
        "--mount", f"type=bind,source={directory},target=/input,readonly",
        images(settings.tag)["client"],
        "predict", f"{c.LB_NAME}:{port}", "--model", MODEL,
        "--ca", "/input/tls/ca.crt", "--cert", "/input/tls/client.crt", "--key", "/input/tls/client.key",
        "--server-name", GRPC_HOST,
        "--attest", "/input/policy.toml", "--attest-sim-platform", "/input/sim",
        "--input", "image=/input/digit.npy", "--json",
    ]  # fmt: skip
    code, out, err = engine.result(*args)
    if code != 0:
        raise c.ContainersError(f"the client's attested predict failed (exit {code}): {err.strip()[-800:]}")
    doc = json.loads(out.strip().splitlines()[-1])
    result.predicted = int(doc["outputs"]["classes"]["value"][0])
    result.label = label
    result.attested_line = next((line for line in err.splitlines() if line.startswith("attested:")), "")
    if not result.attested_line:
        raise c.ContainersError("the client printed no attestation verdict")


def _lb_ports(settings: SimulationSettings) -> list[tuple[str, int]]:
    """(Ingress host, load-balancer container port) of the running plan, kept in the staging dir."""
    data = json.loads((settings.staging / "ingress.json").read_text())
    return [(str(h), int(p)) for h, p in data]


def _releases(engine: c.Engine, plan: c.Plan) -> int:
    count = 0
    for spec in plan.containers():
        if spec.one_shot or not spec.name.startswith("secret-prov-"):
            continue
        text = engine("exec", spec.name, "cat", "/var/lib/confserve/audit/audit.log", check=False)
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("outcome") == "released":
                count += 1
    return count


def run_simulation(
    settings: SimulationSettings, *, once: bool, progress: Progress = lambda _: None
) -> SimulationResult:
    engine = c.Engine(c.find_engine(settings.engine))
    for role, image in images(settings.tag).items():
        if not engine.ok("image", "inspect", image):
            raise c.ContainersError(f"image {image} is missing ({role}): run scripts/build-images first")
    if os.geteuid() != 0:
        raise c.ContainersError("run as root: the staged Secret files are given the pods' groups (chown)")
    leftovers = c.down(engine, settings.name, settings.staging)
    if leftovers:
        progress(f"removed {len(leftovers)} leftovers of an earlier run")
    ws = Workspace(settings.workspace)
    _prepare(ws, progress)
    result = SimulationResult()
    try:
        progress("rendering the simulation overlay (render k8s, kubectl kustomize) and mapping it")
        first = _plan(settings, engine, _render(settings, _PLACEHOLDER), ws)
        c.write_staged(settings.staging, first.files)
        c.create_resources(engine, first)
        replica = next(s for s in first.stages[1] if not s.one_shot)
        progress(f"measuring the replicas: serve --print_measurement in {replica.image}")
        measured = c.measure_replica(engine, first, replica, staging=settings.staging)
        result.mr_enclave = str(measured["mr_enclave"])
        (settings.staging / "measurement.json").write_text(json.dumps(measured))
        final = _plan(settings, engine, _render(settings, Measurement.from_json(json.dumps(measured))), ws)
        for stage_a, stage_b in zip(first.stages[1:], final.stages[1:], strict=True):
            if stage_a != stage_b:
                raise c.ContainersError(
                    "the replicas' arguments changed with the policy; measurement invalid"
                )
        c.write_staged(settings.staging, final.files)
        result.plan = final
        (settings.staging / "ingress.json").write_text(json.dumps(final.ingress_hosts))
        started = time.monotonic()
        result.ready_seconds = c.start(engine, final, staging=settings.staging, progress=progress)
        result.ready_seconds["total"] = time.monotonic() - started
        result.ports = c.published_ports(engine, final)
        progress("attested inference with the client image through the load balancer")
        check(engine, settings, ws, result)
        result.releases = _releases(engine, final)
    except BaseException:
        if once:
            c.down(engine, settings.name, settings.staging)
        raise
    if once:
        c.down(engine, settings.name, settings.staging)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/container-cluster",
        description="Run the simulation overlay's objects on podman or docker, then an attested inference.",
    )
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--once", action="store_true", help="up: check, then tear everything down")
    parser.add_argument("--workspace", type=Path, default=Path("workspace-containers"))
    parser.add_argument("--tree", type=Path, default=Path("deploy/kubernetes"))
    parser.add_argument("--engine", choices=["podman", "docker"])
    parser.add_argument("--tag", default="local")
    parser.add_argument("--name", default="confserve-sim")
    opts = parser.parse_args(argv)
    settings = SimulationSettings(opts.workspace, opts.tree, opts.engine, opts.tag, opts.name)

    def say(text: str) -> None:
        print(f"container-cluster: {text}", flush=True)

    try:
        if opts.command == "down":
            engine = c.Engine(c.find_engine(settings.engine))
            removed = c.down(engine, settings.name, settings.staging)
            say(f"removed {len(removed)} resources" if removed else "nothing to remove")
            return 0
        result = run_simulation(settings, once=opts.once, progress=say)
    except c.ContainersError as e:
        say(f"FAILED: {e}")
        return 1
    for name, seconds in result.ready_seconds.items():
        say(f"ready: {name} {seconds:.1f} s")
    say(result.attested_line)
    say(f"key releases in the key service's audit logs: {result.releases}")
    verdict = "PASS" if result.passed else "FAIL"
    say(
        "attested inference through the load balancer: "
        f"digit {result.label} predicted as {result.predicted} -> {verdict}"
    )
    if not opts.once:
        for host, port in result.ports.items():
            say(f"{host} -> 127.0.0.1:{port}")
        say("running; stop with: scripts/container-cluster down")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
