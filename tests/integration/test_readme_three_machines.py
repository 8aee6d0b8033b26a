"""README's "By hand, on three machines", run as written: each block in its machine's own network namespace
and working directory, with only the files the README's table says are shipped copied between them, and
`OWNER`/`HOST` replaced by the addresses. Fails if any command needs more than the README gives.

Needs root (network namespaces), as CI has; without it the test fails, never skips.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_three_machines import (
    CLIENT,
    HOST,
    HOST_CLIENT_SIDE,
    OWNER,
    OWNER_IP,
    namespaces,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
NAMESPACE = {"owner": OWNER, "host": HOST, "client": CLIENT}


@dataclass(frozen=True)
class Step:
    number: int
    machine: str
    script: str


@dataclass(frozen=True)
class Shipment:
    after: int
    source: str
    what: str
    rename: str | None
    to: tuple[str, ...]


def readme_steps() -> tuple[list[Step], list[Shipment]]:
    text = README.read_text()
    steps = [
        Step(int(m[1]), m[2], m[3])
        for m in re.finditer(r"<!-- three-machines: step (\d+) (\w+) -->\n```sh\n(.*?)```", text, re.S)
    ]
    table = text.split("<!-- three-machines: ship -->", 1)[1].split("\n\n", 1)[0]
    shipments = []
    for row in table.strip().splitlines()[2:]:
        after, source, what, to = (cell.strip() for cell in row.strip("|").split("|"))
        items = re.findall(r"`([^`]+)`(?: as `([^`]+)`)?", what)
        assert len(items) == 1, row
        shipments.append(
            Shipment(
                int(after), source, items[0][0], items[0][1] or None, tuple(t.strip() for t in to.split(","))
            )
        )
    return steps, shipments


def test_the_readme_names_every_step() -> None:
    steps, shipments = readme_steps()
    assert [(s.number, s.machine) for s in steps] == [(1, "host"), (2, "owner"), (3, "host"), (4, "client")]
    assert {s.source for s in shipments} <= set(NAMESPACE)
    assert all("OWNER" in s.script or "HOST" in s.script or s.number in (1, 3) for s in steps)


@contextlib.contextmanager
def running_blocks() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:  # each block ran in its own session: stop whatever it left in the background
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(1)
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def ship(shipment: Shipment, dirs: dict[str, Path]) -> None:
    source = dirs[shipment.source] / shipment.what.rstrip("/")
    assert source.exists(), f"README ships {shipment.what} from the {shipment.source}, which has none"
    for target in shipment.to:
        dest = dirs[target] / (shipment.rename or shipment.what).rstrip("/")
        if source.is_dir():
            shutil.copytree(source, dest, symlinks=True)
        else:
            shutil.copyfile(source, dest)


def test_readme_three_machines_verbatim(namespaces: None, tmp_path: Path) -> None:  # noqa: F811
    steps, shipments = readme_steps()
    dirs = {machine: tmp_path / machine for machine in NAMESPACE}
    for directory in dirs.values():
        directory.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}:/usr/sbin"}
    with running_blocks() as started:
        for step in steps:
            script = step.script.replace("OWNER", OWNER_IP).replace("HOST", HOST_CLIENT_SIDE)
            log = tmp_path / f"step{step.number}-{step.machine}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", NAMESPACE[step.machine], "bash", "-e", "-c", script],
                    cwd=dirs[step.machine],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            started.append(proc)
            code = proc.wait(timeout=600)
            assert code == 0, (
                f"step {step.number} ({step.machine}) failed:\n{log.read_text(errors='replace')[-4000:]}"
            )
            if step.number == 3:  # the README: wait until both replicas print that they serve
                deadline = time.monotonic() + 300
                while log.read_text(errors="replace").count("confserve: serving gRPC on port") < 2:
                    assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
                    time.sleep(0.5)
            for shipment in shipments:
                if shipment.after == step.number:
                    ship(shipment, dirs)
        client_log = (tmp_path / "step4-client.log").read_text()
    # Both predictions went through nginx to an enclave the owner's policy approves, over gRPC and REST.
    assert client_log.count("attested: simulated enclave mr_enclave") == 2, client_log
    assert "audit.log" in {p.name for p in dirs["owner"].iterdir()}
    # No private key of the simulated platform reached the owner or the client.
    for machine in ("owner", "client"):
        for path in dirs[machine].rglob("*"):
            if path.is_file() and "platform" in str(path.relative_to(dirs[machine])):
                assert b"PRIVATE KEY" not in path.read_bytes(), path
