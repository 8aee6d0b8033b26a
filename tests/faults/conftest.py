"""The fault-injection suite's tools: one detached cluster shared by the scenarios, a bounded load through
nginx that counts what failed, a scan of the process table for the workspace's processes, and the table
of figures printed at the end of the run (docs/operations.md, "Failures and what they cost")."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from confserve.client import ClientError, ClientTls, PredictClient
from confserve.cluster._local import ClusterState, LocalCluster
from confserve.cluster._workspace import SERVICE_DOMAIN, Workspace, confserve_command
from confserve.owner import load_digits_dataset
from tests.background_load import BackgroundLoad

LOAD_THREADS = 2
_REQUEST_PAUSE_SECONDS = 0.1  # each thread sends about ten requests a second: load, not a flood
_RETRY_PAUSE_SECONDS = 0.2  # a client's retry after a failed attempt (gRPC's retry policies back off too)
_CLIENT_TIMEOUT_SECONDS = 20.0  # longer than the supervisor needs to replace a hung replica


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        confserve_command(*args), capture_output=True, text=True, check=False, timeout=timeout
    )


# -- figures -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Figure:
    scenario: str
    requests: int | None  # answered during the scenario (None: no load ran)
    failed_attempts: int | None  # attempts that failed (each retried once on a new connection)
    lost: int | None  # requests that failed on the retry too
    recovery_seconds: float | None  # from the fault to full health again (None: nothing to recover)
    note: str = ""


FIGURES: list[Figure] = []


def _cell(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def figures_table() -> list[str]:
    rows = [("scenario", "requests", "failed attempts", "lost", "recovery (s)", "note")]
    for f in FIGURES:
        rows.append((f.scenario, _cell(f.requests), _cell(f.failed_attempts), _cell(f.lost),
                     _cell(f.recovery_seconds, 1), f.note))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("fault injection: what each failure cost")
        for line in figures_table():
            terminalreporter.write_line(line)


# -- load ------------------------------------------------------------------------------------------------
def digits_load(ws: Workspace, state: ClusterState) -> BackgroundLoad:
    """Predict requests through nginx on new connections from `LOAD_THREADS` threads, about ten a second
    each; a failed attempt is retried once on a new connection after a pause, a request that fails twice
    is lost."""
    tls = ClientTls.from_bundle(ws.client, server_name=SERVICE_DOMAIN)
    target = f"127.0.0.1:{state.lb_grpc_port}"
    _, _, images, _ = load_digits_dataset()
    image = images[:4]

    def once() -> None:
        with PredictClient(target, tls=tls, timeout_seconds=_CLIENT_TIMEOUT_SECONDS) as client:
            out = client.predict("digits", {"image": image})
        if out["classes"].shape != (4,):
            raise ClientError(f"unexpected answer {out['classes'].shape}")

    return BackgroundLoad(
        once, threads=LOAD_THREADS, retry_pause=_RETRY_PAUSE_SECONDS, request_pause=_REQUEST_PAUSE_SECONDS
    )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` every 50 ms until it holds; returns the seconds it took. The timeout is a safety
    net (the suite never asserts on a duration), so a hang fails the test instead of blocking the run."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not reached within {timeout:.0f} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


# -- the workspace's processes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    description: str


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def processes_of(root: Path) -> list[Proc]:
    """Every process (but this one) whose working directory or command line points into `root`: the
    independent check, which knows nothing of how the cluster records or marks its processes."""
    found = []
    prefix = str(root) + os.sep
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            cwd = ""
        cmdline = _read(f"/proc/{entry}/cmdline") or ""
        stat = _read(f"/proc/{entry}/stat")
        if stat is None or stat.rpartition(")")[2].split()[0] in "ZX":
            continue
        if cwd == str(root) or cwd.startswith(prefix) or str(root) in cmdline:
            ppid = int(stat.rpartition(")")[2].split()[1])
            found.append(Proc(int(entry), ppid, cmdline[:160] or stat[:80]))
    return found


def unrecorded(ws: Workspace) -> list[Proc]:
    """The workspace's processes that its state does not name (nor are children of one it names: nginx's
    workers, the supervisor's short-lived starters): what `down` could only find by its sweep."""
    state = LocalCluster(ws).read_state()
    if state is None:
        return processes_of(ws.root)
    recorded = {state.prov_pid, state.nginx_pid, *(r.pid for r in state.replicas)}
    recorded |= {c.pid for c in state.commands} | {r.pid for r in state.retiring}
    if state.supervisor is not None:
        recorded.add(state.supervisor.pid)
    return [p for p in processes_of(ws.root) if p.pid not in recorded and p.ppid not in recorded]


def assert_every_process_recorded(ws: Workspace) -> None:
    """Poll (a component being started is recorded a moment after it exists) until every process of the
    workspace is in its state, so `down` knows it."""
    wait_until(lambda: not unrecorded(ws), 20, f"processes not in the state: {unrecorded(ws)}")


# -- the shared cluster ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "digits"
    result = run("model", "example", "digits", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, digits_model: Path) -> Iterator[LocalCluster]:
    """A detached cluster (two replicas, two-way TLS, supervised) that the scenarios break in turn; each
    scenario leaves it healthy. Stopped at the end whatever happened, and checked for leftovers."""
    ws = Workspace(tmp_path_factory.mktemp("faults") / "ws")
    try:  # stopped even when `up` fails half-way (a detached cluster whose check failed keeps running)
        result = run(
            "up", "--workspace", str(ws.root), "--model", str(digits_model), "--replicas", "2", "--detach"
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        yield LocalCluster(ws)
    finally:
        run("down", "--workspace", str(ws.root))
        assert processes_of(ws.root) == []
