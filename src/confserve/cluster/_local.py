"""`confserve up`: the one-machine arrangement of confserve's components, as separate processes.

| component                 | process                          | listens on (loopback)          |
|---------------------------|----------------------------------|--------------------------------|
| secret provisioning       | confserve secret-prov serve      | provisioning port, metrics port |
| model-server replicas (N) | confserve serve (own enclave)    | gRPC and REST port each        |
| load balancer             | nginx (stream, TLS passthrough)  | gRPC and REST ports            |

Order: workspace (see `_workspace`) -> the replicas' measurement, computed in-process from the same
`ServeOptions` the replicas run with (`replica.identity`) -> the provisioning policy that approves exactly
that identity -> the provisioning service -> the replicas (each attests, gets the key, loads the
encrypted model, opens its ports) -> nginx -> readiness of every replica -> the check: an attested
inference through nginx. The state (pids, ports, files) goes to `cluster.json`, so `confserve status`,
`scale` and `down` can act on a cluster started with `--detach`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from confserve.cluster._dashboard import ReadyProbe, ReplicaCondition, replica_state
from confserve.cluster._nginx import NginxConfig, NginxError, find_nginx, find_stream_module, render_nginx
from confserve.cluster._workspace import (
    SERVICE_DOMAIN,
    TlsMode,
    Workspace,
    WorkspaceError,
    confserve_command,
    prepare_workspace,
)

if TYPE_CHECKING:
    from confserve.replica import ServeOptions

__all__ = ["METRICS_PATH", "MONITORING_CONFIG", "ClusterState", "LocalCluster", "ReplicaState", "free_port"]

_READY_TIMEOUT_SECONDS: Final = 240.0  # a replica imports TensorFlow, attests and loads (ResNet-50: ~20 s)
_PROBE_TIMEOUT_SECONDS: Final = 2.0  # a loopback answer takes milliseconds; a stopped process never answers
# The replicas serve Prometheus metrics on their REST port (TF Serving's MonitoringConfig text proto, at
# TF Serving's default path), for the live view. The file is measured by content, so it is written once,
# identically, before the replicas are measured and started.
METRICS_PATH: Final = "/monitoring/prometheus/metrics"
MONITORING_CONFIG: Final = "monitoring.cfg"
_MONITORING_TEXT: Final = f'prometheus_config {{\n  enable: true\n  path: "{METRICS_PATH}"\n}}\n'
Progress = Callable[[str], None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ReplicaState:
    index: int
    pid: int
    grpc_port: int
    rest_port: int
    log: str


@dataclass
class ClusterState:
    workspace: str
    model: str
    tls: str
    prov_pid: int
    prov_port: int
    metrics_port: int
    nginx_pid: int
    lb_grpc_port: int
    lb_rest_port: int
    identity: dict[str, Any]
    replicas: list[ReplicaState] = field(default_factory=list)
    signature: dict[str, Any] = field(default_factory=dict)  # the model's serving signature, once checked

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        try:
            data = json.loads(path.read_text())
            replicas = [ReplicaState(**r) for r in data.pop("replicas")]
            return cls(**data, replicas=replicas)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise WorkspaceError(f"no running cluster described in {path} ({type(e).__name__})") from None


def _alive(pid: int) -> bool:
    """Whether process `pid` runs. A zombie (exited, not yet reaped, e.g. when PID 1 does not reap
    orphans, as in many containers) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process reused the pid
        return True
    with contextlib.suppress(ChildProcessError):  # our own child: reap it if it exited
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _tail(log: str, lines: int = 3) -> str:
    """The last lines of a log that are confserve's own (TensorFlow's start-up chatter skipped)."""
    try:
        text = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    own = [line for line in text if "confserve" in line or "error" in line.lower()]
    return " / ".join(own[-lines:]) or "(empty log)"


_DETACH = (
    "import subprocess, sys\n"
    "log, cwd, args = sys.argv[1], sys.argv[2], sys.argv[3:]\n"
    "with open(log, 'ab') as out:\n"
    "    child = subprocess.Popen(\n"
    "        args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True\n"
    "    )\n"
    "print(child.pid)\n"
)


def _spawn(
    args: list[str], log: Path, cwd: Path, detach: bool, children: dict[int, subprocess.Popen[bytes]]
) -> int:
    """Start a component; returns its pid. Detached components are started through a short-lived
    intermediate process, so they belong to no process of ours (they outlive `confserve up --detach`, and
    no Popen object of ours is left to be collected while they run)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if detach:
        out = subprocess.run(
            [sys.executable, "-c", _DETACH, str(log), str(cwd), *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.strip())
    with log.open("ab") as out_file:
        proc = subprocess.Popen(args, cwd=cwd, stdout=out_file, stderr=subprocess.STDOUT)
    children[proc.pid] = proc
    return proc.pid


def _stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class LocalCluster:
    def __init__(self, ws: Workspace, *, progress: Progress = lambda _: None) -> None:
        self.ws = ws
        self.progress = progress
        self.state: ClusterState | None = None
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # components started in the foreground

    def _alive(self, pid: int) -> bool:
        child = self._children.get(pid)
        return child.poll() is None if child is not None else _alive(pid)

    def _stop(self, pid: int, sig: int = signal.SIGTERM) -> None:
        _stop_pid(pid, sig)
        child = self._children.pop(pid, None)
        if child is not None:
            child.wait()

    # -- the replicas' command line --------------------------------------------------------------------
    def replica_options(self, model: str, grpc_port: int, rest_port: int, prov_port: int) -> ServeOptions:
        """A replica's options. It runs in `host/`, so the model and ssl.cfg are named by their bound
        paths (relative, measured as written); the files measured by content are named absolutely."""
        from confserve.replica import ServeOptions  # noqa: PLC0415

        ws = self.ws
        return ServeOptions(
            host="127.0.0.1",
            port=grpc_port,
            rest_api_port=rest_port,
            model_name=model,
            model_base_path=f"models/{model}",
            ssl_config_file="ssl.cfg",
            secret_provision_servers=f"localhost:{prov_port}",
            secret_provision_ca_chain_path=str(ws.host / "provisioning-ca.crt"),
            sim_platform=str(ws.sim),
            signing_key=str(ws.signer),
            monitoring_config_file=str(ws.host / MONITORING_CONFIG),
        )

    def write_monitoring_config(self) -> None:
        """The replicas' MonitoringConfig (in host/, their working directory); the same bytes on every
        `up`, since its hash is part of the identity the policy approves."""
        self.ws.host.mkdir(parents=True, exist_ok=True)
        (self.ws.host / MONITORING_CONFIG).write_text(_MONITORING_TEXT)

    def replica_flags(self, model: str, grpc_port: int, rest_port: int, prov_port: int) -> list[str]:
        return self.replica_options(model, grpc_port, rest_port, prov_port).to_argv()

    def measure(self, model: str) -> dict[str, Any]:
        """The replicas' identity, computed in-process from the same options they run with (ports are
        not measured)."""
        from confserve import replica  # noqa: PLC0415

        ident, measured = replica.identity(self.replica_options(model, 1, 2, 3))
        return {
            "mr_enclave": ident.mr_enclave.hex(),
            "mr_signer": ident.mr_signer.hex(),
            "isv_prod_id": ident.isv_prod_id,
            "isv_svn": ident.isv_svn,
            "measured_args": measured,
        }

    def write_policy(self, identity: dict[str, Any]) -> None:
        """Approve exactly the replicas' identity: MRENCLAVE and the signer triple (MRSIGNER, product
        id, minimum SVN); simulated evidence, since the local cluster runs on a simulated platform."""
        from confserve.attestation import EnclaveIdentity, policy_for_identities, render_policy_toml  # noqa: PLC0415

        ident = EnclaveIdentity(
            mr_enclave=bytes.fromhex(identity["mr_enclave"]),
            mr_signer=bytes.fromhex(identity["mr_signer"]),
            isv_prod_id=int(identity["isv_prod_id"]),
            isv_svn=int(identity["isv_svn"]),
        )
        policy = policy_for_identities([ident], allow_simulated=True, names=["replica"])
        self.ws.policy.write_text(
            render_policy_toml(
                policy,
                comment="Written by confserve up from the replicas' measurement (the local cluster runs on\n"
                "a simulated SGX platform, hence allow_simulated).",
            )
        )

    # -- starting ----------------------------------------------------------------------------------------
    def up(self, *, replicas: int, model: str, tls: TlsMode, detach: bool) -> ClusterState:
        if self.ws.state_file.exists():
            with contextlib.suppress(WorkspaceError):
                old = ClusterState.load(self.ws.state_file)
                if self._alive(old.prov_pid) or self._alive(old.nginx_pid):
                    raise WorkspaceError(
                        f"a cluster is already running from {self.ws.root}: confserve down first"
                    )
        find_nginx()  # fail before any work when the load balancer cannot run
        name = prepare_workspace(self.ws, model=model, tls=tls, progress=self.progress)
        self.write_monitoring_config()
        self.progress("measuring the replicas")
        identity = self.measure(name)
        self.write_policy(identity)
        prov_port, metrics_port = free_port(), free_port()
        self.progress(f"starting the secret-provisioning service on port {prov_port}")
        prov = _spawn(
            confserve_command(
                "secret-prov",
                "serve",
                "--listen",
                f"127.0.0.1:{prov_port}",
                "--cert",
                str(self.ws.secret_prov / "server.crt"),
                "--key",
                str(self.ws.secret_prov / "server.key"),
                "--policy",
                str(self.ws.policy),
                "--secret",
                f"default={self.ws.wrap_key}",
                "--audit-log",
                str(self.ws.audit_log),
                "--sim-platform",
                str(self.ws.sim),
                "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
            ),
            self.ws.logs / "secret-prov.log",
            self.ws.root,
            detach,
            self._children,
        )
        state = ClusterState(
            workspace=str(self.ws.root),
            model=name,
            tls=tls,
            prov_pid=prov,
            prov_port=prov_port,
            metrics_port=metrics_port,
            nginx_pid=0,
            lb_grpc_port=free_port(),
            lb_rest_port=free_port(),
            identity=identity,
        )
        self.state = state
        self._save()
        try:
            self._wait_http(f"http://127.0.0.1:{metrics_port}/healthz", prov, "secret-prov.log")
            for _ in range(replicas):
                self.add_replica(detach=detach)
            self.start_nginx(detach=detach)
            self.wait_ready()
        except BaseException:
            self.down()
            raise
        return state

    def record_signature(self, signature: dict[str, Any]) -> None:
        self._require_state().signature = signature
        self._save()

    def _save(self) -> None:
        assert self.state is not None
        self.ws.state_file.write_text(self.state.to_json())

    def add_replica(self, *, detach: bool) -> ReplicaState:
        state = self._require_state()
        index = max((r.index for r in state.replicas), default=-1) + 1
        grpc_port, rest_port = free_port(), free_port()
        log = self.ws.logs / f"replica-{index}.log"
        self.progress(
            f"starting replica {index} (gRPC {grpc_port}, REST {rest_port}); it attests, then loads"
        )
        pid = _spawn(
            confserve_command(
                "serve", *self.replica_flags(state.model, grpc_port, rest_port, state.prov_port)
            ),
            log,
            self.ws.host,
            detach,
            self._children,
        )
        replica = ReplicaState(index, pid, grpc_port, rest_port, str(log))
        state.replicas.append(replica)
        self._save()
        return replica

    def nginx_config(self) -> NginxConfig:
        state = self._require_state()
        return NginxConfig(
            grpc_listen=f"127.0.0.1:{state.lb_grpc_port}",
            grpc_backends=[f"127.0.0.1:{r.grpc_port}" for r in state.replicas],
            rest_listen=f"127.0.0.1:{state.lb_rest_port}",
            rest_backends=[f"127.0.0.1:{r.rest_port}" for r in state.replicas],
            run_dir=self.ws.root / "nginx",
            stream_module=find_stream_module(),
        )

    def _write_nginx(self) -> Path:
        config = self.nginx_config()
        config.run_dir.mkdir(parents=True, exist_ok=True)
        conf = config.run_dir / "nginx.conf"
        conf.write_text(render_nginx(config))
        return conf

    def _nginx_args(self, conf: Path, *extra: str) -> list[str]:
        run = str(conf.parent.resolve())
        return [find_nginx(), "-p", run, "-c", str(conf.resolve()), "-e", f"{run}/nginx-error.log", *extra]

    def start_nginx(self, *, detach: bool) -> None:
        state = self._require_state()
        conf = self._write_nginx()
        check = subprocess.run(
            self._nginx_args(conf, "-t", "-q"), capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise NginxError(f"nginx rejected its configuration: {check.stderr.strip()[-300:]}")
        self.progress(
            f"starting nginx: gRPC on {state.lb_grpc_port}, REST on {state.lb_rest_port} (TLS passthrough)"
        )
        state.nginx_pid = _spawn(
            self._nginx_args(conf, "-g", "daemon off;"),
            self.ws.logs / "nginx.log",
            self.ws.root,
            detach,
            self._children,
        )
        self._save()

    def reload_nginx(self) -> None:
        state = self._require_state()
        conf = self._write_nginx()
        check = subprocess.run(
            self._nginx_args(conf, "-t", "-q"), capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise NginxError(f"nginx rejected its configuration: {check.stderr.strip()[-300:]}")
        os.kill(state.nginx_pid, signal.SIGHUP)  # graceful: old workers finish their connections

    # -- readiness ---------------------------------------------------------------------------------------
    def _client_context(self) -> ssl.SSLContext:
        from confserve.client import ClientTls  # noqa: PLC0415

        return ClientTls.from_bundle(self.ws.client, server_name=SERVICE_DOMAIN).ssl_context()

    def client_context(self) -> ssl.SSLContext:
        """The client bundle's TLS context for probing the replicas directly (by address: the server
        name is checked by real clients, which go through the load balancer)."""
        context = self._client_context()
        context.check_hostname = False
        return context

    def probe_ready(self, replica: ReplicaState, context: ssl.SSLContext | None = None) -> ReadyProbe:
        """The HTTP status of the replica's `GET /v1/confserve/ready`; "refused" when nothing listens on
        its port, "no answer" when something does but no HTTP answer came (hung, stopped, TLS failed)."""
        url = f"https://127.0.0.1:{replica.rest_port}/v1/confserve/ready"
        try:
            with urllib.request.urlopen(
                url, context=context or self.client_context(), timeout=_PROBE_TIMEOUT_SECONDS
            ) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except urllib.error.URLError as exc:
            return "refused" if isinstance(exc.reason, ConnectionRefusedError) else "no answer"
        except ConnectionRefusedError:
            return "refused"
        except (OSError, ValueError):
            return "no answer"

    def replica_ready(self, replica: ReplicaState) -> bool:
        return self.probe_ready(replica) == 200

    def replica_condition(
        self, replica: ReplicaState, context: ssl.SSLContext | None = None
    ) -> tuple[ReplicaCondition, str]:
        """starting / ready / not ready / dead, and the reason (see `replica_state`)."""
        alive = self._alive(replica.pid)
        probe = self.probe_ready(replica, context) if alive else "refused"
        return replica_state(alive, probe, "" if probe == 200 else _tail(replica.log, 1))

    def _wait_http(self, url: str, pid: int, log: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self._alive(pid):
                raise WorkspaceError(f"the secret-provisioning service exited; see {self.ws.logs / log}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback
                return
            time.sleep(0.1)
        raise WorkspaceError(f"the secret-provisioning service did not come up; see {self.ws.logs / log}")

    def wait_ready(
        self, replicas: list[ReplicaState] | None = None, timeout: float = _READY_TIMEOUT_SECONDS
    ) -> None:
        state = self._require_state()
        pending = list(replicas if replicas is not None else state.replicas)
        deadline = time.monotonic() + timeout
        while pending:
            for replica in list(pending):
                if not self._alive(replica.pid):
                    raise WorkspaceError(
                        f"replica {replica.index} exited before it was ready ({_tail(replica.log)}); "
                        f"see {replica.log}"
                    )
                if self.replica_ready(replica):
                    self.progress(f"replica {replica.index} is ready (attested, keyed, model loaded)")
                    pending.remove(replica)
            if pending and time.monotonic() > deadline:
                raise WorkspaceError(
                    f"replica {pending[0].index} not ready after {timeout:.0f} s; see {pending[0].log}"
                )
            if pending:
                time.sleep(0.25)

    # -- operations --------------------------------------------------------------------------------------
    def _require_state(self) -> ClusterState:
        if self.state is None:
            self.state = ClusterState.load(self.ws.state_file)
        return self.state

    def scale(self, replicas: int) -> None:
        """Add or remove replicas. Dead replicas are replaced first, so the survivors are what stays."""
        state = self._require_state()
        if replicas < 1:
            raise WorkspaceError("a cluster needs at least one replica")
        dead = [r for r in state.replicas if not self._alive(r.pid)]
        for replica in dead:
            self.progress(f"replica {replica.index} is gone; removing it")
        state.replicas = [r for r in state.replicas if r not in dead]
        self._save()
        added = [self.add_replica(detach=True) for _ in range(replicas - len(state.replicas))]
        if added:
            self.wait_ready(added)
        removed = state.replicas[replicas:]
        state.replicas = state.replicas[:replicas]
        self._save()
        self.reload_nginx()  # first take removed replicas out of the balancer...
        for replica in removed:
            self.progress(f"stopping replica {replica.index} (draining)")
            self._stop(replica.pid)  # ...then stop them; SIGTERM lets in-flight requests finish

    def status(self) -> dict[str, Any]:
        state = self._require_state()
        context = self.client_context()
        return {
            "workspace": state.workspace,
            "model": state.model,
            "tls": state.tls,
            "service_name": SERVICE_DOMAIN,
            "grpc": f"127.0.0.1:{state.lb_grpc_port}",
            "rest": f"127.0.0.1:{state.lb_rest_port}",
            "client_bundle": {
                "ca": str(self.ws.client / "ca.crt"),
                "cert": str(self.ws.client / "client.crt") if state.tls == "twoway" else None,
                "key": str(self.ws.client / "client.key") if state.tls == "twoway" else None,
            },
            "secret_provisioning": {
                "port": state.prov_port,
                "alive": self._alive(state.prov_pid),
                "pid": state.prov_pid,
                "metrics": f"http://127.0.0.1:{state.metrics_port}/metrics",
            },
            "load_balancer": {"pid": state.nginx_pid, "alive": self._alive(state.nginx_pid)},
            "identity": {k: state.identity[k] for k in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn")},
            "signature": state.signature,
            "replicas": [self._replica_status(r, context) for r in state.replicas],
        }

    def _replica_status(self, r: ReplicaState, context: ssl.SSLContext) -> dict[str, Any]:
        condition, reason = self.replica_condition(r, context)
        return {
            "index": r.index,
            "pid": r.pid,
            "grpc_port": r.grpc_port,
            "rest_port": r.rest_port,
            "alive": condition != "dead",
            "ready": condition == "ready",
            "state": condition,  # starting, ready, not ready or dead
            "reason": reason,  # why it is not ready ("" when ready)
            "metrics": f"https://127.0.0.1:{r.rest_port}{METRICS_PATH}",
            "log": r.log,
        }

    def down(self) -> None:
        try:
            state = self._require_state()
        except WorkspaceError:
            return
        if state.nginx_pid:
            self._stop(state.nginx_pid, signal.SIGQUIT)
        for replica in state.replicas:
            self._stop(replica.pid)
        self._stop(state.prov_pid)
        with contextlib.suppress(FileNotFoundError):
            self.ws.state_file.unlink()
        self.state = None
