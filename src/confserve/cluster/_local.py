"""`confserve up`: the one-machine arrangement of confserve's components, as separate processes.

| component                 | process                          | listens on (loopback)          |
|---------------------------|----------------------------------|--------------------------------|
| secret provisioning       | confserve secret-prov serve      | provisioning port, metrics port |
| model-server replicas (N) | confserve serve (own enclave)    | gRPC and REST port each        |
| load balancer             | nginx (stream, TLS passthrough)  | gRPC and REST ports            |
| supervisor (--detach)     | python, `supervise_detached`     | nothing                        |

First start: workspace (see `_workspace`) -> the replicas' measurement, computed in-process from the same
`ServeOptions` the replicas run with (`replica.identity`) -> the provisioning policy that approves exactly
that identity -> the provisioning service -> the replicas (each attests, gets the key, loads the
encrypted model, opens its ports) -> nginx -> readiness of every replica -> the check: an attested
inference through nginx.

Theory of operation. The cluster is described by its state file, `cluster.json` (`ClusterState`): every
process the workspace started (pid and start time, see `_processes`), the ports, the replicas wanted,
and supervision's track of each component (`_supervisor.Track`: restarts, backoff). Every command that
changes it (`up`, `scale`, `down`, the supervisor's restarts) does so in a transaction: it takes the
workspace lock, reads the file afresh, changes it, and replaces it atomically (a temporary file renamed
over it), so concurrent commands see each other's work and never a half-written file. Long waits (a
replica attesting and loading) happen outside the lock; a command that waits registers itself in the
state (`commands`), so `down` can stop it.

`up` on a workspace with a state converges instead of starting a second cluster: what runs is kept
(same pids, same ports: clients' endpoints do not change), what is dead is started again on its ports
(a replica attests again), and the replicas are brought to the count wanted. `down` stops everything
recorded (the supervisor first, so nothing is restarted behind it), then every process still carrying
the workspace's marker (`_processes.workspace_processes`), and reports what it could not stop.

Supervision: `supervise_once` observes every component (process table, ready checks), asks the
sans-I/O policy (`_supervisor.decide`) what to restart, and does it in a transaction. The attached
`confserve up` runs it between two views; `up --detach` starts `supervise_detached` as a process of its
own, recorded as the supervisor.
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
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from confserve.cluster._dashboard import NOT_ANSWERING, ReadyProbe, ReplicaCondition, replica_state
from confserve.cluster._nginx import NginxConfig, NginxError, find_nginx, find_stream_module, render_nginx
from confserve.cluster._processes import (
    MARKER,
    LockBusyError,
    LockHolder,
    ProcessRecord,
    RecordedProcess,
    WorkspaceLock,
    alive,
    listening,
    listening_ports,
    nginx_processes,
    read_stat,
    record_of,
    stop_processes,
    stopped,
    workspace_processes,
)
from confserve.cluster._supervisor import (
    Kind,
    Observed,
    Restart,
    SupervisorSettings,
    Track,
    decide,
    restarted,
)
from confserve.cluster._workspace import (
    SERVICE_DOMAIN,
    TlsMode,
    Workspace,
    WorkspaceError,
    _model_name,
    confserve_command,
    key_service_secrets,
    prepare_workspace,
    published_release,
)

if TYPE_CHECKING:
    from confserve.replica import ServeOptions

__all__ = [
    "KEY_SERVICE",
    "METRICS_PATH",
    "MONITORING_CONFIG",
    "NGINX",
    "ClusterState",
    "CommandRecord",
    "DownReport",
    "LocalCluster",
    "ReplicaState",
    "UpResult",
    "free_port",
    "supervise_detached",
]

_READY_TIMEOUT_SECONDS: Final = 240.0  # a replica imports TensorFlow, attests and loads (ResNet-50: ~20 s)
_PROBE_TIMEOUT_SECONDS: Final = 2.0  # a loopback answer takes milliseconds; a stopped process never answers
_SERVICE_TIMEOUT_SECONDS: Final = 60.0  # the key service and nginx listen within a second or two
# A command waits this long for another one's transaction. The longest is a first `up` setting the
# workspace up (the digits model trains in ~15 s; ResNet-50 is built in about a minute).
_LOCK_WAIT_SECONDS: Final = 300.0
_STOP_GRACE_SECONDS: Final = 30.0  # replicas finish in-flight requests; nginx its open connections
_COMMAND_GRACE_SECONDS: Final = 10.0  # a waiting command or the supervisor ends at once on SIGTERM
TICK_SECONDS: Final = 0.5  # supervision's period: a dead nginx is seen within half a second
# The replicas serve Prometheus metrics on their REST port (TF Serving's MonitoringConfig text proto, at
# TF Serving's default path), for the live view. The file is measured by content, so it is written once,
# identically, before the replicas are measured and started.
METRICS_PATH: Final = "/monitoring/prometheus/metrics"
MONITORING_CONFIG: Final = "monitoring.cfg"
_MONITORING_TEXT: Final = f'prometheus_config {{\n  enable: true\n  path: "{METRICS_PATH}"\n}}\n'
STATE_VERSION: Final = 2
KEY_SERVICE: Final = "key-service"  # component names in supervision's tracks
NGINX: Final = "nginx"
Progress = Callable[[str], None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replica_name(index: int) -> str:
    return f"replica-{index}"


# -- the state -------------------------------------------------------------------------------------------
@dataclass
class ReplicaState(RecordedProcess):
    index: int
    pid: int
    grpc_port: int
    rest_port: int
    log: str
    start_ticks: int = 0
    track: Track = field(default_factory=Track)
    # In nginx's configuration. A replica added to a running cluster joins once it is ready: tried while
    # it starts, nginx would count its refusals and take it out (with the others, in a bad moment).
    balanced: bool = True


@dataclass
class CommandRecord(RecordedProcess):
    """A confserve process acting on the cluster: a waiting `scale` or `up`, or the supervisor."""

    pid: int
    start_ticks: int
    command: str  # "up", "scale", "supervisor (detached)", "supervisor (confserve up)"


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
    prov_start_ticks: int = 0
    nginx_start_ticks: int = 0
    prov_track: Track = field(default_factory=Track)
    nginx_track: Track = field(default_factory=Track)
    replicas_wanted: int = 0  # 0: as many as recorded
    supervisor: CommandRecord | None = None
    commands: list[CommandRecord] = field(default_factory=list)
    retiring: list[ProcessRecord] = field(
        default_factory=list
    )  # stopping: removed replicas, old nginx workers
    version: int = STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        try:
            data = json.loads(path.read_text())
            return cls.from_dict(data)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise WorkspaceError(f"no running cluster described in {path} ({type(e).__name__})") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterState:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if int(data.get("version", 1)) > STATE_VERSION:
            raise ValueError("written by a newer confserve")
        track_names = {f.name for f in fields(Track)}

        def track(raw: Any) -> Track:
            return Track(**{k: v for k, v in (raw or {}).items() if k in track_names})

        data["replicas"] = [
            ReplicaState(**{**r, "track": track(r.get("track"))}) for r in data.get("replicas", [])
        ]
        data["prov_track"] = track(data.get("prov_track"))
        data["nginx_track"] = track(data.get("nginx_track"))
        data["supervisor"] = CommandRecord(**data["supervisor"]) if data.get("supervisor") else None
        data["commands"] = [CommandRecord(**c) for c in data.get("commands", [])]
        data["retiring"] = [ProcessRecord(**r) for r in data.get("retiring", [])]
        state = cls(**data)
        for number in (state.prov_pid, state.prov_port, state.metrics_port, state.nginx_pid):
            if not isinstance(number, int):
                raise TypeError("a pid or port is not a number")
        return state

    # The components by name: the key service, nginx and every replica.
    def names(self) -> list[str]:
        return [KEY_SERVICE, NGINX, *(_replica_name(r.index) for r in self.replicas)]

    def replica(self, name: str) -> ReplicaState | None:
        return next((r for r in self.replicas if _replica_name(r.index) == name), None)

    def record(self, name: str) -> ProcessRecord:
        if name == KEY_SERVICE:
            return ProcessRecord(self.prov_pid, self.prov_start_ticks)
        if name == NGINX:
            return ProcessRecord(self.nginx_pid, self.nginx_start_ticks)
        replica = self.replica(name)
        return replica.record if replica is not None else ProcessRecord(0, -1)

    def track(self, name: str) -> Track:
        if name == KEY_SERVICE:
            return self.prov_track
        if name == NGINX:
            return self.nginx_track
        replica = self.replica(name)
        return replica.track if replica is not None else Track()

    def set(self, name: str, *, record: ProcessRecord | None = None, track: Track | None = None) -> None:
        if name == KEY_SERVICE:
            if record is not None:
                self.prov_pid, self.prov_start_ticks = record.pid, record.start_ticks
            self.prov_track = track if track is not None else self.prov_track
        elif name == NGINX:
            if record is not None:
                self.nginx_pid, self.nginx_start_ticks = record.pid, record.start_ticks
            self.nginx_track = track if track is not None else self.nginx_track
        elif (replica := self.replica(name)) is not None:
            if record is not None:
                replica.pid, replica.start_ticks = record.pid, record.start_ticks
            replica.track = track if track is not None else replica.track

    @staticmethod
    def kind(name: str) -> Kind:
        return "key service" if name == KEY_SERVICE else "nginx" if name == NGINX else "replica"


@dataclass(frozen=True)
class UpResult:
    state: ClusterState
    created: bool  # a new cluster; else an existing one was converged
    actions: tuple[str, ...]  # what converging did (empty: nothing to do)


@dataclass(frozen=True)
class DownReport:
    stopped: int  # processes stopped
    survivors: tuple[str, ...]  # what could not be stopped, for people


def _tail(log: str, lines: int = 3) -> str:
    """The last lines of a log that are confserve's own (TensorFlow's start-up chatter skipped)."""
    try:
        text = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    own = [line for line in text if "confserve" in line or "error" in line.lower()]
    return " / ".join(own[-lines:]) or "(empty log)"


def _last_line(log: Path) -> str:
    try:
        with log.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 4096, 0))
            lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


_DETACH = (
    "import subprocess, sys\n"
    "log, cwd, args = sys.argv[1], sys.argv[2], sys.argv[3:]\n"
    "with open(log, 'ab') as out:\n"
    "    child = subprocess.Popen(\n"
    "        args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,\n"
    "        start_new_session=True\n"
    "    )\n"
    "print(child.pid)\n"
)
_SUPERVISOR = (
    "import sys\nfrom confserve.cluster._local import supervise_detached\nsupervise_detached(sys.argv[1])\n"
)


class LocalCluster:
    tick_seconds: Final = TICK_SECONDS

    def __init__(
        self,
        ws: Workspace,
        *,
        progress: Progress = lambda _: None,
        command: str = "status",
        settings: SupervisorSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ws = ws
        self.progress = progress
        self.settings = settings or SupervisorSettings()
        self.state: ClusterState | None = None
        self._clock = clock
        self._lock = WorkspaceLock(ws.root / "cluster.lock", command)
        self._me = record_of(os.getpid())
        self._context: ssl.SSLContext | None = None

    # -- the state, in transactions ------------------------------------------------------------------------
    def read_state(self) -> ClusterState | None:
        """The state as last saved (None: no cluster). Saves are atomic, so no lock is needed to read."""
        if not self.ws.state_file.exists():
            return None
        return ClusterState.load(self.ws.state_file)

    def _require_state(self) -> ClusterState:
        if self.state is None:
            self.state = self.read_state()
        if self.state is None:
            raise WorkspaceError(f"no cluster is running from {self.ws.root}")
        return self.state

    @contextlib.contextmanager
    def _transaction(
        self, *, wait_seconds: float | None = None, preempt: Callable[[LockHolder], None] | None = None
    ) -> Iterator[ClusterState | None]:
        """Hold the workspace lock (waiting up to `wait_seconds`, default `_LOCK_WAIT_SECONDS`); the state
        is read afresh on entry (`self.state`)."""
        outer = not self._lock.held
        wait = _LOCK_WAIT_SECONDS if wait_seconds is None else wait_seconds
        self._lock.acquire(wait_seconds=wait, on_wait=self.progress, preempt=preempt)
        try:
            if outer:
                self.state = self.read_state()
            yield self.state
        finally:
            self._lock.release()

    def _save(self) -> None:
        if not self._lock.held:
            raise RuntimeError("the cluster state is written only under the workspace lock")
        assert self.state is not None
        self.state.retiring = [r for r in self.state.retiring if alive(r)]
        self.state.commands = [c for c in self.state.commands if alive(c.record)]
        temporary = self.ws.state_file.with_name(f".{self.ws.state_file.name}.{os.getpid()}")
        with temporary.open("w") as f:
            f.write(self.state.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.ws.state_file)

    def _register(self, command: str) -> None:
        state = self._require_state()
        state.commands = [c for c in state.commands if c.pid != self._me.pid]
        state.commands.append(CommandRecord(self._me.pid, self._me.start_ticks, command))
        self._save()

    def _unregister(self) -> None:
        with contextlib.suppress(LockBusyError, WorkspaceError), self._transaction() as state:
            if state is not None:
                state.commands = [c for c in state.commands if c.pid != self._me.pid]
                self._save()

    # -- starting processes ------------------------------------------------------------------------------
    def _spawn(self, args: list[str], log: Path, cwd: Path) -> ProcessRecord:
        """Start a component through a short-lived intermediate process, so it belongs to no process of
        ours (it outlives the command that started it, and none of our Popen objects is left to be
        collected while it runs); it carries the workspace's marker. Returns its record."""
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, MARKER: str(self.ws.root)}
        out = subprocess.run(
            [sys.executable, "-c", _DETACH, str(log), str(cwd), *args],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        return record_of(int(out.stdout.strip()))

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
            release_public_key=str(ws.release_public_key),
        )

    def write_monitoring_config(self) -> None:
        """The replicas' MonitoringConfig (in host/, their working directory); the same bytes on every
        `up`, since its hash is part of the identity the policy approves."""
        self.ws.host.mkdir(parents=True, exist_ok=True)
        path = self.ws.host / MONITORING_CONFIG
        if not path.exists() or path.read_text() != _MONITORING_TEXT:
            path.write_text(_MONITORING_TEXT)

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

    def write_policy(self, identity: dict[str, Any], model: str | None = None) -> None:
        """Approve exactly the replicas' identity: MRENCLAVE and the signer triple (MRSIGNER, product
        id, minimum SVN); simulated evidence, since the local cluster runs on a simulated platform. With
        `model`: grant its key too, and make its published release its floor (docs/releases.md)."""
        from confserve.attestation import EnclaveIdentity, policy_for_identities, render_policy_toml  # noqa: PLC0415

        ident = EnclaveIdentity(
            mr_enclave=bytes.fromhex(identity["mr_enclave"]),
            mr_signer=bytes.fromhex(identity["mr_signer"]),
            isv_prod_id=int(identity["isv_prod_id"]),
            isv_svn=int(identity["isv_svn"]),
        )
        secrets, floors = ["default"], {}
        if model is not None:
            release = published_release(self.ws, model)
            secrets += [release.key_id] if release.key_id not in secrets else []
            floors[model] = release.release
        policy = policy_for_identities([ident], allow_simulated=True, names=["replica"], secrets=secrets)
        if model is not None:
            # The lease option is not measured: the policy bounds it to what the replicas run with.
            lease = int(self.replica_options(model, 1, 2, 3).secret_provision_lease_seconds)
            policy = replace(policy, floors=floors, max_lease_seconds=lease)
        self.ws.policy.write_text(
            render_policy_toml(
                policy,
                comment="Written by confserve up from the replicas' measurement (the local cluster runs on\n"
                "a simulated SGX platform, hence allow_simulated). [floors]: each model's lowest release;\n"
                "raise it and send SIGHUP to the key service to withdraw older releases.",
            )
        )

    def _start_key_service(self, state: ClusterState) -> None:
        self.progress(f"starting the secret-provisioning service on port {state.prov_port}")
        record = self._spawn(
            confserve_command(
                "secret-prov",
                "serve",
                "--listen",
                f"127.0.0.1:{state.prov_port}",
                "--cert",
                str(self.ws.secret_prov / "server.crt"),
                "--key",
                str(self.ws.secret_prov / "server.key"),
                "--policy",
                str(self.ws.policy),
                *key_service_secrets(self.ws),
                "--audit-log",
                str(self.ws.audit_log),
                "--sim-platform",
                str(self.ws.sim_public),
                "--metrics-listen",
                f"127.0.0.1:{state.metrics_port}",
            ),
            self.ws.logs / "secret-prov.log",
            self.ws.root,
        )
        state.set(KEY_SERVICE, record=record)

    def _start_replica(self, state: ClusterState, replica: ReplicaState) -> None:
        self.progress(
            f"starting replica {replica.index} (gRPC {replica.grpc_port}, REST {replica.rest_port}); "
            "it attests, then loads"
        )
        record = self._spawn(
            confserve_command(
                "serve",
                *self.replica_flags(state.model, replica.grpc_port, replica.rest_port, state.prov_port),
            ),
            Path(replica.log),
            self.ws.host,
        )
        replica.pid, replica.start_ticks = record.pid, record.start_ticks

    def _new_replica(self, state: ClusterState, *, balanced: bool = False) -> ReplicaState:
        index = max((r.index for r in state.replicas), default=-1) + 1
        log = self.ws.logs / f"replica-{index}.log"
        track = Track(started_at=self._clock())
        replica = ReplicaState(index, 0, free_port(), free_port(), str(log), -1, track, balanced)
        state.replicas.append(replica)
        self._start_replica(state, replica)
        return replica

    # -- nginx ---------------------------------------------------------------------------------------------
    @property
    def nginx_dir(self) -> Path:
        return self.ws.root / "nginx"

    def nginx_config(self) -> NginxConfig:
        state = self._require_state()
        backends = [r for r in state.replicas if r.balanced] or state.replicas
        return NginxConfig(
            grpc_listen=f"127.0.0.1:{state.lb_grpc_port}",
            grpc_backends=[f"127.0.0.1:{r.grpc_port}" for r in backends],
            rest_listen=f"127.0.0.1:{state.lb_rest_port}",
            rest_backends=[f"127.0.0.1:{r.rest_port}" for r in backends],
            run_dir=self.nginx_dir,
            stream_module=find_stream_module(),
        )

    def _nginx_args(self, conf: Path, *extra: str) -> list[str]:
        run = str(conf.parent.resolve())
        return [find_nginx(), "-p", run, "-c", str(conf.resolve()), "-e", f"{run}/nginx-error.log", *extra]

    def _write_nginx(self) -> Path:
        """Render the configuration and check it with `nginx -t` before it replaces the running one."""
        config = self.nginx_config()
        config.run_dir.mkdir(parents=True, exist_ok=True)
        conf, candidate = config.run_dir / "nginx.conf", config.run_dir / "nginx.conf.new"
        candidate.write_text(render_nginx(config))
        check = subprocess.run(
            self._nginx_args(candidate, "-t", "-q"), capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise NginxError(f"nginx rejected its configuration: {check.stderr.strip()[-300:]}")
        os.replace(candidate, conf)
        return conf

    def _start_nginx(self, state: ClusterState) -> None:
        conf = self._write_nginx()
        # Workers of a master that was killed keep its listening sockets: told to quit gracefully, they
        # close them at once and finish their connections (recorded, so `down` stops them if they linger).
        leftovers = nginx_processes(self.nginx_dir.resolve())
        for process in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(process.pid, signal.SIGQUIT)
        state.retiring.extend(leftovers)
        self.progress(
            f"starting nginx: gRPC on {state.lb_grpc_port}, REST on {state.lb_rest_port} (TLS passthrough)"
        )
        state.set(NGINX, record=self._spawn(
            self._nginx_args(conf, "-g", "daemon off;"), self.ws.logs / "nginx.log", self.nginx_dir.resolve()
        ))  # fmt: skip

    def _reload_nginx(self, state: ClusterState) -> None:
        if not alive(state.record(NGINX)):
            self._start_nginx(state)
            return
        self._write_nginx()
        os.kill(state.nginx_pid, signal.SIGHUP)  # graceful: old workers finish their connections

    def reload_nginx(self) -> None:
        with self._transaction() as state:
            if state is None:
                raise WorkspaceError(f"no cluster is running from {self.ws.root}")
            self._reload_nginx(state)
            self._save()

    # -- observing -----------------------------------------------------------------------------------------
    def _client_context(self) -> ssl.SSLContext:
        from confserve.client import ClientTls  # noqa: PLC0415

        return ClientTls.from_bundle(self.ws.client, server_name=SERVICE_DOMAIN).ssl_context()

    def client_context(self) -> ssl.SSLContext:
        """The client bundle's TLS context for probing the replicas directly (by address: the server
        name is checked by real clients, which go through the load balancer)."""
        if self._context is None:
            context = self._client_context()
            context.check_hostname = False
            self._context = context
        return self._context

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
        if stopped(replica.record):
            return "not ready", f"{NOT_ANSWERING}: its process is stopped (SIGSTOP)"
        is_alive = alive(replica.record)
        probe = self.probe_ready(replica, context) if is_alive else "refused"
        return replica_state(is_alive, probe, "" if probe == 200 else _tail(replica.log, 1))

    def _key_service_condition(self, state: ClusterState) -> tuple[ReplicaCondition, str]:  # noqa: PLR0911
        """From the process table and `GET /healthz` on the metrics port."""
        record = state.record(KEY_SERVICE)
        log = self.ws.logs / "secret-prov.log"
        if not alive(record):
            line = _last_line(log)
            return "dead", f"exited; its log ends: {line}" if line else "exited"
        if stopped(record):
            return "not ready", f"{NOT_ANSWERING}: its process is stopped (SIGSTOP)"
        url = f"http://127.0.0.1:{state.metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT_SECONDS):
                return "ready", ""
        except urllib.error.HTTPError as exc:
            return "not ready", f"health check answered {exc.code}"
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                return "starting", _last_line(log)
            return "not ready", NOT_ANSWERING
        except (OSError, ValueError):
            return "not ready", NOT_ANSWERING

    def _nginx_condition(self, state: ClusterState) -> tuple[ReplicaCondition, str]:
        """From the process table and the listening sockets (its gRPC and REST ports). Not by connecting:
        nginx would pass the connection on to a replica, and count it."""
        record = state.record(NGINX)
        log = self.nginx_dir / "nginx-error.log"
        if not alive(record):
            line = _last_line(log)
            return "dead", f"exited; its error log ends: {line}" if line else "exited"
        note = "its master process is stopped (SIGSTOP); its worker serves" if stopped(record) else ""
        if listening((state.lb_grpc_port, state.lb_rest_port)):
            return "ready", note
        return "starting", note or _last_line(log)

    def observe(self, state: ClusterState, context: ssl.SSLContext | None = None) -> dict[str, Observed]:
        """Every component's condition, for supervision and for `status`."""
        observed: dict[str, Observed] = {}
        for name, (condition, reason) in (
            (KEY_SERVICE, self._key_service_condition(state)),
            (NGINX, self._nginx_condition(state)),
        ):
            observed[name] = Observed(
                name, ClusterState.kind(name), condition, reason, reason.startswith(NOT_ANSWERING)
            )
        context = context or self.client_context()
        for replica in state.replicas:
            name = _replica_name(replica.index)
            condition, reason = self.replica_condition(replica, context)
            observed[name] = Observed(name, "replica", condition, reason, reason.startswith(NOT_ANSWERING))
        return observed

    def running_processes(self) -> list[ProcessRecord]:
        """Every process of this workspace that runs, recorded or not (see `_processes`)."""
        return workspace_processes(self.ws.root, self.nginx_dir.resolve())

    def supervisor_alive(self, state: ClusterState) -> bool:
        return state.supervisor is not None and alive(state.supervisor.record)

    # -- waiting -------------------------------------------------------------------------------------------
    def _wait_component(self, name: str, timeout: float = _SERVICE_TIMEOUT_SECONDS) -> None:
        """Until the key service answers its health check, or nginx accepts connections."""
        deadline = time.monotonic() + timeout
        what = "the secret-provisioning service" if name == KEY_SERVICE else "nginx"
        log = self.ws.logs / "secret-prov.log" if name == KEY_SERVICE else self.nginx_dir / "nginx-error.log"
        while True:
            state = self.read_state()
            if state is None:
                raise WorkspaceError("the cluster was stopped (confserve down)")
            probe = self._key_service_condition if name == KEY_SERVICE else self._nginx_condition
            condition, reason = probe(state)
            if condition == "ready":
                return
            if condition == "dead" and not self.supervisor_alive(state):
                raise WorkspaceError(f"{what} exited ({reason}); see {log}")
            if time.monotonic() > deadline:
                raise WorkspaceError(f"{what} is not ready after {timeout:.0f} s ({reason}); see {log}")
            time.sleep(0.1)

    def wait_ready(self, indexes: list[int] | None = None, timeout: float = _READY_TIMEOUT_SECONDS) -> None:
        """Until every replica named (all by default) answers its ready check. Without a supervisor, a
        replica that exits fails the wait at once; with one, it is restarted and the wait goes on. A
        replica removed meanwhile (scale) is not waited for."""
        state = self._require_state()
        pending = set(indexes if indexes is not None else (r.index for r in state.replicas))
        deadline = time.monotonic() + timeout
        told: set[int] = set()
        while pending:
            fresh = self.read_state()
            if fresh is None:
                raise WorkspaceError("the cluster was stopped (confserve down)")
            by_index = {r.index: r for r in fresh.replicas}
            supervised = self.supervisor_alive(fresh)
            for index in sorted(pending):
                replica = by_index.get(index)
                if replica is None:
                    pending.discard(index)
                    continue
                condition, reason = self.replica_condition(replica)
                if condition == "ready":
                    self.progress(f"replica {index} is ready (attested, keyed, model loaded)")
                    pending.discard(index)
                elif condition == "dead" and not supervised:
                    raise WorkspaceError(
                        f"replica {index} exited before it was ready ({_tail(replica.log)}); "
                        f"see {replica.log}"
                    )
                elif condition == "dead" and index not in told:
                    self.progress(f"replica {index} exited ({reason}); the supervisor starts it again")
                    told.add(index)
            if pending and time.monotonic() > deadline:
                first = by_index[min(pending)]
                raise WorkspaceError(
                    f"replica {first.index} not ready after {timeout:.0f} s ({_tail(first.log, 1)}); "
                    f"see {first.log}"
                )
            if pending:
                time.sleep(0.25)

    # -- up ------------------------------------------------------------------------------------------------
    def up(
        self,
        *,
        replicas: int | None = None,
        model: str | None = None,
        tls: TlsMode | None = None,
        detach: bool,
    ) -> UpResult:
        """Start a cluster, or converge the one that runs from this workspace (see the module's notes).
        `replicas`, `model`, `tls`: None keeps what the workspace has (else 2, digits, two-way)."""
        self.ws.root.mkdir(parents=True, exist_ok=True)
        with self._transaction() as state:
            created = state is None
            if created:
                self._create(replicas or 2, model, tls)
                actions: tuple[str, ...] = ()
            else:
                assert state is not None
                self._same_settings(state, model, tls)
                self._register("up")
                actions = tuple(self._converge(replicas))
                self._save()
        try:
            self._wait_component(KEY_SERVICE)
            self.wait_ready()
            self._balance()
            self._wait_component(NGINX)
            if detach and self._ensure_supervisor() and not created:
                actions += ("supervisor started again",)
        except BaseException:
            if created:
                self.down()
            raise
        finally:
            self._unregister()
        return UpResult(self._require_state(), created, actions)

    def _same_settings(self, state: ClusterState, model: str | None, tls: TlsMode | None) -> None:
        if model is not None and _model_name(model) != state.model:
            raise WorkspaceError(
                f"a cluster serving {state.model!r} runs from {self.ws.root}: confserve down first, "
                "or use another --workspace"
            )
        if tls is not None and tls != state.tls:
            raise WorkspaceError(
                f"the cluster running from {self.ws.root} uses {state.tls} TLS: confserve down first, "
                "or use another --workspace"
            )

    def _create(self, replicas: int, model: str | None, tls: TlsMode | None) -> None:
        find_nginx()  # fail before any work when the load balancer cannot run
        settings = self.ws.settings()
        name = prepare_workspace(
            self.ws,
            model=model or settings.get("model", "digits"),
            tls=tls or ("oneway" if settings.get("tls") == "oneway" else "twoway"),
            progress=self.progress,
        )
        self.write_monitoring_config()
        self.progress("measuring the replicas")
        identity = self.measure(name)
        self.write_policy(identity, name)
        now = self._clock()
        self.state = ClusterState(
            workspace=str(self.ws.root),
            model=name,
            tls=tls or self.ws.settings().get("tls", "twoway"),
            prov_pid=0,
            prov_port=free_port(),
            metrics_port=free_port(),
            nginx_pid=0,
            lb_grpc_port=free_port(),
            lb_rest_port=free_port(),
            identity=identity,
            replicas_wanted=replicas,
            prov_track=Track(started_at=now),
            nginx_track=Track(started_at=now),
            commands=[CommandRecord(self._me.pid, self._me.start_ticks, "up")],
        )
        try:
            self._start_key_service(self.state)
            self._save()
            self._wait_component(KEY_SERVICE)
            for _ in range(replicas):
                self._new_replica(self.state, balanced=True)  # nginx starts after them, before any client
                self._save()
            self._start_nginx(self.state)
            self._save()
        except BaseException:
            self.down()
            raise

    def _converge(self, replicas: int | None) -> list[str]:
        """Under the lock: start again what is dead (on its ports), then fit the replicas to the count
        wanted. Returns what was done, for people."""
        state = self._require_state()
        actions: list[str] = []
        now = self._clock()
        self.write_monitoring_config()
        identity = self.measure(state.model)
        if identity["mr_enclave"] != state.identity.get("mr_enclave"):
            self.progress(
                "warning: the installed confserve measures differently from the one this cluster approved; "
                "replicas started now will be refused their key (confserve down, then up, approves it)"
            )
        if not alive(state.record(KEY_SERVICE)):
            reason = f"restarted by confserve up ({self._key_service_condition(state)[1]})"
            self._start_key_service(state)
            state.set(KEY_SERVICE, track=restarted(state.prov_track, now, reason))
            actions.append(f"key service {reason}")
        for replica in state.replicas:
            if not alive(replica.record):
                reason = f"restarted by confserve up ({self.replica_condition(replica)[1]})"
                self._start_replica(state, replica)
                replica.track = restarted(replica.track, now, reason)
                actions.append(f"replica {replica.index} {reason}")
        if replicas is not None:
            state.replicas_wanted = replicas
        removed = self._fit_replicas(state, actions)
        if not alive(state.record(NGINX)):
            reason = f"restarted by confserve up ({self._nginx_condition(state)[1]})"
            self._start_nginx(state)
            state.set(NGINX, track=restarted(state.nginx_track, now, reason))
            actions.append(f"nginx {reason}")
        elif removed:
            self._reload_nginx(state)
        return actions

    def _fit_replicas(self, state: ClusterState, actions: list[str]) -> bool:
        """Add replicas (they join nginx once ready: `_balance`), or retire the extra ones (not ready
        first, then the newest) to the count wanted: those leave the state at once (nginx is reloaded by
        the caller) and are stopped by `_stop_retiring`. Returns whether any was retired."""
        wanted = state.replicas_wanted or len(state.replicas)
        changed = False
        while len(state.replicas) < wanted:
            replica = self._new_replica(state)
            actions.append(f"replica {replica.index} added")
        if len(state.replicas) > wanted:
            context = self.client_context()
            ranked = sorted(
                state.replicas, key=lambda r: (self.replica_condition(r, context)[0] == "ready", -r.index)
            )
            for replica in ranked[: len(state.replicas) - wanted]:
                state.replicas.remove(replica)
                state.retiring.append(replica.record)
                actions.append(f"replica {replica.index} removed")
            changed = True
        return changed

    def _stop_retiring(self) -> None:
        """Stop what was retired (SIGTERM: a replica finishes its requests), outside the lock."""
        state = self.read_state()
        if state is None or not state.retiring:
            return
        self.progress(f"stopping {len(state.retiring)} retired process(es) (draining)")
        stop_processes([(r, signal.SIGTERM) for r in state.retiring], grace_seconds=_STOP_GRACE_SECONDS)
        with self._transaction() as fresh:
            if fresh is not None:
                self._save()  # drops what no longer runs

    def _ensure_supervisor(self) -> bool:
        """Start the detached supervisor unless one runs; returns whether it was started."""
        with self._transaction() as state:
            if state is None or self.supervisor_alive(state):
                return False
            self.progress("starting the supervisor (it restarts what fails; confserve down stops it)")
            record = self._spawn(
                [sys.executable, "-c", _SUPERVISOR, str(self.ws.root)],
                self.ws.logs / "supervisor.log",
                self.ws.root,
            )
            state.supervisor = CommandRecord(record.pid, record.start_ticks, "supervisor (detached)")
            self._save()
            return True

    def attach(self) -> bool:
        """The attached `confserve up` registers itself (so `down` from elsewhere stops it too) and
        supervises the cluster, unless a supervisor runs already (then it only shows the view). Returns
        whether it supervises."""
        with self._transaction() as state:
            if state is None:
                raise WorkspaceError(f"no cluster is running from {self.ws.root}")
            self._register("up (attached)")
            if self.supervisor_alive(state):
                return False
            state.supervisor = CommandRecord(self._me.pid, self._me.start_ticks, "supervisor (confserve up)")
            self._save()
            return True

    def record_signature(self, signature: dict[str, Any]) -> None:
        with self._transaction() as state:
            if state is not None:
                state.signature = signature
                self._save()

    # -- scale ---------------------------------------------------------------------------------------------
    def scale(self, replicas: int) -> None:
        """Bring the replicas to `replicas`: dead ones are started again on their ports, new ones added,
        extra ones taken out of nginx and then stopped (draining); waits for the ones started."""
        if replicas < 1:
            raise WorkspaceError("a cluster needs at least one replica")
        with self._transaction() as state:
            if state is None:
                raise WorkspaceError(f"no cluster is running from {self.ws.root}")
            self._register("scale")
            started = []
            now = self._clock()
            for replica in state.replicas:
                if not alive(replica.record):
                    self.progress(f"replica {replica.index} is gone; starting it again")
                    self._start_replica(state, replica)
                    replica.track = restarted(replica.track, now, "restarted by confserve scale (exited)")
                    started.append(replica.index)
            before = {r.index for r in state.replicas}
            state.replicas_wanted = replicas
            if self._fit_replicas(state, []):
                self._reload_nginx(state)
            started += [r.index for r in state.replicas if r.index not in before]
            self._save()
        try:
            self._stop_retiring()
            if started:
                self.wait_ready(started)
                self._balance()
        finally:
            self._unregister()

    def _balance(self, state: ClusterState | None = None) -> bool:
        """Add the replicas that are ready but not yet in nginx's configuration to it; returns whether
        any was. With `state`, within the caller's transaction."""
        if state is None:
            with self._transaction() as fresh:
                return fresh is not None and self._balance(fresh)
        joining = [r for r in state.replicas if not r.balanced and self.replica_condition(r)[0] == "ready"]
        for replica in joining:
            replica.balanced = True
            self.progress(f"replica {replica.index} joins nginx")
        if joining:
            self._reload_nginx(state)
            self._save()
        return bool(joining)

    # -- supervision ---------------------------------------------------------------------------------------
    def supervise_once(self) -> list[Restart] | None:
        """One tick: observe, decide (`_supervisor.decide`), restart. Returns the restarts made, or None
        when there is no cluster any more or another process is its supervisor."""
        state = self.read_state()
        if state is None or state.supervisor is None or state.supervisor.pid != self._me.pid:
            return None
        observed = self.observe(state)
        now = self._clock()
        tracks = {name: state.track(name) for name in state.names()}
        decision = decide(observed, tracks, now, self.settings)
        # A replica ready but not in nginx, that no command waits to add (that command was stopped, say).
        if not any(alive(c.record) for c in state.commands) and any(
            not r.balanced and observed[_replica_name(r.index)].condition == "ready" for r in state.replicas
        ):
            with contextlib.suppress(LockBusyError), self._transaction(wait_seconds=0) as fresh:
                if fresh is not None and not any(alive(c.record) for c in fresh.commands):
                    self._balance(fresh)
        if decision.tracks == tracks and not decision.restarts:
            return []
        try:
            with self._transaction(wait_seconds=0) as fresh:
                if fresh is None:
                    return None
                done = []
                for name in fresh.names():
                    # Only what did not change meanwhile (another command may have restarted it).
                    if name in decision.tracks and fresh.record(name) == state.record(name):
                        fresh.set(name, track=decision.tracks[name])
                for restart in decision.restarts:
                    if fresh.record(restart.name) == state.record(restart.name):
                        self._restart(fresh, restart)
                        done.append(restart)
                self._save()
                return done
        except LockBusyError:
            return []  # a command is changing the cluster: look again next tick

    def _restart(self, state: ClusterState, restart: Restart) -> None:
        what = restart.name.replace("-", " ")
        self.progress(f"restarting {what}: {restart.reason}")
        record = state.record(restart.name)
        if restart.kill_first:
            stop_processes([(record, signal.SIGKILL)], grace_seconds=0)
        try:
            if restart.name == KEY_SERVICE:
                self._start_key_service(state)
            elif restart.name == NGINX:
                self._start_nginx(state)
            elif (replica := state.replica(restart.name)) is not None:
                self._start_replica(state, replica)
        except (OSError, subprocess.SubprocessError, NginxError, WorkspaceError) as exc:
            # Seen dead at the next tick, so restarted after a backoff; the reason says why.
            state.set(restart.name, record=ProcessRecord(0, -1))
            track = state.track(restart.name)
            state.set(
                restart.name, track=replace(track, last_reason=f"{track.last_reason}; could not start: {exc}")
            )
            self.progress(f"could not start {what}: {exc}")

    def supervise(self, stop: threading.Event, tick_seconds: float = TICK_SECONDS) -> None:
        """Supervise until `stop` is set, the cluster is gone or another process supervises it."""
        while not stop.is_set():
            if self.supervise_once() is None:
                return
            stop.wait(tick_seconds)

    # -- status --------------------------------------------------------------------------------------------
    def _supervision(self, track: Track, now: float) -> dict[str, Any]:
        return {
            "restarts": track.restarts,
            "last_restart": _iso(track.last_restart_at),
            "last_restart_reason": track.last_reason,
            "restart_in_seconds": max(track.next_start_at - now, 0.0)
            if track.next_start_at is not None
            else None,
            "restart_reason": track.waiting_reason,
        }

    def status(self) -> dict[str, Any]:
        state = self.read_state()
        if state is None:
            raise WorkspaceError(f"no cluster is running from {self.ws.root}")
        self.state = state
        observed = self.observe(state)
        now = self._clock()

        def health(name: str) -> dict[str, Any]:
            obs = observed[name]
            return {
                "state": obs.condition,  # starting, ready, not ready or dead
                "reason": obs.reason,
                **self._supervision(state.track(name), now),
            }

        key, lb = health(KEY_SERVICE), health(NGINX)
        supervisor = state.supervisor
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
                "alive": key["state"] != "dead",
                "pid": state.prov_pid,
                "metrics": f"http://127.0.0.1:{state.metrics_port}/metrics",
                "health": f"http://127.0.0.1:{state.metrics_port}/healthz",
                **key,
            },
            "load_balancer": {"pid": state.nginx_pid, "alive": lb["state"] != "dead", **lb},
            "supervisor": None
            if supervisor is None
            else {"pid": supervisor.pid, "mode": supervisor.command, "alive": alive(supervisor.record)},
            "replicas_wanted": state.replicas_wanted or len(state.replicas),
            "identity": {k: state.identity[k] for k in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn")},
            "signature": state.signature,
            "replicas": [
                self._replica_status(r, observed[_replica_name(r.index)], now) for r in state.replicas
            ],
        }

    def _replica_status(self, r: ReplicaState, obs: Observed, now: float) -> dict[str, Any]:
        return {
            "index": r.index,
            "pid": r.pid,
            "grpc_port": r.grpc_port,
            "rest_port": r.rest_port,
            "alive": obs.condition != "dead",
            "ready": obs.condition == "ready",
            "state": obs.condition,  # starting, ready, not ready or dead
            "reason": obs.reason,  # why it is not ready ("" when ready)
            "metrics": f"https://127.0.0.1:{r.rest_port}{METRICS_PATH}",
            "in_load_balancer": r.balanced,  # a replica added to a running cluster joins once ready
            "log": r.log,
            **self._supervision(r.track, now),
        }

    # -- down ----------------------------------------------------------------------------------------------
    def _preempt(self, holder: LockHolder) -> None:
        """`down` found a command holding the lock: stop it (its transaction is abandoned; what it
        started is recorded or carries the marker, so it is stopped below)."""
        if holder.pid != self._me.pid and alive(holder.record):
            self.progress(f"stopping {holder.describe(self._clock())}")
            stop_processes([(holder.record, signal.SIGTERM)], grace_seconds=_COMMAND_GRACE_SECONDS)

    def down(self) -> DownReport:
        """Stop every process of the workspace: the supervisor and waiting commands first, then the
        components (SIGTERM; nginx SIGQUIT: they finish what is in flight), then anything else that
        carries the workspace's marker. Waits for each; what survives is reported (and the state kept)."""
        if not self.ws.root.exists():  # removed under its processes: they still carry its marker
            strays = workspace_processes(self.ws.root, self.nginx_dir)
            left = stop_processes([(r, signal.SIGTERM) for r in strays], grace_seconds=_COMMAND_GRACE_SECONDS)
            return DownReport(
                len(strays) - len(left), tuple(f"pid {r.pid} ({_describe(r.pid)})" for r in left)
            )
        with self._transaction(preempt=self._preempt) as state:
            labels: dict[ProcessRecord, str] = {}

            def stop(
                targets: Sequence[tuple[ProcessRecord, int, str]],
                grace: float,
                quick: Collection[ProcessRecord] = (),
            ) -> None:
                unique: dict[ProcessRecord, tuple[ProcessRecord, int, str]] = {}
                for target in targets:
                    unique.setdefault(target[0], target)
                running = [t for t in unique.values() if t[0].pid != self._me.pid and alive(t[0])]
                if running:
                    self.progress(f"stopping {', '.join(label for _, _, label in running)}")
                for record, _, label in running:
                    labels.setdefault(record, label)
                stop_processes([(r, sig) for r, sig, _ in running], grace_seconds=grace, quick=quick)

            if state is not None:
                commands = ([state.supervisor] if state.supervisor else []) + state.commands
                stop([(c.record, signal.SIGTERM, c.command) for c in commands], _COMMAND_GRACE_SECONDS)
                components: list[tuple[ProcessRecord, int, str]] = [
                    (state.record(NGINX), signal.SIGQUIT, "nginx")
                ]
                components += [(r.record, signal.SIGTERM, f"replica {r.index}") for r in state.replicas]
                components += [(r, signal.SIGTERM, "retired process") for r in state.retiring]
                components += [(state.record(KEY_SERVICE), signal.SIGTERM, "key service")]
                # A replica still starting (its ports not open) serves nothing and holds nothing to finish,
                # but goes on importing and attesting before it looks at SIGTERM: it gets a short grace.
                listening = listening_ports()
                starting = {r.record for r in state.replicas if not {r.grpc_port, r.rest_port} & listening}
                stop(components, _STOP_GRACE_SECONDS, starting)
            nginx_dir = self.nginx_dir.resolve()
            strays = workspace_processes(self.ws.root, nginx_dir)
            stop([(r, signal.SIGTERM, _describe(r.pid)) for r in strays], _COMMAND_GRACE_SECONDS)
            remaining = set(workspace_processes(self.ws.root, nginx_dir))
            remaining |= {r for r in labels if alive(r)}
            survivors = tuple(sorted(f"pid {r.pid} ({labels.get(r) or _describe(r.pid)})" for r in remaining))
            if not survivors:
                with contextlib.suppress(FileNotFoundError):
                    self.ws.state_file.unlink()
                self.state = None
            elif state is not None:
                self._save()
        return DownReport(len(labels) - len(remaining & labels.keys()), survivors)


def _describe(pid: int) -> str:
    stat = read_stat(pid)
    return stat.comm if stat is not None else "gone"


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def supervise_detached(root: str) -> None:
    """The detached supervisor's process (`up --detach` starts it, `down` stops it with SIGTERM)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def log(message: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)

    cluster = LocalCluster(Workspace(Path(root)), progress=log, command="supervisor")
    # `up` records this process as the supervisor right after starting it: wait for that.
    deadline = time.monotonic() + _COMMAND_GRACE_SECONDS
    while not stop.is_set() and time.monotonic() < deadline:
        state = cluster.read_state()
        if state is None or (state.supervisor is not None and state.supervisor.pid == os.getpid()):
            break
        stop.wait(0.05)
    log(f"supervising the cluster of {root} every {TICK_SECONDS} s")
    cluster.supervise(stop)
    log("stopped" if stop.is_set() else "the cluster is gone or supervised by another process; exiting")
