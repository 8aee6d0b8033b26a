"""The cluster's process handling on real (tiny) processes: identity by start time, stopping, the
workspace's marker, listening sockets and the workspace lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confserve.cluster._processes import (
    MARKER,
    LockBusyError,
    LockHolder,
    ProcessRecord,
    WorkspaceLock,
    alive,
    listening_ports,
    lock_holder,
    nginx_processes,
    parse_listening,
    parse_stat,
    read_stat,
    record_of,
    stop_processes,
    stopped,
    workspace_processes,
)

# A real line (fields after comm abridged to what proc(5) lists up to starttime and a few more).
STAT = "4242 (py thon) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615"


def test_parse_stat() -> None:
    stat = parse_stat(STAT)
    assert (stat.pid, stat.comm, stat.state, stat.ppid, stat.start_ticks) == (
        4242,
        "py thon) (x)",
        "S",
        1,
        987654,
    )
    own = parse_stat(Path("/proc/self/stat").read_text())
    assert own.pid > 0
    assert own.start_ticks > 0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "4242 (x S 1",  # no closing parenthesis
        "4242 (x) S 1 2 3",  # too few fields
        "x (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 2 0 0 20 0 1 0 987654 1000",  # pid not a number
        "4242 (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 2 0 0 20 0 1 0 later 1000",  # start not a number
        "4242 (x) SS 1 4242 4242 0 -1 4194560 100 0 0 0 5 2 0 0 20 0 1 0 987654 1000",  # state not one letter
    ],
)
def test_parse_stat_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="stat"):
        parse_stat(text)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "300"])
    yield child
    if child.poll() is None:
        child.kill()
    child.wait()


def test_a_record_names_one_process(sleeper: subprocess.Popen[bytes]) -> None:
    record = record_of(sleeper.pid)
    assert alive(record)
    assert not stopped(record)
    assert not alive(ProcessRecord(sleeper.pid, record.start_ticks + 1))  # the pid, reused by another
    assert alive(ProcessRecord(sleeper.pid, 0))  # start time unknown (an old state): the pid is trusted
    assert not alive(ProcessRecord(0, 0))
    os.kill(sleeper.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while not stopped(record):  # the kernel stops it asynchronously
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(sleeper.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(record):  # a zombie until reaped: gone all the same
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert read_stat(sleeper.pid) is None or read_stat(sleeper.pid).state in "ZX"  # type: ignore[union-attr]
    assert record_of(sleeper.pid).start_ticks == -1 or not alive(record_of(sleeper.pid))
    assert read_stat(-1) is None


@pytest.fixture
def stubborn() -> Iterator[subprocess.Popen[bytes]]:
    """A process that ignores SIGTERM."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    yield child
    if child.poll() is None:
        child.kill()
    child.wait()
    child.stdout.close()


def test_stop_processes(sleeper: subprocess.Popen[bytes], stubborn: subprocess.Popen[bytes]) -> None:
    """SIGTERM reaches a stopped process too (it is resumed); one that ignores it gets SIGKILL."""
    os.kill(sleeper.pid, signal.SIGSTOP)
    records = [record_of(sleeper.pid), record_of(stubborn.pid)]
    survivors = stop_processes([(r, signal.SIGTERM) for r in records], grace_seconds=0.5)
    assert survivors == []
    assert sleeper.wait(5) == -signal.SIGTERM
    assert stubborn.wait(5) == -signal.SIGKILL
    assert stop_processes([(records[0], signal.SIGTERM)], grace_seconds=0.1) == []  # already gone


def test_stop_processes_with_a_short_grace_for_some(stubborn: subprocess.Popen[bytes]) -> None:
    record = record_of(stubborn.pid)
    # The long grace would outlast the test's timeout: the short one applies to this process.
    assert (
        stop_processes(
            [(record, signal.SIGTERM)], grace_seconds=3600, quick={record}, quick_grace_seconds=0.2
        )
        == []
    )
    assert stubborn.wait(5) == -signal.SIGKILL


def test_workspace_processes_are_found_by_their_marker(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    marked = subprocess.Popen(["sleep", "300"], env={**os.environ, MARKER: str(root)})
    other = subprocess.Popen(["sleep", "300"], env={**os.environ, MARKER: str(root) + "-other"})
    try:
        found = workspace_processes(root, root / "nginx")
        assert record_of(marked.pid) in found
        assert all(r.pid != other.pid for r in found)
        assert all(r.pid != os.getpid() for r in found)
    finally:
        for child in (marked, other):
            child.kill()
            child.wait()
    assert workspace_processes(root, root / "nginx") == []


def test_nginx_processes_by_directory_or_prefix(tmp_path: Path) -> None:
    """nginx overwrites its environment with its title: its processes are found by working directory
    (also once deleted) or by the prefix in the master's title."""
    fake = tmp_path / "nginx"  # a process whose name is nginx: a shell script reading its stdin
    fake.write_text("#!/bin/sh\nwhile read line; do :; done\n")
    fake.chmod(0o755)
    run_dir = tmp_path / "ws" / "nginx"
    run_dir.mkdir(parents=True)
    by_cwd = subprocess.Popen([str(fake)], cwd=run_dir, stdin=subprocess.PIPE)
    by_prefix = subprocess.Popen([str(fake), "-p", str(run_dir), "-c", "x"], stdin=subprocess.PIPE)
    elsewhere = subprocess.Popen([str(fake)], cwd=tmp_path, stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while read_stat(by_prefix.pid) is None or read_stat(by_prefix.pid).comm != "nginx":  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        found = {r.pid for r in nginx_processes(run_dir)}
        assert {by_cwd.pid, by_prefix.pid} <= found
        assert elsewhere.pid not in found
        assert {by_cwd.pid, by_prefix.pid} <= {r.pid for r in workspace_processes(tmp_path / "ws", run_dir)}
    finally:
        for child in (by_cwd, by_prefix, elsewhere):
            child.kill()
            child.wait()
            child.stdin.close()  # type: ignore[union-attr]


TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:B747 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 490028 1
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 52 1
   2: 0100007F:1F90 0100007F:B747 01 00000000:00000000 00:00000000 00000000     0        0 53 1
   3: 0100007F:ZZZZ 00000000:0000 0A
   4: 0100007F 00000000:0000 0A
   5: short
"""


def test_parse_listening() -> None:
    # 0xB747 and 0x07E8 listen; 0x1F90 is a connection; the rest is malformed and skipped.
    assert parse_listening(TCP) == {0xB747, 0x07E8}
    assert parse_listening("") == set()
    assert parse_listening("header only\n") == set()


def test_listening_ports_sees_our_listener() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert port in listening_ports()
    assert port not in listening_ports()


# -- the lock --------------------------------------------------------------------------------------------
def test_a_second_holder_waits_or_hears_who_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "cluster.lock"
    first, second = WorkspaceLock(path, "scale"), WorkspaceLock(path, "up")
    first.acquire(wait_seconds=0)
    holder = lock_holder(path.read_text())
    assert holder is not None
    assert (holder.pid, holder.command) == (os.getpid(), "scale")
    with pytest.raises(LockBusyError, match=r"busy: `confserve scale` \(pid \d+, for \d+ s\) is changing it"):
        second.acquire(wait_seconds=0)
    heard: list[str] = []
    threading.Timer(0.3, first.release).start()
    second.acquire(wait_seconds=30, on_wait=heard.append)  # waits for the release
    assert heard == [f"waiting for `confserve scale` (pid {os.getpid()}, for 0 s)"]
    assert lock_holder(path.read_text()).command == "up"  # type: ignore[union-attr]
    second.release()
    assert path.read_text() == ""  # released: nobody named


def test_the_lock_is_reentrant_and_preemptible(tmp_path: Path) -> None:
    path = tmp_path / "cluster.lock"
    lock = WorkspaceLock(path, "down")
    with lock.holding(wait_seconds=0), lock.holding(wait_seconds=0):
        assert lock.held
    assert not lock.held
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()
    holder_lock = WorkspaceLock(path, "up")
    holder_lock.acquire(wait_seconds=0)
    stopped_holders: list[LockHolder] = []

    def preempt(holder: LockHolder) -> None:  # down stops the holder; here it lets go
        stopped_holders.append(holder)
        holder_lock.release()

    with lock.holding(wait_seconds=10, preempt=preempt):
        assert [h.command for h in stopped_holders] == ["up"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"pid": 1}',
        '{"pid": "x", "start_ticks": 1, "command": "up", "since": 0}',
        '{"pid": -4, "start_ticks": 1, "command": "up", "since": 0}',
        '{"pid": 4, "start_ticks": -2, "command": "up", "since": 0}',
    ],
)
def test_lock_holder_of_a_damaged_file_is_unknown(text: str) -> None:
    assert lock_holder(text) is None
