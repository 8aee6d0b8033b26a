"""cluster/_containers.py: the simulation overlay's objects mapped to container-engine resources, without
an engine (the engine is a fake that records commands). tests/containers/ runs the same plan on podman."""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from confserve.cluster import _container_cluster as cc
from confserve.cluster import _containers as c
from confserve.cluster._k8s import Measurement
from confserve.cluster._workspace import Workspace

REPO = Path(__file__).resolve().parents[3]
RealEngine = c.Engine
TREE = REPO / "deploy" / "kubernetes"


def fake_workspace(root: Path) -> Workspace:
    ws = Workspace(root)
    for path, data in {
        ws.sim / "platform.json": b"{}",
        ws.sim / "root_ca.cert.pem": b"root",
        ws.sim / "collateral.json": b"{}",
        ws.sim / "pck.key.pem": b"PRIVATE KEY of the platform",
        ws.secret_prov / "server.crt": b"crt",
        ws.secret_prov / "server.key": b"key",
        ws.secret_prov / "wrap_key": b"k" * 16,
        ws.secret_prov / "ca.crt": b"ca",
        ws.host / "ssl.cfg": b"ciphertext",
        ws.release_public_key: b"release public key",
        ws.signer: b"signer",
    }.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (ws.host / "models").mkdir()
    return ws


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("sim")
    ws = fake_workspace(root / "ws")
    settings = cc.SimulationSettings(ws.root, TREE)
    rendered = cc._render(settings, Measurement(mr_enclave="ab" * 32))
    return rendered + cc.out_of_band(ws)


def make_plan(objects: Sequence[dict[str, Any]], **kw: Any) -> c.Plan:
    args: dict[str, Any] = {
        "claims": {"confserve-models": Path("/models-on-host")},
        "prefix": "sim",
        "lb_image": "localhost/confserve-lb:local",
        "stream_module": "/usr/lib/nginx/modules/ngx_stream_module.so",
    }
    args.update(kw)
    return c.plan(objects, **args)


def test_plan_runs_the_key_service_then_the_replicas_then_the_load_balancer(
    objects: list[dict[str, Any]],
) -> None:
    plan = make_plan(objects)
    names = [[s.name for s in stage] for stage in plan.stages]
    assert names[0] == [
        "secret-prov-0-init-install-keys", "secret-prov-0",
        "secret-prov-1-init-install-keys", "secret-prov-1",
        "secret-prov-2-init-install-keys", "secret-prov-2",
    ]  # fmt: skip
    assert names[1] == ["confserve-model-server-0", "confserve-model-server-1"]
    assert names[2] == [c.LB_NAME]
    assert plan.find("secret-prov-0-init-install-keys").one_shot
    assert plan.ingress_hosts == (
        ("grpc.tf-serving.service.com", 8443),
        ("rest.tf-serving.service.com", 8444),
    )


def test_replica_container_is_the_deployment_as_written(objects: list[dict[str, Any]]) -> None:
    replica = make_plan(objects).find("confserve-model-server-1")
    assert replica.image == "localhost/confserve-server:local"
    assert replica.entrypoint == "confserve"
    # $(MODEL_NAME) and $(MODEL_BASE_PATH) come from the ConfigMap the deployment's kustomization generates.
    assert "--model_name=digits" in replica.args
    assert "--model_base_path=models/digits" in replica.args
    assert "--attestation=simulated" in replica.args
    assert "--secret_provision_servers=secret-prov.confserve.svc.cluster.local:4433" in replica.args
    assert replica.user == "10001:10001"
    assert replica.workdir == "/srv/confserve"
    assert replica.read_only_root
    assert replica.cap_drop_all
    assert replica.no_new_privileges
    assert replica.memory == str(4 << 30)
    assert replica.readiness == c.Probe("tcp", 8500)  # --mutual-tls: the kubelet has no client certificate
    assert replica.start_deadline_seconds == 600
    mounts = {m.target: m for m in replica.mounts}
    assert mounts["/srv/confserve/models"] == c.Mount(
        "bind", "/srv/confserve/models", "/models-on-host", True
    )
    assert mounts["/srv/confserve/ssl.cfg"].source.endswith("/confserve-server-tls/ssl.cfg")
    assert mounts["/srv/confserve/ssl.cfg"].read_only
    assert mounts["/tmp"] == c.Mount("tmpfs", "/tmp", size=str(256 << 20))
    # The owner's release public key, from the ConfigMap out_of_band() creates (docs/deployment.md).
    assert "--release_public_key=/etc/confserve/release/release.pub.pem" in replica.args
    release = mounts["/etc/confserve/release"]
    assert release.read_only
    staged = {f.path: f for f in make_plan(objects).files}
    assert staged[f"{release.source}/release.pub.pem"].data == b"release public key"
    assert not replica.edge
    assert not replica.publish


def test_key_service_names_and_files(objects: list[dict[str, Any]]) -> None:
    plan = make_plan(objects)
    service = plan.find("secret-prov-2")
    assert "secret-prov.confserve-secret-prov.svc.cluster.local" in service.aliases
    assert "secret-prov.confserve.svc.cluster.local" in service.aliases  # the ExternalName alias
    assert "secret-prov-2.secret-prov-headless.confserve-secret-prov.svc.cluster.local" in service.aliases
    assert service.readiness == c.Probe("http", 9433, "/healthz")
    assert "--sim-platform=/etc/confserve/sim-platform" in service.args
    assert service.user == "10002:10002"
    init = plan.find("secret-prov-2-init-install-keys")
    assert init.entrypoint == "install"
    assert init.readiness is None
    # The keys emptyDir (medium Memory) is one volume shared by the init container and the service.
    keys = {m.target: m.source for m in init.mounts}["/run/secret-prov"]
    assert {m.target: m.source for m in service.mounts}["/run/secret-prov"] == keys
    assert keys == "/dev/shm/sim/sim-secret-prov-2-keys"
    volume = next(v for v in plan.volumes if v.name == "sim-secret-prov-2-keys")
    assert volume == c.VolumeSpec("sim-secret-prov-2-keys", tmpfs=True, uid=10002, gid=10002)
    assert any(v.name == "sim-secret-prov-2-audit" and not v.tmpfs for v in plan.volumes)
    staged = {f.path: f for f in plan.files}
    wrap = staged["secret/confserve-secret-prov/secret-prov-keys/wrap_key"]
    assert (wrap.data, wrap.mode, wrap.gid) == (b"k" * 16, 0o440, 10002)
    ssl = staged["secret/confserve/confserve-server-tls/ssl.cfg"]
    assert (ssl.mode, ssl.gid) == (0o444, 10001)
    # The key service verifies with the platform's public part only: no private key is staged for it.
    key_service_files = [f for path, f in staged.items() if "confserve-secret-prov/" in path]
    assert any(path.endswith("root_ca.cert.pem") and "confserve-secret-prov/" in path for path in staged)
    assert all(b"PRIVATE KEY" not in f.data for f in key_service_files)


def test_load_balancer_passes_tls_through_to_every_replica(objects: list[dict[str, Any]]) -> None:
    plan = make_plan(objects)
    lb = plan.find(c.LB_NAME)
    assert lb.edge
    assert lb.publish == (8443, 8444)
    assert lb.read_only_root
    assert lb.cap_drop_all
    text = plan.lb_config
    assert "load_module /usr/lib/nginx/modules/ngx_stream_module.so;" in text
    assert "listen 0.0.0.0:8443;" in text
    assert "listen 0.0.0.0:8444;" in text
    for replica in ("confserve-model-server-0", "confserve-model-server-1"):
        assert f"server {replica}:8500 " in text
        assert f"server {replica}:8501 " in text
    assert "ssl_certificate" not in text  # passthrough: nginx holds no key
    assert "load_module" not in make_plan(objects, stream_module=None).lb_config


def test_engine_arguments(objects: list[dict[str, Any]]) -> None:
    plan = make_plan(objects)
    replica = plan.find("confserve-model-server-0")
    limits = {"nofile": 1024, "nproc": 512}
    args = c.container_args(replica, plan, staging=Path("/stage"), ulimits=limits, engine="podman")
    assert args[:3] == ["create", "--name", "confserve-model-server-0"]
    assert "--label" in args
    assert args[args.index("--label") + 1] == "io.confserve.simulation=sim"
    assert args[args.index("--network") + 1] == "sim-internal"
    assert "--read-only-tmpfs=false" in args
    assert args[args.index("--cap-drop") : args.index("--cap-drop") + 2] == ["--cap-drop", "ALL"]
    assert "no-new-privileges" in args
    assert "--ulimit" in args
    assert "nofile=1024:1024" in args
    assert "--publish" not in args
    assert "type=bind,source=/models-on-host,target=/srv/confserve/models,readonly" in args
    assert f"type=tmpfs,target=/tmp,tmpfs-mode=1777,tmpfs-size={256 << 20}" in args
    image_at = args.index("localhost/confserve-server:local")
    assert args[image_at + 1] == "serve"
    docker = c.container_args(replica, plan, staging=Path("/stage"), ulimits=limits, engine="docker")
    assert "--read-only-tmpfs=false" not in docker
    lb = c.container_args(plan.find(c.LB_NAME), plan, staging=Path("/stage"), ulimits={}, engine="podman")
    assert "127.0.0.1::8443" in lb
    assert lb[lb.index("--network") + 1] == "sim-edge"
    assert "127.0.0.1::8444" in lb
    assert "type=bind,source=/stage/lb/nginx.conf,target=/etc/confserve-lb/nginx.conf,readonly" in lb


def test_expand_env_follows_the_kubelet() -> None:
    env = {"A": "1", "B": "two"}
    assert c.expand_env("--x=$(A)", env) == "--x=1"
    assert c.expand_env("$(A)$(B)", env) == "1two"
    assert c.expand_env("$(MISSING)", env) == "$(MISSING)"
    assert c.expand_env("$$(A)", env) == "$(A)"
    assert c.expand_env("$A ${B}", env) == "$A ${B}"


def test_host_ulimits_stay_within_the_hard_limits() -> None:
    limits = c.host_ulimits()
    for name, which in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        hard = resource.getrlimit(which)[1]
        assert 0 < limits[name] <= (hard if hard != resource.RLIM_INFINITY else limits[name])


def _edited(objects: list[dict[str, Any]], kind: str, name: str, edit: Any) -> list[dict[str, Any]]:
    out = copy.deepcopy(objects)
    target = next(o for o in out if o["kind"] == kind and o["metadata"]["name"] == name)
    edit(target)
    return out


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = obj["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize(
    ("kind", "name", "edit", "message"),
    [
        ("Deployment", "confserve-model-server", lambda o: o.update(kind="DaemonSet"), "does not map"),
        (
            "Deployment",
            "confserve-model-server",
            lambda o: _pod(o).update(hostNetwork=True),
            r"pod fields \['hostNetwork'\]",
        ),
        (
            "Deployment",
            "confserve-model-server",
            lambda o: _pod(o)["containers"][0].update(lifecycle={}),
            r"fields \['lifecycle'\]",
        ),
        (
            "Deployment",
            "confserve-model-server",
            lambda o: _pod(o)["containers"][0]["securityContext"].update(privileged=True),
            "privileged",
        ),
        (
            "Deployment",
            "confserve-model-server",
            lambda o: _pod(o)["securityContext"].update(runAsUser=0),
            "runAsNonRoot",
        ),
        (
            "Deployment",
            "confserve-model-server",
            lambda o: _pod(o)["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
            "only secret, configMap",
        ),
        (
            "Deployment",
            "confserve-model-server",
            lambda o: _pod(o)["containers"][0]["readinessProbe"].update(tcpSocket={"port": "nope"}),
            "probe port",
        ),
        (
            "Service",
            "secret-prov",
            lambda o: o["spec"].update(externalName="keys.owner.example.com"),
            "not run here",
        ),
        (
            "Ingress",
            "confserve-model-server",
            lambda o: o["metadata"]["annotations"].clear(),
            "only TLS passthrough",
        ),
        (
            "Deployment",
            "confserve-model-server",
            lambda o: _pod(o)["volumes"][1]["secret"].update(secretName="absent"),
            "Secret confserve/absent is referenced",
        ),
    ],
)
def test_what_does_not_map_is_refused(
    objects: list[dict[str, Any]], kind: str, name: str, edit: Any, message: str
) -> None:
    with pytest.raises(c.ContainersError, match=message):
        make_plan(_edited(objects, kind, name, edit))


def test_a_missing_claim_is_refused(objects: list[dict[str, Any]]) -> None:
    with pytest.raises(c.ContainersError, match="no host directory for the claim 'confserve-models'"):
        make_plan(objects, claims={})


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another group (chown) needs root")
def test_write_staged_sets_mode_and_group(tmp_path: Path) -> None:
    c.write_staged(tmp_path / "s", [c.StagedFile("a/b/key", b"x", 0o440, 4242)])
    path = tmp_path / "s" / "a" / "b" / "key"
    assert path.read_bytes() == b"x"
    assert path.stat().st_mode & 0o777 == 0o440
    assert path.stat().st_gid == 4242
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700


# --------------------------------------------------------------------------------------------------
# The runner against a fake engine


class FakeEngine:
    """Answers like podman: the listed names per label, and probes that pass after `ready_after` tries."""

    def __init__(self, ready_after: int = 0, state: str = "running", port: str = "127.0.0.1:40001") -> None:
        self.calls: list[list[str]] = []
        self.ready_after = ready_after
        self.state = state
        self.port = port

    def __call__(self, argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        args = argv[1:]
        out, code = "", 0
        if args[:1] == ["exec"]:
            self.ready_after -= 1
            code = 0 if self.ready_after < 0 else 1
        elif args[:2] == ["inspect", "--format"]:
            out = "0" if "ExitCode" in args[2] else self.state
        elif args[:1] == ["logs"]:
            out = "Traceback: boom\n"
        elif args[:1] == ["port"]:
            out = self.port + "\n"
        elif "--filter" in args:
            kind = {"ps": "ctr", "volume": "vol", "network": "net"}[args[0]]
            out = f"{kind}-a\n{kind}-b\n"
        return subprocess.CompletedProcess(argv, code, out, "")


def test_down_removes_everything_labelled(tmp_path: Path) -> None:
    fake = FakeEngine()
    staging = tmp_path / "containers"
    staging.mkdir()
    removed = c.down(c.Engine("podman", fake), "sim", staging)
    assert removed == ["ctr-a", "ctr-b", "vol-a", "vol-b", "net-a", "net-b", str(staging)]
    assert not staging.exists()
    filters = [call for call in fake.calls if "--filter" in call]
    assert all("label=io.confserve.simulation=sim" in call for call in filters)
    assert ["podman", "rm", "--force", "--time", "10", "ctr-a", "ctr-b"] in fake.calls
    assert ["podman", "volume", "rm", "--force", "vol-a", "vol-b"] in fake.calls
    assert ["podman", "network", "rm", "net-a", "net-b"] in fake.calls


def _clock() -> Any:
    now = [0.0]

    def clock() -> float:
        return now[0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    return clock, sleep


def test_wait_ready_polls_until_the_probe_passes() -> None:
    clock, sleep = _clock()
    fake = FakeEngine(ready_after=3)
    spec = c.ContainerSpec("r", "img", (), readiness=c.Probe("tcp", 8500))
    assert c.wait_ready(c.Engine("podman", fake), spec, clock=clock, sleep=sleep) == 3.0
    probe = next(call for call in fake.calls if call[1] == "exec")
    assert probe[:4] == ["podman", "exec", "r", "python3"]
    assert probe[-3:] == ["tcp", "8500", "/"]


def test_wait_ready_fails_when_the_container_stopped_or_the_deadline_passed() -> None:
    clock, sleep = _clock()
    spec = c.ContainerSpec("r", "img", (), readiness=c.Probe("tcp", 8500), start_deadline_seconds=5)
    with pytest.raises(c.ContainersError, match=r"(?s)stopped \(exited\).*boom"):
        c.wait_ready(
            c.Engine("podman", FakeEngine(ready_after=99, state="exited")), spec, clock=clock, sleep=sleep
        )
    with pytest.raises(c.ContainersError, match="not ready after 5 s"):
        c.wait_ready(c.Engine("podman", FakeEngine(ready_after=99)), spec, clock=clock, sleep=sleep)


def test_published_ports_must_be_loopback(objects: list[dict[str, Any]]) -> None:
    plan = make_plan(objects)
    ports = c.published_ports(c.Engine("podman", FakeEngine()), plan)
    assert ports == {"grpc.tf-serving.service.com": 40001, "rest.tf-serving.service.com": 40001}
    with pytest.raises(c.ContainersError, match=r"not 127\.0\.0\.1"):
        c.published_ports(c.Engine("podman", FakeEngine(port="0.0.0.0:40001")), plan)


def test_engine_failure_names_the_command() -> None:
    def failing(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 125, "", "Error: no such network\n")

    with pytest.raises(
        c.ContainersError, match="podman network failed \\(exit 125\\): Error: no such network"
    ):
        c.Engine("podman", failing)("network", "rm", "x")


# --------------------------------------------------------------------------------------------------
# The orchestration (cluster/_container_cluster.py) with the engine and the slow steps faked


class ClusterEngine(FakeEngine):
    """A fake engine that also answers the client's predict and the key service's audit log."""

    def __init__(self, predicted: int = 0, code: int = 0) -> None:
        super().__init__()
        self.predicted = predicted
        self.code = code

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        args = argv[1:]
        if args[:1] == ["run"] and "predict" in args:
            self.calls.append(argv)
            out = json.dumps({"outputs": {"classes": {"value": [self.predicted]}}}) + "\n"
            err = "attested: simulated enclave mr_enclave abcd (UpToDate), accepted by rule 'simulation-0'\n"
            return subprocess.CompletedProcess(argv, self.code, out, err)
        if args[:1] == ["exec"] and "cat" in args:
            self.calls.append(argv)
            log = '{"outcome": "released"}\n{"outcome": "refused"}\nnot json\n'
            return subprocess.CompletedProcess(argv, 0, log, "")
        if args[:1] == ["run"] and "--print_measurement" in args:
            self.calls.append(argv)
            doc = {"mr_enclave": "cd" * 32, "mr_signer": "ef" * 32, "isv_prod_id": 0, "isv_svn": 0}
            return subprocess.CompletedProcess(argv, 0, json.dumps(doc) + "\n", "")
        return super().__call__(argv, **kw)


@pytest.fixture
def simulation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[cc.SimulationSettings, ClusterEngine]:
    ws = fake_workspace(tmp_path / "ws")
    ws.client.mkdir()
    for name in ("ca.crt", "client.crt", "client.key"):
        (ws.client / name).write_bytes(name.encode())
    (ws.sim / "collateral.json").write_text("{}")
    fake = ClusterEngine()
    monkeypatch.setattr(c, "find_engine", lambda preferred=None: "podman")
    monkeypatch.setattr(c, "Engine", lambda name: RealEngine(name, fake))
    monkeypatch.setattr(cc, "_prepare", lambda ws, progress: None)
    monkeypatch.setattr(c, "write_staged", _write_unowned)
    monkeypatch.setattr(cc.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cc.os, "chown", lambda *a: None)
    monkeypatch.setattr(c.os, "chown", lambda *a: None)
    monkeypatch.setattr(c, "memory_root", lambda prefix: tmp_path / "shm" / prefix)
    return cc.SimulationSettings(ws.root, TREE, name="sim"), fake


def _write_unowned(staging: Path, files: Sequence[c.StagedFile]) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    for f in files:
        (staging / f.path).parent.mkdir(parents=True, exist_ok=True)
        (staging / f.path).write_bytes(f.data)


def test_run_simulation_orders_the_steps_and_tears_down(
    simulation: tuple[cc.SimulationSettings, ClusterEngine],
) -> None:
    settings, fake = simulation
    steps: list[str] = []
    result = cc.run_simulation(settings, once=True, progress=steps.append)
    assert result.passed
    assert result.mr_enclave == "cd" * 32
    assert result.releases == 3  # one "released" line in each of the three key-service logs
    assert result.ports == {"grpc.tf-serving.service.com": 40001, "rest.tf-serving.service.com": 40001}
    verbs = [call[1] for call in fake.calls]
    # networks before containers, the measurement before any container starts, removal at the end
    assert verbs.index("network") < verbs.index("create") < verbs.index("start")
    measure = next(i for i, call in enumerate(fake.calls) if "--print_measurement" in call)
    assert measure < verbs.index("start")
    assert fake.calls[-1][:3] == ["podman", "network", "rm"]
    predict = next(call for call in fake.calls if "predict" in call)
    assert predict[predict.index("predict") + 1] == "confserve-lb:8443"
    assert "--attest" in predict
    assert not settings.staging.exists()
    policy_steps = [s for s in steps if "measuring" in s]
    assert policy_steps


def test_run_simulation_refuses_without_images(
    simulation: tuple[cc.SimulationSettings, ClusterEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, fake = simulation

    def no_images(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        if argv[1:3] == ["image", "inspect"]:
            return subprocess.CompletedProcess(argv, 1, "", "no such image")
        return fake(argv, **kw)

    monkeypatch.setattr(c, "Engine", lambda name: RealEngine(name, no_images))
    with pytest.raises(c.ContainersError, match="scripts/build-images first"):
        cc.run_simulation(settings, once=True)


def test_a_wrong_prediction_fails_and_still_tears_down(
    simulation: tuple[cc.SimulationSettings, ClusterEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, fake = simulation
    fake.predicted = 7
    code = cc.main(
        ["up", "--once", "--workspace", str(settings.workspace), "--tree", str(TREE), "--name", "sim"]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "digit 0 predicted as 7 -> FAIL" in out
    assert fake.calls[-1][:3] == ["podman", "network", "rm"]


def test_a_failed_predict_is_reported(
    simulation: tuple[cc.SimulationSettings, ClusterEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, fake = simulation
    fake.code = 1
    code = cc.main(
        ["up", "--once", "--workspace", str(settings.workspace), "--tree", str(TREE), "--name", "sim"]
    )
    assert code == 1
    assert "FAILED: the client's attested predict failed (exit 1)" in capsys.readouterr().out


def test_main_down(
    simulation: tuple[cc.SimulationSettings, ClusterEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, _ = simulation
    assert cc.main(["down", "--workspace", str(settings.workspace), "--name", "sim"]) == 0
    assert "removed 6 resources" in capsys.readouterr().out
