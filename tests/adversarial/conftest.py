"""Fixtures of the adversarial suite: the budget, and one live replica that every network fuzzer shares.

The replica is `confserve serve` as a real process (gRPC and REST over TLS, the `clf` test model), its
stderr going to `replica.log` (what a cluster keeps as the replica's log file) and its stdout captured
by a thread. A fuzzer checks after each batch that the process is alive and answers a good request, and
at the end that no marker it sent appears in either.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.adversarial._fuzz import Budget, find_markers

GOOD_BODY = json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]]}).encode()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.adversarial)


@pytest.fixture(scope="session")
def budget(request: pytest.FixtureRequest) -> Budget:
    return Budget(
        long=bool(request.config.getoption("--long")) or os.environ.get("CONFSERVE_ADVERSARIAL_LONG") == "1"
    )


class Replica:
    """A running `confserve serve`; `alive()` and `log_leaks()` are what the fuzzers assert on."""

    def __init__(self, process: subprocess.Popen[bytes], workdir: Path, ca: trustme.CA) -> None:
        self.process = process
        self.workdir = workdir
        self.ca = ca
        self.log = workdir / "replica.log"
        self.stdout = bytearray()
        self.grpc_port = 0
        self.rest_port = 0

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_bytes(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the replica process: now and the peak so far."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
        return fields["VmRSS"], fields["VmHWM"]

    def log_leaks(self, markers: list[bytes]) -> list[str]:
        return find_markers(markers, [self.log], [bytes(self.stdout)])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _ssl_cfg(cert: trustme.LeafCert) -> str:
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems).decode()
    key = cert.private_key_pem.bytes().decode()
    return f"server_cert: {json.dumps(chain)}\nserver_key: {json.dumps(key)}\n"


@pytest.fixture(scope="session")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    from tests.unit.serving.models import make_served_tree

    workdir = tmp_path_factory.mktemp("replica")
    ca = trustme.CA()
    (workdir / "ssl.cfg").write_text(_ssl_cfg(ca.issue_cert("localhost", "127.0.0.1")))
    (workdir / "models.config").write_text(make_served_tree(workdir / "models"))
    with socket.socket() as probe:  # REST port 0 means "no REST" (TF Serving's flag): pick a free one
        probe.bind(("127.0.0.1", 0))
        rest_port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-c",
        "from confserve.cli import main; main()",
        "serve",
        "--host=127.0.0.1",
        "--model_config_file=models.config",
        "--port=0",
        f"--rest_api_port={rest_port}",
        "--ssl_config_file=ssl.cfg",
        "--allow_plaintext",
        "--file_system_poll_wait_seconds=-1",
    ]
    with (workdir / "replica.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=log)
    server = Replica(process, workdir, ca)
    assert process.stdout is not None
    first = process.stdout.readline()
    server.stdout += first
    words = first.decode(errors="replace").split()
    try:
        server.grpc_port = int(words[words.index("gRPC") + 3].rstrip(","))
        server.rest_port = int(words[words.index("REST") + 3])
    except (ValueError, IndexError):
        process.kill()
        process.communicate()
        raise AssertionError(f"replica did not start: {first!r}\n{server.log_text()}") from None

    def drain() -> None:
        assert process.stdout is not None
        while chunk := process.stdout.read1(65536):
            server.stdout += chunk

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(10)
        process.stdout.close()
