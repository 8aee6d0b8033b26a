"""The local cluster's state and its commands without a real cluster: stand-in processes (sleep) for the
components, the observation replaced where a real component would be asked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from confserve.cluster import _local
from confserve.cluster._local import (
    KEY_SERVICE,
    NGINX,
    ClusterState,
    CommandRecord,
    LocalCluster,
    ReplicaState,
)
from confserve.cluster._processes import MARKER, LockBusyError, ProcessRecord, WorkspaceLock, alive, record_of
from confserve.cluster._supervisor import Observed, Track
from confserve.cluster._workspace import Workspace, WorkspaceError


class Sleepers:
    """Stand-in processes; whatever is left is killed at the end."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, env: dict[str, str] | None = None) -> ProcessRecord:
        child = subprocess.Popen(["sleep", "300"], env=env)
        self.children.append(child)
        return record_of(child.pid)

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait()


@pytest.fixture
def sleepers() -> Iterator[Sleepers]:
    s = Sleepers()
    yield s
    s.close()


def make_state(ws: Workspace, sleepers: Sleepers, replicas: int = 2) -> ClusterState:
    key, nginx = sleepers.start(), sleepers.start()
    state = ClusterState(
        workspace=str(ws.root),
        model="digits",
        tls="twoway",
        prov_pid=key.pid,
        prov_port=1,
        metrics_port=2,
        nginx_pid=nginx.pid,
        lb_grpc_port=3,
        lb_rest_port=4,
        identity={"mr_enclave": "00" * 32, "mr_signer": "11" * 32, "isv_prod_id": 0, "isv_svn": 0},
        prov_start_ticks=key.start_ticks,
        nginx_start_ticks=nginx.start_ticks,
        replicas_wanted=replicas,
    )
    for index in range(replicas):
        record = sleepers.start()
        state.replicas.append(
            ReplicaState(
                index, record.pid, 10 + index, 20 + index, str(ws.logs / f"r{index}.log"), record.start_ticks
            )
        )
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.state_file.write_text(state.to_json())
    return state


def test_state_round_trip_and_older_files(tmp_path: Path, sleepers: Sleepers) -> None:
    ws = Workspace(tmp_path / "ws")
    state = make_state(ws, sleepers)
    state.prov_track = Track(started_at=5.0, restarts=2, last_reason="exited")
    state.supervisor = CommandRecord(7, 8, "supervisor (detached)")
    state.retiring = [ProcessRecord(9, 10)]
    ws.state_file.write_text(state.to_json())
    assert ClusterState.load(ws.state_file) == state
    # A state written before start times and tracks were recorded: defaults, the pids trusted.
    old = {k: v for k, v in json.loads(state.to_json()).items() if k in
           ("workspace", "model", "tls", "prov_pid", "prov_port", "metrics_port", "nginx_pid", "lb_grpc_port",
            "lb_rest_port", "identity", "signature")}  # fmt: skip
    old["replicas"] = [{"index": 0, "pid": 5, "grpc_port": 1, "rest_port": 2, "log": "x"}]
    ws.state_file.write_text(json.dumps(old))
    loaded = ClusterState.load(ws.state_file)
    assert (loaded.prov_start_ticks, loaded.prov_track, loaded.supervisor) == (0, Track(), None)
    assert loaded.replicas[0].record == ProcessRecord(5, 0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"workspace": "w"}',
        json.dumps({"version": 99, "workspace": "w"}),
    ],
)
def test_a_damaged_state_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(text)
    with pytest.raises(WorkspaceError, match="no running cluster described"):
        ClusterState.load(path)


def test_the_state_is_written_only_under_the_lock_and_atomically(tmp_path: Path, sleepers: Sleepers) -> None:
    ws = Workspace(tmp_path / "ws")
    make_state(ws, sleepers)
    cluster = LocalCluster(ws)
    cluster.state = cluster.read_state()
    with pytest.raises(RuntimeError, match="only under the workspace lock"):
        cluster._save()
    with cluster._transaction() as state:
        assert state is not None
        state.replicas_wanted = 5
        cluster._save()
    assert ClusterState.load(ws.state_file).replicas_wanted == 5
    assert sorted(p.name for p in ws.root.iterdir()) == ["cluster.json", "cluster.lock"]  # no temporary left


def test_a_busy_workspace_makes_a_command_wait_then_fail(tmp_path: Path, sleepers: Sleepers) -> None:
    ws = Workspace(tmp_path / "ws")
    make_state(ws, sleepers)
    other = WorkspaceLock(ws.root / "cluster.lock", "up")
    other.acquire(wait_seconds=0)
    heard: list[str] = []
    cluster = LocalCluster(ws, progress=heard.append, command="scale")
    with (
        pytest.raises(LockBusyError, match=r"`confserve up` \(pid \d+"),
        cluster._transaction(wait_seconds=0.2),
    ):
        pass
    assert heard == [f"waiting for `confserve up` (pid {os.getpid()}, for 0 s)"]
    other.release()


def test_down_stops_everything_of_the_workspace(tmp_path: Path, sleepers: Sleepers) -> None:
    """Recorded components, the supervisor, a waiting command, a retired replica, and a process that
    carries the workspace's marker without being recorded (started a moment before its starter died).
    A serving replica (its port listens) gets SIGTERM, and so does one still starting (with a short
    grace: stand-ins end on SIGTERM)."""
    ws = Workspace(tmp_path / "ws")
    state = make_state(ws, sleepers)
    serving = socket.create_server(("127.0.0.1", 0))
    state.replicas[0].rest_port = serving.getsockname()[1]
    supervisor, command, retired = sleepers.start(), sleepers.start(), sleepers.start()
    sleepers.start(env={**os.environ, MARKER: str(ws.root)})
    state.supervisor = CommandRecord(supervisor.pid, supervisor.start_ticks, "supervisor (detached)")
    state.commands = [CommandRecord(command.pid, command.start_ticks, "scale")]
    state.retiring = [retired]
    ws.state_file.write_text(state.to_json())
    heard: list[str] = []
    with serving:
        report = LocalCluster(ws, progress=heard.append, command="down").down()
    assert report.survivors == ()
    assert report.stopped == 8  # key service, nginx, 2 replicas, supervisor, command, retired, stray
    assert not ws.state_file.exists()
    key, nginx, replica0, replica1, *others = (child.wait(10) for child in sleepers.children)
    assert (key, nginx, replica0, replica1) == (
        -signal.SIGTERM,
        -signal.SIGQUIT,
        -signal.SIGTERM,
        -signal.SIGTERM,
    )
    assert others == [-signal.SIGTERM] * 4
    assert heard[0] == "stopping supervisor (detached), scale"
    assert heard[1] == "stopping nginx, replica 0, replica 1, retired process, key service"
    assert heard[2] == "stopping sleep"


def test_down_reports_what_it_could_not_stop(
    tmp_path: Path, sleepers: Sleepers, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace(tmp_path / "ws")
    state = make_state(ws, sleepers, replicas=1)
    monkeypatch.setattr(_local, "stop_processes", lambda *_, **__: [])  # signals lost
    report = LocalCluster(ws, command="down").down()
    assert report.survivors == tuple(
        sorted(
            [f"pid {state.nginx_pid} (nginx)", f"pid {state.replicas[0].pid} (replica 0)",
             f"pid {state.prov_pid} (key service)"]
        )
    )  # fmt: skip
    assert report.stopped == 0
    assert ws.state_file.exists()  # a second down can try again


class Supervised(LocalCluster):
    """The supervisor's I/O glue with the observation and the starts replaced."""

    def __init__(self, ws: Workspace, sleepers: Sleepers, observed: dict[str, str]) -> None:
        super().__init__(ws, command="supervisor")
        self.sleepers = sleepers
        self.observed = observed  # name -> condition
        self.now = 1000.0
        self._clock = lambda: self.now
        self.started: list[str] = []

    def observe(self, state: ClusterState, context: Any = None) -> dict[str, Observed]:
        return {
            name: Observed(name, ClusterState.kind(name), self.observed.get(name, "ready"), "why")  # type: ignore[arg-type]
            for name in state.names()
        }

    def _start_key_service(self, state: ClusterState) -> None:
        self.started.append(KEY_SERVICE)
        state.set(KEY_SERVICE, record=self.sleepers.start())


def test_supervise_once_restarts_and_backs_off(tmp_path: Path, sleepers: Sleepers) -> None:
    ws = Workspace(tmp_path / "ws")
    state = make_state(ws, sleepers)
    me = record_of(os.getpid())
    state.supervisor = CommandRecord(me.pid, me.start_ticks, "supervisor (confserve up)")
    ws.state_file.write_text(state.to_json())
    cluster = Supervised(ws, sleepers, {KEY_SERVICE: "dead"})
    [restart] = cluster.supervise_once() or []
    assert (restart.name, restart.reason, cluster.started) == (KEY_SERVICE, "why", [KEY_SERVICE])
    saved = ClusterState.load(ws.state_file)
    assert saved.prov_pid == sleepers.children[-1].pid  # the new process is recorded
    assert (saved.prov_track.restarts, saved.prov_track.last_reason) == (1, "why")
    cluster.now += 0.5  # dead again at once: a backoff, shown by status
    assert cluster.supervise_once() == []
    assert cluster.started == [KEY_SERVICE]
    info = cluster.status()["secret_provisioning"]
    assert (info["state"], info["restarts"], info["restart_in_seconds"]) == ("dead", 1, 1.0)
    assert info["last_restart"] == "1970-01-01T00:16:40Z"
    cluster.now += 1.0
    assert [r.name for r in cluster.supervise_once() or []] == [KEY_SERVICE]
    # Busy workspace: nothing happens this tick. Another supervisor: this one stops.
    with WorkspaceLock(ws.root / "cluster.lock", "scale").holding(wait_seconds=0):
        cluster.now += 100
        assert cluster.supervise_once() == []
    saved = ClusterState.load(ws.state_file)
    saved.supervisor = replace(saved.supervisor, pid=1)  # type: ignore[arg-type]
    ws.state_file.write_text(saved.to_json())
    assert cluster.supervise_once() is None


def test_a_restart_that_cannot_start_is_retried_later(tmp_path: Path, sleepers: Sleepers) -> None:
    ws = Workspace(tmp_path / "ws")
    state = make_state(ws, sleepers)
    me = record_of(os.getpid())
    state.supervisor = CommandRecord(me.pid, me.start_ticks, "supervisor (confserve up)")
    ws.state_file.write_text(state.to_json())
    cluster = Supervised(ws, sleepers, {NGINX: "dead"})

    def broken(state: ClusterState) -> None:
        raise OSError("no nginx here")

    cluster._start_nginx = broken  # type: ignore[method-assign]
    assert [r.name for r in cluster.supervise_once() or []] == [NGINX]
    saved = ClusterState.load(ws.state_file)
    assert not alive(saved.record(NGINX))
    assert saved.nginx_track.last_reason == "why; could not start: no nginx here"


def test_commands_on_a_workspace_without_a_cluster(tmp_path: Path) -> None:
    cluster = LocalCluster(Workspace(tmp_path / "ws"), command="scale")
    with pytest.raises(WorkspaceError, match="no cluster is running"):
        cluster.scale(2)
    with pytest.raises(WorkspaceError, match="no cluster is running"):
        cluster.status()
    assert cluster.down().survivors == ()


def test_nginx_balances_the_replicas_that_joined(
    tmp_path: Path, sleepers: Sleepers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica added to a running cluster is left out of nginx's configuration until it is ready."""
    monkeypatch.setattr(_local, "find_stream_module", lambda: None)
    ws = Workspace(tmp_path / "ws")
    state = make_state(ws, sleepers)
    state.replicas[1].balanced = False
    cluster = LocalCluster(ws)
    cluster.state = state
    config = cluster.nginx_config()
    assert config.grpc_backends == ["127.0.0.1:10"]
    assert config.rest_backends == ["127.0.0.1:20"]
    state.replicas[0].balanced = False  # none has joined yet (a cluster's first start): all of them
    assert cluster.nginx_config().grpc_backends == ["127.0.0.1:10", "127.0.0.1:11"]
    ws.state_file.write_text(state.to_json())
    assert [r.balanced for r in ClusterState.load(ws.state_file).replicas] == [False, False]


def test_down_of_a_removed_workspace_still_finds_its_processes(tmp_path: Path, sleepers: Sleepers) -> None:
    root = tmp_path / "gone"
    sleepers.start(env={**os.environ, MARKER: str(root)})
    report = LocalCluster(Workspace(root), command="down").down()
    assert (report.stopped, report.survivors) == (1, ())
    assert sleepers.children[0].wait(10) == -signal.SIGTERM
    assert not root.exists()
