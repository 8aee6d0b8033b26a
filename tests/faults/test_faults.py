"""Fault injection on a supervised local cluster: what each failure costs, and that nothing survives `down`.

One detached cluster (two replicas behind nginx, the key service, the supervisor) is broken in turn, under
a bounded load through nginx (conftest `digits_load`: a failed attempt is retried once on a new connection):
kill -9 and SIGSTOP of the key service, of a replica and of nginx; the audit log's disk full; the key
service restarted while a replica attests; `up` twice (healthy, then broken), `up` during `scale`, and
`down` during `scale`. Each scenario records its figures (requests answered, failed attempts, lost
requests, seconds to full health), printed in a table at the end of the run and written up in
docs/operations.md; durations are figures, never asserted (the deadlines are safety nets).

Orphans: after every scenario, every process whose working directory or command line points into the
workspace must be one the cluster's state names (or a child of one: nginx's workers), which `down`
stops; the last scenario runs `down` while a `scale` waits and checks that no such process is left.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from confserve.cluster._dashboard import KeyServiceScrape
from confserve.cluster._local import ClusterState, LocalCluster, free_port
from confserve.cluster._workspace import confserve_command
from confserve.provisioning import verify_audit_log
from tests.background_load import BackgroundLoad
from tests.faults.conftest import (
    FIGURES,
    LOAD_THREADS,
    Figure,
    assert_every_process_recorded,
    digits_load,
    processes_of,
    run,
    wait_until,
)

pytestmark = pytest.mark.slow

RECOVERY_DEADLINE_SECONDS = 120.0  # safety net: a replica restarts in seconds even on a busy machine


def state_of(cluster: LocalCluster) -> ClusterState:
    state = cluster.read_state()
    assert state is not None
    return state


def healthy(cluster: LocalCluster) -> bool:
    """Key service and nginx ready, every replica ready, as `confserve status` sees them."""
    info = cluster.status()
    return (
        info["secret_provisioning"]["state"] == "ready"
        and info["load_balancer"]["state"] == "ready"
        and all(r["state"] == "ready" for r in info["replicas"])
    )


def restarted_and_ready(cluster: LocalCluster, component: str, old_pid: int) -> bool:
    info = cluster.status()
    entry = info["secret_provisioning"] if component == "key service" else info["load_balancer"]
    return bool(entry["pid"] != old_pid and entry["state"] == "ready")


def replica_back(cluster: LocalCluster, index: int, old_pid: int) -> bool:
    info = cluster.status()
    replica = next(r for r in info["replicas"] if r["index"] == index)
    return bool(replica["pid"] != old_pid and replica["state"] == "ready" and healthy(cluster))


@pytest.fixture
def load(cluster: LocalCluster) -> Iterator[BackgroundLoad]:
    """The load for one scenario; the cluster is healthy before and after it, and every process of the
    workspace is in its state."""
    wait_until(lambda: healthy(cluster), RECOVERY_DEADLINE_SECONDS, "a healthy cluster before the scenario")
    with digits_load(cluster.ws, state_of(cluster)) as running:
        running.wait_for(5)
        yield running
    wait_until(lambda: healthy(cluster), RECOVERY_DEADLINE_SECONDS, "a healthy cluster after the scenario")
    assert_every_process_recorded(cluster.ws)


def key_service_figures(cluster: LocalCluster) -> KeyServiceScrape:
    state = state_of(cluster)
    with urllib.request.urlopen(f"http://127.0.0.1:{state.metrics_port}/metrics", timeout=5) as response:
        return KeyServiceScrape.from_text(response.read().decode())


# -- up on a healthy cluster -----------------------------------------------------------------------------
def test_up_on_a_healthy_cluster_changes_nothing(cluster: LocalCluster, load: BackgroundLoad) -> None:
    before = state_of(cluster)
    start, counts = time.monotonic(), load.counts()
    result = run("up", "--workspace", str(cluster.ws.root), "--detach")
    took = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already running; nothing to do" in result.stdout
    assert "-> PASS" in result.stdout
    after = state_of(cluster)
    ports = lambda s: (s.prov_port, s.metrics_port, s.lb_grpc_port, s.lb_rest_port,  # noqa: E731
                       [(r.grpc_port, r.rest_port) for r in s.replicas])  # fmt: skip
    pids = lambda s: (s.prov_pid, s.nginx_pid, [r.pid for r in s.replicas], s.supervisor)  # noqa: E731
    assert (ports(after), pids(after)) == (ports(before), pids(before))
    cost = load.counts() - counts
    assert (cost.failed_attempts, cost.lost) == (0, 0), load.errors
    # One cluster: one key service, one nginx master, two replicas, one supervisor.
    commands = [p.description for p in processes_of(cluster.ws.root)]
    assert sum("secret-prov serve" in c for c in commands) == 1
    assert sum("nginx: master" in c for c in commands) == 1
    assert sum(" serve --model_name" in c for c in commands) == 2
    assert sum("supervise_detached" in c for c in commands) == 1
    FIGURES.append(Figure("up on a healthy cluster", cost.ok, cost.failed_attempts, cost.lost, None,
                          f"no-op in {took:.1f} s: same pids and ports"))  # fmt: skip


# -- the key service -------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["kill -9", "SIGSTOP"])
def test_key_service_outage(cluster: LocalCluster, load: BackgroundLoad, how: str) -> None:
    """Running replicas hold their key: they serve on; the supervisor starts the key service again."""
    old = state_of(cluster).prov_pid
    counts = load.counts()
    os.kill(old, signal.SIGKILL if how == "kill -9" else signal.SIGSTOP)
    recovery = wait_until(lambda: restarted_and_ready(cluster, "key service", old), RECOVERY_DEADLINE_SECONDS,
                          "the key service restarted")  # fmt: skip
    load.wait_for(10)
    cost = load.counts() - counts
    assert (cost.failed_attempts, cost.lost) == (0, 0), load.errors
    info = cluster.status()["secret_provisioning"]
    assert info["restarts"] >= 1
    assert info["last_restart_reason"].startswith("exited" if how == "kill -9" else "hung for")
    FIGURES.append(Figure(f"key service {how}", cost.ok, cost.failed_attempts, cost.lost, recovery,
                          "restarted by the supervisor" + (" after 6 s hung" if how == "SIGSTOP" else "")))  # fmt: skip


# -- a replica -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("how", "index"), [("kill -9", 0), ("SIGSTOP", 1)])
def test_replica_failure(cluster: LocalCluster, load: BackgroundLoad, how: str, index: int) -> None:
    """Only requests in flight on the replica fail (and their retry succeeds on the other); the
    supervisor starts it again on its ports, it attests again, and the capacity is back."""
    old = next(r.pid for r in state_of(cluster).replicas if r.index == index)
    counts = load.counts()
    os.kill(old, signal.SIGKILL if how == "kill -9" else signal.SIGSTOP)
    start = time.monotonic()
    wait_until(lambda: next(r.pid for r in state_of(cluster).replicas if r.index == index) != old,
               RECOVERY_DEADLINE_SECONDS, f"replica {index} restarted")  # fmt: skip
    restarted_after = time.monotonic() - start
    wait_until(lambda: replica_back(cluster, index, old), RECOVERY_DEADLINE_SECONDS,
               f"replica {index} restarted and ready")  # fmt: skip
    recovery = time.monotonic() - start
    load.wait_for(10)
    cost = load.counts() - counts
    assert cost.lost == 0, load.errors
    assert cost.failed_attempts <= (LOAD_THREADS if how == "kill -9" else 2 * LOAD_THREADS), load.errors
    FIGURES.append(Figure(f"replica {how}", cost.ok, cost.failed_attempts, cost.lost, recovery,
                          f"started again after {restarted_after:.1f} s; then attested, loaded: capacity back"))  # fmt: skip


# -- nginx -----------------------------------------------------------------------------------------------
def test_nginx_killed(cluster: LocalCluster, load: BackgroundLoad) -> None:
    """Its orphaned worker goes on serving until the supervisor starts a new nginx on the same ports
    (the worker is told to quit gracefully)."""
    old = state_of(cluster).nginx_pid
    counts = load.counts()
    os.kill(old, signal.SIGKILL)
    recovery = wait_until(lambda: restarted_and_ready(cluster, "nginx", old), RECOVERY_DEADLINE_SECONDS,
                          "nginx restarted")  # fmt: skip
    load.wait_for(10)
    cost = load.counts() - counts
    assert cluster.status()["load_balancer"]["restarts"] >= 1
    FIGURES.append(Figure("nginx kill -9", cost.ok, cost.failed_attempts, cost.lost, recovery,
                          "new master on the same ports"))  # fmt: skip


def test_nginx_stopped(cluster: LocalCluster, load: BackgroundLoad) -> None:
    """A stopped master does not serve connections: its worker does, so nothing is lost and nothing is
    restarted; the view says the master is stopped."""
    state = state_of(cluster)
    counts = load.counts()
    os.kill(state.nginx_pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "stopped" in cluster.status()["load_balancer"]["reason"], 30, "the stop seen")
        load.wait_for(20)
        info = cluster.status()["load_balancer"]
        assert (info["state"], info["pid"]) == ("ready", state.nginx_pid)
    finally:
        os.kill(state.nginx_pid, signal.SIGCONT)
    cost = load.counts() - counts
    assert (cost.failed_attempts, cost.lost) == (0, 0), load.errors
    FIGURES.append(Figure("nginx SIGSTOP (master)", cost.ok, cost.failed_attempts, cost.lost, None,
                          "its worker serves; not restarted"))  # fmt: skip


# -- the key service restarted while a replica attests ----------------------------------------------------
class HoldingProxy:
    """A TCP forwarder to the key service that holds what a client sends until `release` is set: a
    replica pointed at it starts its RA-TLS handshake and waits there, so the key service can be
    restarted while that replica is attesting."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.attesting = threading.Event()  # a client sent its first handshake bytes
        self.release = threading.Event()
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self._closed.is_set():
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                first = conn.recv(65536)
            except OSError:
                return
            if not first:
                return
            self.attesting.set()
            if not self.release.wait(60):
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                return  # the key service is not back yet: the client sees a closed connection and retries
            with upstream:
                try:
                    upstream.sendall(first)
                    self._pipe(conn, upstream)
                except OSError:
                    return

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while not self._closed.is_set():
                for key, _ in sel.select(0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)

    def close(self) -> None:
        self._closed.set()
        self.release.set()
        self.server.close()
        for thread in self._threads:
            thread.join(5)


def test_key_service_restarted_while_a_replica_attests(
    cluster: LocalCluster, load: BackgroundLoad, tmp_path: Path
) -> None:
    """A replica (the cluster's own options and code, only its key service address points at a holding
    proxy) begins its RA-TLS handshake; the key service is killed then, the supervisor starts it again,
    and the replica's retries get the key. The running replicas lose nothing."""
    state = state_of(cluster)
    proxy = HoldingProxy(state.prov_port)
    options = cluster.replica_options(state.model, free_port(), free_port(), state.prov_port)
    options = replace(options, secret_provision_servers=f"localhost:{proxy.port}")
    log = tmp_path / "attesting-replica.log"
    with log.open("wb") as out:
        replica = subprocess.Popen(confserve_command("serve", *options.to_argv()), cwd=cluster.ws.host,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert proxy.attesting.wait(RECOVERY_DEADLINE_SECONDS), log.read_text()[-2000:]
        counts = load.counts()
        old = state_of(cluster).prov_pid
        os.kill(old, signal.SIGKILL)
        proxy.release.set()  # the handshake in flight meets a dead key service
        recovery = wait_until(lambda: "confserve: serving gRPC" in log.read_text(), RECOVERY_DEADLINE_SECONDS,
                              "the attesting replica keyed and serving")  # fmt: skip
        assert restarted_and_ready(cluster, "key service", old)
        load.wait_for(10)
        cost = load.counts() - counts
        assert (cost.failed_attempts, cost.lost) == (0, 0), load.errors
        text = log.read_text()
        # Its first attempt was the one cut off by the restart; a later one got the key.
        assert "still waiting for secret provisioning: attempt 1" in text
        entries = [json.loads(line) for line in cluster.ws.audit_log.read_text().splitlines()]
        assert entries[-1]["outcome"] == "released"
    finally:
        replica.send_signal(signal.SIGTERM)
        replica.wait(60)
        proxy.close()
    FIGURES.append(Figure("key service kill -9 while a replica attests", cost.ok, cost.failed_attempts,
                          cost.lost, recovery, "its handshake cut off; a later attempt got the key"))  # fmt: skip


# -- the audit log's disk full ---------------------------------------------------------------------------
def _mount_tiny_tmpfs(where: Path) -> None:
    where.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        pytest.skip(
            f"a full disk is simulated with a 64 KiB tmpfs, which needs root: {result.stderr.strip()}"
        )


def _fill(directory: Path) -> None:
    with (directory / "filler").open("wb", buffering=0) as f:
        while os.statvfs(directory).f_bavail > 0:
            f.write(b"\0" * os.statvfs(directory).f_bsize)
    assert os.statvfs(directory).f_bavail == 0


def _restart_key_service(cluster: LocalCluster) -> None:
    """Stop the key service; the supervisor starts it again, and it opens the audit log anew."""
    old = state_of(cluster).prov_pid
    os.kill(old, signal.SIGTERM)
    wait_until(lambda: restarted_and_ready(cluster, "key service", old), RECOVERY_DEADLINE_SECONDS,
               "the key service restarted")  # fmt: skip


def test_audit_disk_full(cluster: LocalCluster, load: BackgroundLoad, tmp_path: Path) -> None:
    """The key service's audit log on a full disk: a replica asking for its key is refused (no key
    without its audit record), the running replica serves on, the refused one is retried with backoff,
    and once there is space again it gets its key, recorded."""
    disk = tmp_path / "audit-disk"
    _mount_tiny_tmpfs(disk)
    ws = cluster.ws
    original = ws.audit_log.with_name("audit.log.before-disk-full")
    try:
        _fill(disk)
        os.replace(ws.audit_log, original)
        ws.audit_log.symlink_to(disk / "audit.log")  # a fresh log on the full disk
        _restart_key_service(cluster)
        before = key_service_figures(cluster)
        counts = load.counts()
        replica = state_of(cluster).replicas[1]
        os.kill(replica.pid, signal.SIGKILL)  # it is started again and asks for its key
        wait_until(lambda: key_service_figures(cluster).refusals.get("audit", 0) > before.refusals.get("audit", 0),
                   RECOVERY_DEADLINE_SECONDS, "a refusal for want of an audit record")  # fmt: skip
        assert key_service_figures(cluster).releases == before.releases  # no key without its record
        assert (disk / "audit.log").read_bytes() == b""
        info = next(r for r in cluster.status()["replicas"] if r["index"] == 1)
        assert info["state"] != "ready"
        load.wait_for(10)  # serving goes on
        (disk / "filler").unlink()
        recovery = wait_until(lambda: replica_back(cluster, 1, replica.pid), RECOVERY_DEADLINE_SECONDS,
                              "the refused replica keyed once there is space")  # fmt: skip
        cost = load.counts() - counts
        assert cost.lost == 0, load.errors
        assert cost.failed_attempts <= LOAD_THREADS, load.errors
        after = key_service_figures(cluster)
        log = verify_audit_log(disk / "audit.log")
        assert log.ok, log
        released = [json.loads(line) for line in (disk / "audit.log").read_text().splitlines()]
        assert [e["outcome"] for e in released].count("released") == after.releases - before.releases == 1
        track = next(r for r in cluster.status()["replicas"] if r["index"] == 1)
        refusals = after.refusals.get("audit", 0) - before.refusals.get("audit", 0)
    finally:
        if ws.audit_log.is_symlink():
            os.replace(original, ws.audit_log)
        _restart_key_service(cluster)  # back on the real log, so the tmpfs can go
        subprocess.run(["umount", str(disk)], check=False)
    assert track["restarts"] >= 2  # killed, then refused at least once: started again with backoff
    FIGURES.append(Figure("audit log's disk full", cost.ok, cost.failed_attempts, cost.lost, recovery,
                          f"{refusals:.0f} key request(s) refused, none released unrecorded; "
                          "recovery counted from freeing the disk"))  # fmt: skip


# -- up twice on a broken cluster, up during scale, down during scale -------------------------------------
def test_up_repairs_a_broken_cluster(cluster: LocalCluster) -> None:
    """Nothing supervises (the supervisor is killed first); the key service, a replica and nginx die.
    `up` again starts exactly those, on their ports, and the supervisor again."""
    before = state_of(cluster)
    assert before.supervisor is not None
    for pid in (before.supervisor.pid, before.prov_pid, before.replicas[0].pid, before.nginx_pid):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: cluster.status()["load_balancer"]["state"] == "dead", 30, "the damage seen")
    start = time.monotonic()
    result = run("up", "--workspace", str(cluster.ws.root), "--detach")
    took = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "already running; converged:" in result.stdout
    for line in ("key service restarted by confserve up", "replica 0 restarted by confserve up",
                 "nginx restarted by confserve up", "supervisor started again"):  # fmt: skip
        assert line in result.stdout, result.stdout
    assert "replica 1 restarted" not in result.stdout
    after = state_of(cluster)
    assert (after.prov_port, after.lb_grpc_port, [r.rest_port for r in after.replicas]) == (
        before.prov_port, before.lb_grpc_port, [r.rest_port for r in before.replicas])  # fmt: skip
    assert after.replicas[1].pid == before.replicas[1].pid
    assert healthy(cluster)
    assert_every_process_recorded(cluster.ws)
    FIGURES.append(Figure("up on a broken cluster", None, None, None, took,
                          "key service, replica, nginx, supervisor started again on their ports"))  # fmt: skip


def _scale(cluster: LocalCluster, replicas: int) -> subprocess.Popen[str]:
    return subprocess.Popen(confserve_command("scale", str(replicas), "--workspace", str(cluster.ws.root)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _scale_waiting(cluster: LocalCluster, proc: subprocess.Popen[str], replicas: int) -> None:
    def waiting() -> bool:
        state = state_of(cluster)
        return len(state.replicas) == replicas and any(c.command == "scale" for c in state.commands)

    wait_until(waiting, 60, "scale started its replica and waits")
    assert proc.poll() is None


def test_up_during_scale(cluster: LocalCluster, load: BackgroundLoad) -> None:
    counts = load.counts()
    start = time.monotonic()
    scale = _scale(cluster, 3)
    try:
        _scale_waiting(cluster, scale, 3)
        up = run("up", "--workspace", str(cluster.ws.root), "--detach")
        assert up.returncode == 0, up.stderr[-3000:]
        _, err = scale.communicate(timeout=RECOVERY_DEADLINE_SECONDS)
        assert scale.returncode == 0, err[-3000:]
    finally:
        if scale.poll() is None:
            scale.kill()
            scale.communicate()
    took = time.monotonic() - start
    state = state_of(cluster)
    assert [r.index for r in state.replicas] == [0, 1, 2]
    assert len({r.grpc_port for r in state.replicas} | {r.rest_port for r in state.replicas}) == 6
    commands = [p.description for p in processes_of(cluster.ws.root)]
    assert sum(" serve --model_name" in c for c in commands) == 3
    assert sum("secret-prov serve" in c for c in commands) == 1
    wait_until(lambda: healthy(cluster), RECOVERY_DEADLINE_SECONDS, "three replicas ready")
    load.wait_for(10)
    cost = load.counts() - counts
    assert (cost.failed_attempts, cost.lost) == (0, 0), load.errors
    FIGURES.append(Figure("up during scale 3", cost.ok, cost.failed_attempts, cost.lost, took,
                          "up kept scale's new replica and waited for it; one cluster, 3 replicas"))  # fmt: skip


def test_down_during_scale_leaves_nothing(cluster: LocalCluster) -> None:
    """The last scenario: `down` while a `scale` waits for its new replica stops the scale command too,
    and no process of the workspace is left after all the faults above."""
    scale = _scale(cluster, 4)
    try:
        _scale_waiting(cluster, scale, 4)
        start = time.monotonic()
        down = run("down", "--workspace", str(cluster.ws.root))
        took = time.monotonic() - start
        assert down.returncode == 0, down.stdout + down.stderr
        assert "cluster stopped" in down.stdout
        scale.communicate(timeout=30)
        assert scale.returncode != 0
    finally:
        if scale.poll() is None:
            scale.kill()
            scale.communicate()
    assert processes_of(cluster.ws.root) == []
    assert not cluster.ws.state_file.exists()
    FIGURES.append(Figure("down during scale 4", None, None, None, took, "0 processes of the workspace left"))
