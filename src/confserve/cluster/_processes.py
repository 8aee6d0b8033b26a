"""The processes of a local cluster: who they are, whether they run, stopping them, and the workspace lock.

A pid alone does not name a process: after it exits, the kernel may give the number to another one. So
the cluster records each process it starts as a `ProcessRecord` (pid and start time, the 22nd field of
`/proc/PID/stat`, in clock ticks since boot), and acts on a pid only while both still match. A zombie
(exited, not yet reaped: common when PID 1 of a container reaps nothing) counts as gone. The cluster's
processes are never children of the command that started them (see `LocalCluster._spawn`), so nothing
here reaps.

Every process a workspace starts carries `CONFSERVE_CLUSTER_WORKSPACE=<root>` in its environment, so
`workspace_processes` finds them, recorded or not (a process started a moment before its starter was
killed, say). nginx overwrites its environment with its process title, so its processes are found by
their working directory instead: the cluster starts nginx in `<root>/nginx`, and its workers inherit it
(and outlive a master killed with SIGKILL).

`WorkspaceLock` serialises the commands that change a cluster (`up`, `scale`, `down`, the supervisor's
restarts): an exclusive `flock` on `<root>/cluster.lock`, which the kernel releases when its holder
exits, however it exits. The holder writes its pid, start time and command into the file, so a command
that has to wait can say for whom, and `down` can stop a command that holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from confserve.errors import ConfserveError, Status

__all__ = [
    "MARKER",
    "LockBusyError",
    "LockHolder",
    "ProcStat",
    "ProcessRecord",
    "RecordedProcess",
    "WorkspaceLock",
    "alive",
    "listening",
    "listening_ports",
    "lock_holder",
    "nginx_processes",
    "parse_listening",
    "parse_stat",
    "read_stat",
    "record_of",
    "stop_processes",
    "stopped",
    "workspace_processes",
]

MARKER: Final = "CONFSERVE_CLUSTER_WORKSPACE"  # environment variable naming the workspace of a process
_POLL_SECONDS: Final = 0.05  # how often a wait looks again; a process exits within milliseconds of SIGKILL
_KILL_WAIT_SECONDS: Final = 5.0  # after SIGKILL, only an uninterruptible sleep (D state) takes longer
_QUICK_GRACE_SECONDS: Final = 2.0  # for a process with nothing to finish (a replica still starting)


class LockBusyError(ConfserveError, status=Status.UNAVAILABLE):
    """Another command holds the workspace; the message says which one."""


@dataclass(frozen=True)
class ProcStat:
    """The fields of `/proc/PID/stat` used here (proc(5)): 1 pid, 2 comm, 3 state, 4 ppid, 22 starttime."""

    pid: int
    comm: str
    state: str  # R running, S sleeping, D disk sleep, T stopped, t tracing stop, Z zombie, X dead, ...
    ppid: int
    start_ticks: int


def parse_stat(text: str) -> ProcStat:
    """Parse one `/proc/PID/stat` line. `comm` may hold spaces and parentheses, so it is everything
    between the first `(` and the last `)`. Raises ValueError on anything else."""
    head, sep, tail = text.rpartition(")")
    pid_text, open_paren, comm = head.partition(" (")
    fields = tail.split()
    # After comm come fields 3 (state) to 52; starttime (22) is the 20th of them.
    if not sep or not open_paren or len(fields) < 20 or len(fields[0]) != 1:
        raise ValueError("not a /proc/PID/stat line")
    if not (pid_text.isdigit() and fields[1].lstrip("-").isdigit() and fields[19].isdigit()):
        raise ValueError("not a /proc/PID/stat line")
    return ProcStat(int(pid_text), comm, fields[0], int(fields[1]), int(fields[19]))


def read_stat(pid: int) -> ProcStat | None:
    """The process's stat, or None when there is no such process (or its stat cannot be read)."""
    if pid <= 0:
        return None
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text(errors="replace"))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ProcessRecord:
    """A process as the cluster knows it: pid and start time (clock ticks since boot). A start time of 0
    means unknown (a state written before start times were recorded): the pid alone is then trusted."""

    pid: int
    start_ticks: int


class RecordedProcess:
    """Base of what stands for one process by its pid and start time (a replica, a command acting on the
    cluster, the lock's holder): its `record`."""

    pid: int
    start_ticks: int

    @property
    def record(self) -> ProcessRecord:
        return ProcessRecord(self.pid, self.start_ticks)


def record_of(pid: int) -> ProcessRecord:
    """The record of a running process (start time -1 when it is already gone: it never matches)."""
    stat = read_stat(pid)
    return ProcessRecord(pid, stat.start_ticks if stat is not None else -1)


def alive(record: ProcessRecord) -> bool:
    """Whether the recorded process still runs: same pid, same start time, not a zombie."""
    if record.pid <= 0:
        return False
    stat = read_stat(record.pid)
    if stat is None or stat.state in "ZXx":
        return False
    return record.start_ticks in (0, stat.start_ticks)


def stopped(record: ProcessRecord) -> bool:
    """Whether the recorded process runs but is stopped (SIGSTOP, SIGTSTP: state T)."""
    stat = read_stat(record.pid)
    return alive(record) and stat is not None and stat.state == "T"


def _signal(record: ProcessRecord, sig: int) -> None:
    if alive(record):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(record.pid, sig)
            if sig not in (signal.SIGKILL, signal.SIGCONT):
                os.kill(record.pid, signal.SIGCONT)  # a stopped process handles the signal only once resumed


def stop_processes(
    records: Sequence[tuple[ProcessRecord, int]],
    *,
    grace_seconds: float,
    quick: Collection[ProcessRecord] = (),
    quick_grace_seconds: float = _QUICK_GRACE_SECONDS,
) -> list[ProcessRecord]:
    """Send each process its signal (SIGTERM, SIGQUIT, ...) at once; SIGKILL whichever still runs after
    `grace_seconds` (`quick_grace_seconds` for those in `quick`), and wait for those too. Returns the
    processes still running after all that."""
    for record, sig in records:
        _signal(record, sig)
    start = time.monotonic()
    kill_at = {r: quick_grace_seconds if r in quick else grace_seconds for r, _ in records}
    pending = [r for r, _ in records if alive(r)]
    killed: set[ProcessRecord] = set()
    while pending:
        elapsed = time.monotonic() - start
        for record in pending:
            if elapsed >= kill_at[record] and record not in killed:
                _signal(record, signal.SIGKILL)
                killed.add(record)
        if all(elapsed >= kill_at[r] + _KILL_WAIT_SECONDS for r in pending):
            break
        time.sleep(_POLL_SECONDS)
        pending = [r for r in pending if alive(r)]
    return pending


def _environment_names(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def nginx_processes(nginx_dir: Path) -> list[ProcessRecord]:
    """The running nginx processes (master and workers) working in `nginx_dir` (also once it has been
    deleted), or whose master was started with it as its prefix (`-p`, kept in its process title)."""
    found = []
    cwds = (str(nginx_dir), f"{nginx_dir} (deleted)")
    prefix = f" -p {nginx_dir} ".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is None or stat.comm != "nginx" or stat.state in "ZXx":
                continue
            if _cwd(stat.pid) in cwds or prefix in _cmdline(stat.pid).replace(b"\0", b" "):
                found.append(ProcessRecord(stat.pid, stat.start_ticks))
    return found


def workspace_processes(root: Path, nginx_dir: Path) -> list[ProcessRecord]:
    """Every running process the workspace `root` started: those whose environment names it, and nginx
    processes working in `nginx_dir`. The caller and its ancestors are never included."""
    marker = f"{MARKER}={root}".encode()
    own = set()
    pid = os.getpid()
    while pid > 1 and pid not in own:
        own.add(pid)
        stat = read_stat(pid)
        pid = stat.ppid if stat is not None else 0
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        stat = read_stat(int(entry.name))
        if stat is None or stat.state in "ZXx":
            continue
        if _environment_names(stat.pid, marker):
            found.append(ProcessRecord(stat.pid, stat.start_ticks))
    return found + [r for r in nginx_processes(nginx_dir) if r.pid not in own and r not in found]


_TCP_LISTEN: Final = "0A"  # TCP_LISTEN in the `st` column of /proc/net/tcp (include/net/tcp_states.h)


def parse_listening(text: str) -> set[int]:
    """The ports of the listening sockets in a `/proc/net/tcp` or `/proc/net/tcp6` table (proc(5): a
    header line, then `sl local_address rem_address st ...`, addresses as HEXIP:HEXPORT). Lines that do
    not have that shape are skipped."""
    ports = set()
    for line in text.splitlines()[1:]:
        columns = line.split()
        if len(columns) < 4 or columns[3] != _TCP_LISTEN:
            continue
        _, sep, port = columns[1].rpartition(":")
        if sep and len(port) == 4 and all(c in "0123456789ABCDEFabcdef" for c in port):
            ports.add(int(port, 16))
    return ports


def listening_ports() -> set[int]:
    """Every TCP port something listens on in this network namespace (IPv4 and IPv6). The kernel
    writes these tables a page at a time, and sockets opened and closed meanwhile can shift an entry
    out of a read; callers that find a port missing read again (`listening`)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            ports |= parse_listening(Path(table).read_text(errors="replace"))
    return ports


def listening(ports: Collection[int], *, reads: int = 3) -> bool:
    """Whether something listens on every one of `ports`, from up to `reads` reads of the tables."""
    return any(set(ports) <= listening_ports() for _ in range(reads))


# -- the lock --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LockHolder(RecordedProcess):
    pid: int
    start_ticks: int
    command: str
    since: float  # wall-clock seconds

    def describe(self, now: float) -> str:
        return f"`confserve {self.command}` (pid {self.pid}, for {max(now - self.since, 0):.0f} s)"


def lock_holder(text: str) -> LockHolder | None:
    """Who holds the lock, from the lock file's text; None when it says nothing usable (outside input:
    an empty, partial or edited file)."""
    try:
        data = json.loads(text)
        holder = LockHolder(
            int(data["pid"]), int(data["start_ticks"]), str(data["command"]), float(data["since"])
        )
    except (ValueError, TypeError, KeyError):
        return None
    return holder if holder.pid > 0 and holder.start_ticks >= 0 else None


class WorkspaceLock:
    """The exclusive lock of one workspace, re-entrant within one holder (`with lock:` nests)."""

    def __init__(self, path: Path, command: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.command = command
        self._clock = clock
        self._fd = -1
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._depth > 0

    def holder(self) -> LockHolder | None:
        try:
            return lock_holder(self.path.read_text(errors="replace")[:4096])
        except OSError:
            return None

    def _try(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        return True

    def acquire(
        self,
        *,
        wait_seconds: float,
        on_wait: Callable[[str], None] = lambda _: None,
        preempt: Callable[[LockHolder], None] | None = None,
    ) -> None:
        """Take the lock, waiting up to `wait_seconds` (0: do not wait). `on_wait` hears once whom it
        waits for; `preempt` (down) is called with the holder instead, to stop it. Raises LockBusyError."""
        if self._depth:
            self._depth += 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + wait_seconds
            told = False
            while not self._try(fd):
                holder = self.holder()
                if preempt is not None and holder is not None:
                    preempt(holder)
                    preempt = None  # once; then wait for the kernel to release its lock
                if time.monotonic() >= deadline:
                    who = holder.describe(self._clock()) if holder else "another command"
                    raise LockBusyError(
                        f"the workspace is busy: {who} is changing it; try again when it ends"
                    )
                if not told:
                    on_wait(f"waiting for {holder.describe(self._clock()) if holder else 'another command'}")
                    told = True
                time.sleep(_POLL_SECONDS)
        except BaseException:
            os.close(fd)
            raise
        me = record_of(os.getpid())
        note = json.dumps(
            {"pid": me.pid, "start_ticks": me.start_ticks, "command": self.command, "since": self._clock()}
        ).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)
        self._fd, self._depth = fd, 1

    def release(self) -> None:
        if self._depth == 0:
            raise RuntimeError("the workspace lock is not held")
        self._depth -= 1
        if self._depth == 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = -1

    @contextlib.contextmanager
    def holding(
        self,
        *,
        wait_seconds: float,
        on_wait: Callable[[str], None] = lambda _: None,
        preempt: Callable[[LockHolder], None] | None = None,
    ) -> Iterator[None]:
        self.acquire(wait_seconds=wait_seconds, on_wait=on_wait, preempt=preempt)
        try:
            yield
        finally:
            self.release()
