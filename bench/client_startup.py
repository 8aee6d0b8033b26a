"""Client start-up as a user sees it: `confserve predict` as a whole process.

Two figures, each the median wall time of N whole processes (fork, interpreter start-up, imports, the
work, exit) seen from this script:

(a) `confserve predict` against a closed port (gRPC and REST): it must fail fast, with the clear error
    "cannot reach HOST:PORT" (checked on every run);
(b) an attested predict (`--attest POLICY --attest-sim-platform DIR --random`, mutual TLS) against a
    running single replica that this script starts (`confserve up --detach --replicas 1`, digits model, in
    a temporary workspace, stopped at the end), straight at the replica's gRPC and REST ports; every run
    must print the attestation line.

Baselines measured in the same run: `python -c pass` and `python -c "import tensorflow"` (what every
client command paid before, when the client imported TensorFlow). Beside each wall time, the process's
CPU time (user + system): on a machine busy with other work the wall time grows, the CPU time hardly.

Targets (issue 11): (a) <= 1 s; (b) <= 1 s wall.

Usage: .venv/bin/python bench/client_startup.py [--runs 9] [--tf-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
from confserve.cluster._local import free_port

TARGET_SECONDS = 1.0
SERVER_NAME = "grpc.tf-serving.service.com"  # the name on the cluster's certificates (cluster._workspace)
_ENV = dict(os.environ)


def _confserve() -> list[str]:
    """The installed `confserve` script beside this interpreter (what a user runs), else `-m`."""
    script = Path(sys.executable).with_name("confserve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "confserve"]


def _snapshot_sources(dest: Path) -> None:
    """Run every confserve process from a copy of the package: the replica's simulated measurement
    covers the installed code, which others may edit while the bench runs. The copy is byte-compiled,
    as an installed package is (with PYTHONDONTWRITEBYTECODE set, every run would compile it again)."""
    import compileall

    import confserve

    shutil.copytree(
        Path(confserve.__file__).parent, dest / "confserve", ignore=shutil.ignore_patterns("__pycache__")
    )
    compileall.compile_dir(dest / "confserve", quiet=1)
    _ENV["PYTHONPATH"] = os.pathsep.join(p for p in (str(dest), os.environ.get("PYTHONPATH")) if p)


@dataclass(frozen=True)
class Times:
    wall: float
    cpu: float  # user + system time of the process: what load from other programs does not inflate


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(argv: list[str], *, expect: int, must_show: str) -> Times:
    """Wall and CPU time of one whole process; its exit code and output are checked."""
    cpu, start = _cpu_of_children(), time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=_ENV, timeout=120)
    seconds, cpu = time.perf_counter() - start, _cpu_of_children() - cpu
    output = result.stdout + result.stderr
    if result.returncode != expect or must_show not in output:
        raise SystemExit(
            f"{' '.join(argv[:3])} ...: exit {result.returncode} (wanted {expect}), "
            f"no {must_show!r} in:\n{output[-1500:]}"
        )
    return Times(seconds, cpu)


def _median(argv: list[str], runs: int, *, expect: int = 0, must_show: str = "") -> Times:
    _run(argv, expect=expect, must_show=must_show)  # warm the page cache
    times = [_run(argv, expect=expect, must_show=must_show) for _ in range(runs)]
    return Times(statistics.median(t.wall for t in times), statistics.median(t.cpu for t in times))


def _row(label: str, times: Times, python: Times, tf_import: Times) -> None:
    print(
        f"{label:<62}{times.wall:>8.3f}{times.wall - python.wall:>10.3f}"
        f"{times.wall / tf_import.wall:>8.2f}x{times.cpu:>8.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="Runs per client figure.")
    parser.add_argument("--tf-runs", type=int, default=3, help="Runs of the `import tensorflow` baseline.")
    args = parser.parse_args()
    cli = _confserve()
    print(c.machine_line())
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as name:
        tmp = Path(name)
        _snapshot_sources(tmp / "src")
        python = _median([sys.executable, "-c", "pass"], args.runs)
        tf_import = _median([sys.executable, "-c", "import tensorflow"], args.tf_runs)
        closed = free_port()  # bound once and released: nothing listens there
        refused = {
            protocol: _median(
                [*cli, "predict", f"127.0.0.1:{closed}", "-m", "digits", "--plaintext", "--random",
                 "--protocol", protocol],
                args.runs,
                expect=1,
                must_show=f"confserve: error: cannot reach 127.0.0.1:{closed}",
            )
            for protocol in ("grpc", "rest")
        }  # fmt: skip
        ws = tmp / "ws"
        print("starting a single replica: confserve up --detach --replicas 1 --model digits ...", flush=True)
        start = time.perf_counter()
        up = subprocess.run(
            [*cli, "up", "--detach", "--replicas", "1", "--workspace", str(ws)],
            capture_output=True, text=True, check=False, env=_ENV,
        )  # fmt: skip
        if up.returncode != 0:
            subprocess.run([*cli, "down", "--workspace", str(ws)], capture_output=True, check=False, env=_ENV)
            raise SystemExit(f"confserve up failed:\n{(up.stderr or up.stdout)[-1500:]}")
        print(
            f"  up in {time.perf_counter() - start:.1f} s (cold workspace: model made, encrypted, attested)"
        )
        try:
            info = json.loads(
                subprocess.run(
                    [*cli, "status", "--json", "--workspace", str(ws)],
                    capture_output=True, text=True, check=True, env=_ENV,
                ).stdout
            )  # fmt: skip
            replica = info["replicas"][0]
            attest = [
                "-m", "digits", "--tls-bundle", str(ws / "client"), "--server-name", SERVER_NAME,
                "--attest", str(ws / "owner" / "policy.toml"),
                "--attest-sim-platform", str(ws / "owner" / "sim"), "--random",
            ]  # fmt: skip
            attested = {
                protocol: _median(
                    [*cli, "predict", f"127.0.0.1:{replica[port]}", "--protocol", protocol, *attest],
                    args.runs,
                    must_show="attested: simulated enclave mr_enclave",
                )
                for protocol, port in (("grpc", "grpc_port"), ("rest", "rest_port"))
            }
        finally:
            subprocess.run([*cli, "down", "--workspace", str(ws)], capture_output=True, check=False, env=_ENV)
    print(f"\nwhole process, median of {args.runs} runs ({args.tf_runs} for import tensorflow)")
    print(f"{'':<62}{'wall s':>8}{'- python':>10}{'/ tf':>9}{'cpu s':>8}")
    _row("baseline: python -c pass", python, python, tf_import)
    _row("baseline: python -c 'import tensorflow'", tf_import, python, tf_import)
    for protocol, seconds in refused.items():
        _row(f"(a) confserve predict --protocol {protocol}, closed port (fails)", seconds, python, tf_import)
    for protocol, seconds in attested.items():
        _row(f"(b) confserve predict --protocol {protocol} --attest, 1 replica", seconds, python, tf_import)
    worst_a, worst_b = max(t.wall for t in refused.values()), max(t.wall for t in attested.values())
    print(
        f"targets: (a) <= {TARGET_SECONDS:.1f} s: {worst_a:.3f} s "
        f"{'met' if worst_a <= TARGET_SECONDS else 'MISSED'}; "
        f"(b) <= {TARGET_SECONDS:.1f} s: {worst_b:.3f} s {'met' if worst_b <= TARGET_SECONDS else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
