"""Local-cluster throughput: through nginx vs straight to one replica, 1 vs 2 replicas, and the wall time
of `confserve up --once` from a warm workspace.

Each model gets its own temporary workspace and a cluster started with `confserve up --detach` (two-way
TLS, the default; simulated SGX). The load comes from confserve's load generator with the workspace's
client bundle and the service name the certificates carry. Phases, each a fixed time:

1. one replica: straight to its gRPC port vs through nginx (TLS passthrough), alternating, at
   concurrency 1 (the proxy's added latency shows most there) and concurrency 4;
2. `confserve scale 2`, then through nginx at concurrency 4 (1 vs 2 replicas, same load);
3. `confserve down` (always, in `finally`).

Then `confserve up --once` (start, attested check through nginx, stop) is timed on the digits workspace,
which is warm by then: sim platform, keys, TLS material and the encrypted model exist and are re-used.

Every confserve process runs from a copy of `src/` taken when the bench starts (PYTHONPATH): the
simulated measurement covers the package's files, so an edit to the working tree during the run would
give replicas started later (`scale`) another identity, which the provisioning policy rightly refuses.

Usage: .venv/bin/python bench/cluster.py [--quick] [--models resnet50,digits]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

SERVICE_NAME = "grpc.tf-serving.service.com"  # the name on the cluster's server certificate
ROUNDS = 2  # alternations of direct/nginx at each concurrency


@dataclass(frozen=True)
class Phase:
    label: str
    rps: float
    p50_ms: float


_ENV: dict[str, str] = dict(os.environ)  # PYTHONPATH set to the source snapshot by main()


def snapshot_sources(dest: Path) -> None:
    """Copy the confserve package the bench runs into `dest` and point every confserve process at it."""
    import confserve

    shutil.copytree(
        Path(confserve.__file__).parent, dest / "confserve", ignore=shutil.ignore_patterns("__pycache__")
    )
    _ENV["PYTHONPATH"] = os.pathsep.join(p for p in (str(dest), os.environ.get("PYTHONPATH")) if p)


def confserve(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "confserve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=_ENV,
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-800:]
        raise RuntimeError(f"confserve {' '.join(args[:2])} failed ({result.returncode}): {tail}")
    return result


def status(ws: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(confserve("status", "--json", "--workspace", str(ws)).stdout)
    return info


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def bench_model(ws: Path, model: str, seconds: float) -> list[Phase]:
    from confserve.client import ClientTls

    inputs = c.resnet_inputs() if model == "resnet50" else c.small_inputs()
    phases: list[Phase] = []

    def load(label: str, port: int, concurrency: int) -> None:
        print(f"  {label} ({seconds:.0f} s) ...", flush=True)
        processes = 1 if concurrency == 1 else 2
        r = c.run_load(
            port, model, inputs, tls, concurrency=concurrency, processes=processes, seconds=seconds
        )
        phases.append(Phase(label, r.throughput_rps, r.p50_ms))

    start = time.perf_counter()
    print(f"{model}: confserve up --detach --replicas 1 ...", flush=True)
    try:
        confserve("up", "--detach", "--workspace", str(ws), "--model", model, "--replicas", "1")
        print(f"  up in {time.perf_counter() - start:.1f} s (cold workspace: model built, encrypted)")
        info = status(ws)
        tls = ClientTls.from_bundle(ws / "client", server_name=SERVICE_NAME)
        lb, replica = _port(info["grpc"]), info["replicas"][0]["grpc_port"]
        for concurrency in (1, 4):
            for i in range(ROUNDS):
                load(f"c={concurrency} straight to replica 0 #{i + 1}", replica, concurrency)
                load(f"c={concurrency} through nginx, 1 replica #{i + 1}", lb, concurrency)
        print(f"{model}: confserve scale 2 ...", flush=True)
        t = time.perf_counter()
        confserve("scale", "2", "--workspace", str(ws))
        print(f"  scaled in {time.perf_counter() - t:.1f} s")
        ready = [r for r in status(ws)["replicas"] if r["ready"]]
        if len(ready) != 2:
            raise RuntimeError(f"expected 2 ready replicas, status says {len(ready)}")
        for i in range(ROUNDS):
            load(f"c=4 through nginx, 2 replicas #{i + 1}", lb, 4)
    finally:
        subprocess.run(
            [sys.executable, "-m", "confserve", "down", "--workspace", str(ws)],
            capture_output=True,
            timeout=180,
            check=False,
            env=_ENV,
        )
    return phases


def best(phases: list[Phase], prefix: str) -> Phase:
    return max((p for p in phases if p.label.startswith(prefix)), key=lambda p: p.rps)


def report(model: str, phases: list[Phase], target: str) -> None:
    print(f"{model}")
    for p in phases:
        print(f"  {p.label:<40}{p.rps:>9.1f} req/s  p50 {p.p50_ms:8.2f} ms")
    for concurrency in (1, 4):
        direct = best(phases, f"c={concurrency} straight")
        nginx = best(phases, f"c={concurrency} through nginx, 1")
        print(
            f"  c={concurrency}: nginx / straight (best of {ROUNDS} each): "
            f"{nginx.rps / direct.rps:.3f}  ({nginx.p50_ms - direct.p50_ms:+.2f} ms p50){target}"
        )
    one, two = best(phases, "c=4 through nginx, 1"), best(phases, "c=4 through nginx, 2")
    print(f"  c=4 through nginx: 2 replicas / 1 replica: {two.rps / one.rps:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases")
    parser.add_argument("--models", default="resnet50,digits")
    parser.add_argument("--seconds", type=float, help="each ResNet-50 phase (default 12, quick 5)")
    parser.add_argument("--small-seconds", type=float, help="each digits phase (default 6, quick 3)")
    args = parser.parse_args()
    durations = {
        "resnet50": args.seconds or (5.0 if args.quick else 12.0),
        "digits": args.small_seconds or (3.0 if args.quick else 6.0),
    }
    models = [m for m in args.models.split(",") if m]
    print(c.machine_line(), flush=True)
    results: dict[str, list[Phase]] = {}
    once: list[float] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        snapshot_sources(Path(tmp, "src"))
        for model in models:
            results[model] = bench_model(Path(tmp, f"ws-{model}"), model, durations[model])
        warm = Path(tmp, f"ws-{models[-1]}")
        for _ in range(1 if args.quick else 2):
            print(f"confserve up --once --model {models[-1]} (warm workspace, 2 replicas) ...", flush=True)
            t = time.perf_counter()
            try:
                confserve("up", "--once", "--workspace", str(warm), "--model", models[-1], "--replicas", "2")
            finally:
                subprocess.run(
                    [sys.executable, "-m", "confserve", "down", "--workspace", str(warm)],
                    capture_output=True,
                    timeout=180,
                    check=False,
                    env=_ENV,
                )
            once.append(time.perf_counter() - t)

    print(f"\n{c.machine_line()}")
    print("gRPC, two-way TLS, batch 1; nginx is TLS passthrough (stream); each row one fixed-time phase")
    for model in models:
        report(model, results[model], "  target >= 0.97" if model == "resnet50" else "")
    runs = ", ".join(f"{s:.1f} s" for s in once)
    print(f"confserve up --once, warm {models[-1]} workspace, 2 replicas: {runs}")
    print("  (start secret-prov, measure, 2 replicas attest + load, nginx, attested check, stop)")


if __name__ == "__main__":
    main()
