"""`confserve up` end to end: the whole confidential cluster on loopback, in both TLS modes; a detached
cluster scaled up and down and a replica killed, all under load through nginx; a replica running
modified code never gets the key while the others keep serving."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from confserve.cli import main
from confserve.client import ClientError, ClientTls, PredictClient
from confserve.cluster._local import ClusterState, LocalCluster, free_port
from confserve.cluster._workspace import SERVICE_DOMAIN, Workspace, confserve_command
from confserve.owner._models import load_digits_dataset
from tests.background_load import BackgroundLoad

pytestmark = pytest.mark.slow


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        confserve_command(*args), capture_output=True, text=True, check=False, timeout=600, cwd=cwd
    )


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trained digits model for every cluster here (a directory named like the example)."""
    out = tmp_path_factory.mktemp("model") / "digits"
    result = run("model", "example", "digits", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.parametrize(("tls", "workspace_args"), [("twoway", ["--workspace", "ws"]), ("oneway", [])])
def test_up_once(tmp_path: Path, digits_model: Path, tls: str, workspace_args: list[str]) -> None:
    """As a user runs it: a relative --workspace, or none (the default ./workspace), from a working
    directory other than the ones the components run in (the provisioning service in the workspace,
    the replicas in its host/ directory)."""
    cwd = tmp_path / "user"
    cwd.mkdir()
    result = run("up", *workspace_args, "--model", str(digits_model), "--tls", tls, "--replicas", "2", "--once",
                 cwd=cwd)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    workspace = cwd / (workspace_args[1] if workspace_args else "workspace")
    assert (workspace / "owner" / "policy.toml").is_file()
    # The owner's plaintext model copy is the owner's alone.
    assert (workspace / "owner").stat().st_mode & 0o777 == 0o700
    plain = [p for p in (workspace / "owner" / "models").rglob("*") if not p.is_symlink()]
    assert any(p.name == "saved_model.pb" for p in plain)
    for path in plain:
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    assert "predicted as" in result.stdout
    assert "-> PASS" in result.stdout
    # Both replicas' key releases, from the audit log: the default key (ssl.cfg) and the model's own key.
    assert result.stdout.count(" got ['default', 'digits']") == 2
    assert "replica 1 is ready" in result.stderr
    assert not (workspace / "cluster.json").exists()  # stopped
    # The audit log's chain is intact.
    verify = run("secret-prov", "audit-verify", str(workspace / "owner" / "audit.log"))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def digits_load(ws: Workspace, state: ClusterState) -> BackgroundLoad:
    """Requests through the load balancer on new connections; a failed attempt is retried at once on a new
    connection (one failed attempt followed by success is fine), a request that fails twice is lost."""
    tls = ClientTls.from_bundle(ws.client, server_name=SERVICE_DOMAIN)
    target = f"127.0.0.1:{state.lb_grpc_port}"
    _, _, images, _ = load_digits_dataset()
    image = images[:4]

    def once() -> None:
        with PredictClient(target, tls=tls, timeout_seconds=20) as client:
            out = client.predict("digits", {"image": image})
        if out["classes"].shape != (4,):
            raise ClientError(f"unexpected answer {out['classes'].shape}")

    return BackgroundLoad(once)


@pytest.fixture
def detached(tmp_path: Path, digits_model: Path) -> Iterator[LocalCluster]:
    ws = Workspace(tmp_path / "ws")
    try:  # stopped even when `up` fails half-way (a detached cluster whose check failed keeps running)
        result = run(
            "up", "--workspace", str(ws.root), "--model", str(digits_model), "--replicas", "1", "--detach"
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        yield LocalCluster(ws)
    finally:
        run("down", "--workspace", str(ws.root))


def test_status_scale_kill_under_load(
    detached: LocalCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = detached.ws
    # Without a terminal the live view prints a plain snapshot per tick (stopped after the first, as
    # Ctrl-C would).
    from confserve.cli import _cluster

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_cluster.time, "sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _cluster._watch(detached)
    monkeypatch.undo()
    lines = capsys.readouterr().out.splitlines()
    assert "| key service ok: 1 releases, 0 refusals | nginx ok: " in lines[0]
    assert lines[1].startswith("  replica #0 ready: - req/s")
    assert ", release digits r0, key lease to " in lines[1]  # the model's release and the key lease
    info = json.loads(run("status", "--workspace", str(ws.root), "--json").stdout)
    assert info["service_name"] == SERVICE_DOMAIN
    assert info["grpc"].startswith("127.0.0.1:")
    assert [r["ready"] for r in info["replicas"]] == [True]
    assert Path(info["client_bundle"]["cert"]).exists()
    assert info["signature"]["inputs"] == {"image": {"dtype": "float32", "shape": [-1, 8, 8, 1]}}
    state = ClusterState.load(ws.state_file)
    with digits_load(ws, state) as load:
        load.wait_for(5)
        result = CliRunner().invoke(main, ["scale", "3", "--workspace", str(ws.root)])
        assert result.exit_code == 0, result.output
        load.wait_for(10)
        state = ClusterState.load(ws.state_file)
        assert len(state.replicas) == 3
        os.kill(state.replicas[0].pid, signal.SIGKILL)  # a replica dies under load
        load.wait_for(20)
        result = CliRunner().invoke(main, ["scale", "1", "--workspace", str(ws.root)])
        assert result.exit_code == 0, result.output
        load.wait_for(10)
    # Requests in flight on the killed replica may fail once; each was retried on a new connection.
    assert load.errors == [], load.errors
    assert load.counts().ok >= 45
    counts = json.loads(run("status", "--workspace", str(ws.root), "--json").stdout)
    assert len(counts["replicas"]) == 1


def _read_pty(master: int, until: Callable[[bytes], bool], timeout: float) -> bytes:
    """What the terminal received, until `until(output)` holds, the other end closes or `timeout`."""
    out = b""
    deadline = time.monotonic() + timeout
    while not until(out) and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    return out


def test_status_watch_redraws_in_a_terminal(detached: LocalCluster) -> None:
    """`confserve status --watch` in a pseudo-terminal, under load: the table is redrawn in place
    (the cursor moves up over the last frame instead of the output growing), the figures come from
    the replica's metrics, and Ctrl-C (SIGINT) ends it cleanly."""
    ws = detached.ws
    state = ClusterState.load(ws.state_file)
    title = b"confserve cluster - model digits"
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE")}
    env.update(TERM="xterm-256color", COLUMNS="160", LINES="50")
    with digits_load(ws, state) as load:
        load.wait_for(5)
        proc = subprocess.Popen(
            confserve_command("status", "--watch", "--interval", "0.5", "--workspace", str(ws.root)),
            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
        )  # fmt: skip
        os.close(slave)
        try:
            out = _read_pty(master, lambda o: o.count(title) >= 6, timeout=120)
            proc.send_signal(signal.SIGINT)
            out += _read_pty(master, lambda o: False, timeout=10)
            assert proc.wait(timeout=20) == 0, out[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
    assert load.errors == [], load.errors
    text = out.decode(errors="replace")
    frames = text.split("confserve cluster - model digits")[1:]
    assert len(frames) >= 6, text[-3000:]
    # Redrawn in place: between frames rich moves the cursor up (ESC[1A) and erases lines (ESC[2K),
    # so the net lines advanced stay about one frame high however many frames were drawn.
    frame_lines = frames[-1].count("\n")
    assert text.count("\x1b[1A") >= (len(frames) - 2) * (frame_lines - 1)
    assert text.count("\n") - text.count("\x1b[1A") <= frame_lines + 3
    assert "Traceback" not in text
    assert text.rstrip("\r\n").endswith("\x1b[?25h")  # the cursor shown again on the way out
    # The figures: every frame shows the replica ready with its loaded version; under load, frames
    # after the first show a positive rate and a latency. (Ctrl-C may cut the frame being drawn.)
    complete = [frame for frame in frames if "Ctrl-C to stop" in frame]
    assert len(complete) >= len(frames) - 1 >= 5
    rows = []
    for frame in complete:
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", frame)
        row = next(line for line in plain.splitlines() if "#0" in line)
        rows.append([c.strip() for c in row.split("│")])
        assert "key service ok: 1 releases, 0 refusals" in plain
        assert "nginx ok: " in plain
    assert all(cells[2] == "ready" and cells[9] == "v1" for cells in rows), rows
    assert rows[0][3] == "-"  # one view: no rate yet
    busy = [cells for cells in rows[1:] if float(cells[3]) > 0]
    assert busy, rows
    assert all(cells[4].endswith(" ms") and cells[5].endswith(" ms") for cells in busy), busy
    # Without a terminal: the same snapshot once, as plain lines.
    once = run("status", "--workspace", str(ws.root))
    assert once.returncode == 0, once.stderr
    assert "\x1b" not in once.stdout
    assert re.search(r"^  replica #0 ready: - req/s, p50 [0-9.]+ ms, .*models v1(, |$)", once.stdout, re.M), (
        once.stdout
    )


def test_modified_replica_never_gets_the_key(detached: LocalCluster, tmp_path: Path) -> None:
    ws = detached.ws
    state = ClusterState.load(ws.state_file)
    # A copy of confserve with one changed file: the host "patched" the server.
    import confserve

    package = Path(confserve.__file__).parent
    shutil.copytree(package, tmp_path / "patched" / "confserve", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "patched" / "confserve" / "serving" / "_dataplane.py"
    target.write_text(target.read_text() + "\n# exfiltrate tensors here\n")
    # The replicas' own flags (metrics on the REST port included), so only the code differs.
    flags = detached.replica_flags(state.model, free_port(), free_port(), state.prov_port)
    flags += ["--secret_provision_deadline_seconds=3"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "patched")}
    command = [sys.executable, "-m", "confserve", "serve", *flags]
    proc = subprocess.run(
        command, cwd=ws.host, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 1
    assert "from secret provisioning" in proc.stderr
    assert "refused by policy" in proc.stderr
    assert "serving gRPC" not in proc.stdout
    refusals = [json.loads(line) for line in ws.audit_log.read_text().splitlines()]
    assert refusals[-1]["outcome"] != "released"
    assert refusals[-1]["identity"]["mr_enclave"] != state.identity["mr_enclave"]
    # The cluster keeps serving.
    with PredictClient(
        f"127.0.0.1:{state.lb_grpc_port}", tls=ClientTls.from_bundle(ws.client, server_name=SERVICE_DOMAIN)
    ) as c:
        _, _, images, labels = load_digits_dataset()
        out = c.predict("digits", {"image": images[:10]})
    assert np.mean(out["classes"] == labels[:10]) >= 0.9


def _replica_versions(cluster: LocalCluster, state: ClusterState) -> list[list[tuple[str, str]]]:
    """(version, state) of the model on every replica, asked from each replica directly over REST."""
    import urllib.request

    context = ClientTls.from_bundle(cluster.ws.client, server_name=SERVICE_DOMAIN).ssl_context()
    context.check_hostname = False
    result = []
    for replica in state.replicas:
        url = f"https://127.0.0.1:{replica.rest_port}/v1/models/digits"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            status = json.loads(response.read())["model_version_status"]
        result.append(sorted((s["version"], s["state"]) for s in status))
    return result


def test_new_model_version_rolls_out_under_load(
    detached: LocalCluster, digits_model: Path, tmp_path: Path
) -> None:
    ws = detached.ws
    assert CliRunner().invoke(main, ["scale", "2", "--workspace", str(ws.root)]).exit_code == 0
    state = ClusterState.load(ws.state_file)
    assert _replica_versions(detached, state) == [[("1", "AVAILABLE")]] * 2
    shutil.copytree(digits_model / "1", tmp_path / "v2" / "2")
    with digits_load(ws, state) as load:
        load.wait_for(5)
        # Under the model's own key, published as the model's next release (docs/releases.md).
        result = run("model", "encrypt", str(tmp_path / "v2"), "-w", str(ws.model_keys / "digits"),
                     "--out", str(ws.host / "models" / "digits"), "--bind-root", "models/digits",
                     "--release-key", str(ws.release_key), "--model", "digits", "--key-id", "digits")  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        deadline = time.monotonic() + 120
        while any(("2", "AVAILABLE") not in v for v in _replica_versions(detached, state)):
            assert time.monotonic() < deadline, _replica_versions(detached, state)
            time.sleep(0.2)
        load.wait_for(10)
    assert load.errors == [], load.errors
    # Every replica serves version 2; version 1 was unloaded after it (TF Serving's latest-1 policy).
    deadline = time.monotonic() + 60
    while _replica_versions(detached, state) != [[("1", "END"), ("2", "AVAILABLE")]] * 2:
        assert time.monotonic() < deadline, _replica_versions(detached, state)
        time.sleep(0.2)
