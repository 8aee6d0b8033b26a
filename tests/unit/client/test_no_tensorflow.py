"""Client commands and the client library never load the TensorFlow runtime.

Each case runs a whole process under `python -X importtime`, which lists every module imported (in
spawned worker processes too, since the option is passed on); a positive control checks the list is
real. The predict and bench-client paths against a running server are in tests/integration/test_client.py.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from confserve.cluster._local import ClusterState, ReplicaState, free_port
from confserve.cluster._workspace import Workspace

# The program every case runs: it leaves the names in sys.modules at exit in the file $MODULES_OUT.
PRELUDE = (
    "import atexit, json, os, sys\n"
    "atexit.register(lambda: open(os.environ['MODULES_OUT'], 'w').write(json.dumps(sorted(sys.modules))))\n"
)
CLI = PRELUDE + "from confserve.cli import main\nmain()\n"


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str  # without the import-time lines
    modules: list[str]  # sys.modules of the process at exit
    imported: list[str]  # import-time lines of this process and any it spawned


def run_python(program: str, *args: str, tmp_path: Path, timeout: float = 120) -> Run:
    out = tmp_path / "modules.json"
    out.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", program, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "MODULES_OUT": str(out)},
    )
    imported, rest = [], []
    for line in result.stderr.splitlines():
        if line.startswith("import time:"):
            imported.append(line.rpartition("|")[2].strip())
        else:
            rest.append(line)
    return Run(result.returncode, result.stdout, "\n".join(rest), json.loads(out.read_text()), imported)


def no_tensorflow(run: Run) -> None:
    assert "confserve.cli._main" in run.modules or "confserve.tensor_proto" in run.modules  # a real list
    assert "site" in run.imported  # import-time lines were captured
    for names in (run.modules, run.imported):
        assert [m for m in names if m == "tensorflow" or m.startswith("tensorflow.python")] == []


def test_client_library_converts_without_tensorflow(tmp_path: Path) -> None:
    run = run_python(
        PRELUDE + "import numpy as np\n"
        "from confserve.client import PredictClient, TensorSpec\n"
        "import confserve.client._inputs, confserve.client._display, confserve.client._loadgen\n"
        "from confserve.tensor_proto import to_array, to_proto\n"
        "from confserve.tfs_protos import get_model_metadata_pb2, predict_pb2\n"
        "PredictClient('127.0.0.1:1', tls=None).close()\n"
        "a = np.arange(6, dtype=np.float32).reshape(2, 3)\n"
        "assert (to_array(to_proto(a)) == a).all()\n"
        "print(TensorSpec('bfloat16', (2,)).numpy_dtype())\n",
        tmp_path=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "bfloat16"
    assert "tensorflow_serving.apis.predict_pb2" in run.modules  # the protos are TensorFlow's own
    no_tensorflow(run)


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_predict_against_a_closed_port_fails_fast_and_clearly(protocol: str, tmp_path: Path) -> None:
    port = free_port()  # bound once and released: nothing listens there
    run = run_python(
        CLI,
        "predict",
        f"127.0.0.1:{port}",
        "-m",
        "m",
        "--plaintext",
        "--random",
        "--protocol",
        protocol,
        tmp_path=tmp_path,
    )
    assert run.returncode == 1
    assert run.stderr.startswith(f"confserve: error: cannot reach 127.0.0.1:{port}"), run.stderr
    assert "refused" in run.stderr.lower()
    assert "Traceback" not in run.stderr
    assert "confserve.client._predict" in run.modules
    no_tensorflow(run)


@pytest.fixture
def fake_cluster(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    """A workspace whose state names processes of ours (sleep) as its components: status and down
    act on them without any real cluster."""

    def no_core_dump() -> None:  # nginx is stopped with SIGQUIT
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    ws = Workspace(tmp_path / "ws")
    ws.client.mkdir(parents=True)
    trustme.CA().cert_pem.write_to_path(str(ws.client / "ca.crt"))
    children = [subprocess.Popen(["sleep", "300"], preexec_fn=no_core_dump) for _ in range(3)]  # noqa: PLW1509
    prov, nginx, replica = children
    state = ClusterState(
        workspace=str(ws.root),
        model="m",
        tls="oneway",
        prov_pid=prov.pid,
        prov_port=free_port(),
        metrics_port=free_port(),
        nginx_pid=nginx.pid,
        lb_grpc_port=free_port(),
        lb_rest_port=free_port(),
        identity={"mr_enclave": "00" * 32, "mr_signer": "11" * 32, "isv_prod_id": 1, "isv_svn": 1},
        replicas=[ReplicaState(0, replica.pid, free_port(), free_port(), str(ws.logs / "replica-0.log"))],
    )
    ws.state_file.write_text(state.to_json())
    yield ws.root, children
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_status_and_down_without_tensorflow(
    fake_cluster: tuple[Path, list[subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    root, children = fake_cluster
    status = run_python(CLI, "status", "--workspace", str(root), "--json", tmp_path=tmp_path)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert [r["pid"] for r in info["replicas"]] == [children[2].pid]
    assert "confserve.cluster._local" in status.modules
    no_tensorflow(status)
    assert all(child.poll() is None for child in children)
    down = run_python(CLI, "down", "--workspace", str(root), tmp_path=tmp_path)
    assert down.returncode == 0, down.stderr
    assert [child.wait(timeout=30) for child in children] == [
        -signal.SIGTERM,
        -signal.SIGQUIT,
        -signal.SIGTERM,
    ]
    no_tensorflow(down)
