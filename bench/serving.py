"""Model-server throughput, latency and start-up, against the SavedModel signature called in-process.

Baseline, measured in the same run and the same process as the server: `tf.saved_model.load` + a call of
`serving_default`, numpy in and out. The server is confserve's ModelServer on loopback (gRPC and REST over
one-way TLS, encrypted models read through ProtectedOpener, default settings). The load comes from
bench/_rawload.py (each request serialized once and sent as raw bytes, kept-alive HTTPS connections;
h2load, a load generator in C, unless `--client python`), which shares this machine's cores with the
server, as a client on the same host would; the same generator drives bench/peer.py. Every phase runs
for a fixed time.

- ResNet-50 (reference signature, random weights), batch 1: gRPC+TLS at concurrency 1 vs in-process,
  in alternating rounds (baseline, served, baseline, served, ...) so that other work on a shared machine
  hits both sides alike; the ratio is the median of the per-round ratios (target >= 0.97x). Concurrency
  16 without and with server-side batching (target with batching >= 1.3x the batch-1 baseline). Beside
  them, the same signature called in-process on a batch of 16, in images/s: what TensorFlow itself gains
  from batching on this machine, the ceiling of what server-side batching can reach.
- Small models, the digits CNN and TF Serving's half-plus-two: added p50 latency over the in-process call
  (target <= 0.5 ms for digits) and requests/s at concurrency 1 and 16, gRPC and REST (targets for
  digits: gRPC c=16 >= 1.0x the in-process call rate; REST >= 0.6x gRPC; REST p99 <= 4x p50 at c=16);
  digits at c=16 once more with server-side (adaptive) batching. Beside them, the gRPC+TLS floor: the
  health service's Check (no model, no inference) at concurrency 1 and 16, the most calls/s the gRPC
  front end reaches on this machine with the load generator beside it.
- Memory: the process's resident memory after loading and its peak.
- Start-up: ModelServer construction -> models loaded and ports open, ResNet-50 encrypted
  (ProtectedOpener) vs plain (PlainOpener), alternating, best and median (target <= 1 s extra).

Usage: .venv/bin/python bench/serving.py [--quick] [--seconds S] [--rounds N] [--client h2load|python]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import _rawload as load

SMALL = {c.SMALL_MODEL: c.small_inputs, c.TINY_MODEL: c.tiny_inputs}


@dataclass(frozen=True)
class Options:
    resnet_seconds: float
    small_seconds: float
    rounds: int
    startup_reps: int
    c16_processes: int
    client: str


@dataclass
class Results:
    resnet_rounds: list[tuple[c.InProcess, load.Result]] = field(default_factory=list)
    resnet_c16: Any = None
    resnet_c16_batched: Any = None
    resnet_batch16: Any = None  # c.InProcess: calls of a 16-image batch
    batching: Any = None
    small_base: dict[str, list[c.InProcess]] = field(default_factory=dict)
    small: dict[tuple[str, str, int], load.Result] = field(default_factory=dict)
    small_batched: Any = None
    small_batching: Any = None
    grpc_floor: dict[int, load.Result] = field(default_factory=dict)
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)
    startup: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "encrypted": []})
    read_seconds: dict[str, float] = field(default_factory=dict)


def _load(opts: Options, port: int, model: str, inputs: Any, tls: c.Tls, protocol: str, conc: int,
          seconds: float) -> load.Result:  # fmt: skip
    return _run(opts, c.raw_target(port, model, inputs, tls.client, protocol), conc, seconds)


def _run(opts: Options, target: Any, conc: int, seconds: float) -> load.Result:
    result = load.run(
        target,
        concurrency=conc,
        processes=1 if conc == 1 else opts.c16_processes,
        seconds=seconds,
        client=opts.client,
    )
    if result.errors:
        print(f"  !! {result.errors} errors, first: {result.first_error}")
    return result


def measure_serving(
    opts: Options, tls: c.Tls, key: Any, plain: dict[str, Path], enc: dict[str, Path], out: Results
) -> None:
    resnet_base = c.Baseline(plain[c.RESNET_MODEL] / "1", c.resnet_inputs())
    small_base = {name: c.Baseline(plain[name] / "1", inputs()) for name, inputs in SMALL.items()}
    out.memory["in-process baselines loaded"] = c.rss_mib()
    with c.model_server(enc, tls, key=key) as server:
        out.memory["+ server with the three models"] = c.rss_mib()
        grpc_port, rest_port = server.grpc.port, server.rest.port
        for i in range(opts.rounds):
            print(f"ResNet-50 round {i + 1}/{opts.rounds}: in-process, then gRPC+TLS c=1 ...", flush=True)
            base = resnet_base.measure(opts.resnet_seconds)
            served = _load(
                opts, grpc_port, c.RESNET_MODEL, c.resnet_inputs(), tls, "grpc", 1, opts.resnet_seconds
            )
            out.resnet_rounds.append((base, served))
        print("ResNet-50: in-process, a batch of 16 ...", flush=True)
        out.resnet_batch16 = resnet_base.with_inputs(c.resnet_inputs(16)).measure(opts.resnet_seconds)
        print("ResNet-50: gRPC+TLS c=16 ...", flush=True)
        out.resnet_c16 = _load(
            opts, grpc_port, c.RESNET_MODEL, c.resnet_inputs(), tls, "grpc", 16, opts.resnet_seconds
        )
        for concurrency in (1, 16):
            print(f"gRPC+TLS floor: health Check c={concurrency} ...", flush=True)
            floor = c.health_target(grpc_port, tls.client)
            out.grpc_floor[concurrency] = _run(opts, floor, concurrency, opts.small_seconds)
        for name, inputs in SMALL.items():
            out.small_base.setdefault(name, []).append(small_base[name].measure(opts.small_seconds))
            for protocol, port in (("grpc", grpc_port), ("rest", rest_port)):
                for concurrency in (1, 16):
                    print(f"{name}: {protocol} c={concurrency} ...", flush=True)
                    out.small[name, protocol, concurrency] = _load(
                        opts, port, name, inputs(), tls, protocol, concurrency, opts.small_seconds
                    )
            out.small_base[name].append(small_base[name].measure(opts.small_seconds))
        out.memory["after the loads"] = c.rss_mib()
    measure_batched(opts, tls, key, enc, out)


def measure_batched(opts: Options, tls: c.Tls, key: Any, enc: dict[str, Path], out: Results) -> None:
    """ResNet-50 and digits at concurrency 16 with server-side batching (adaptive closing)."""
    from confserve.serving.batching import BatchingSettings

    # 16: the concurrency, so one batch can take every request in flight; 2 ms: the wait for companions
    # is small beside a ResNet-50 call (~30 ms); num_batch_threads stays TF Serving's default (cores).
    out.batching = BatchingSettings(max_batch_size=16, batch_timeout_micros=2000)
    with c.model_server({c.RESNET_MODEL: enc[c.RESNET_MODEL]}, tls, key=key, rest=False,
                        batching=out.batching) as server:  # fmt: skip
        print("ResNet-50: gRPC+TLS c=16 with server-side batching ...", flush=True)
        out.resnet_c16_batched = _load(
            opts, server.grpc.port, c.RESNET_MODEL, c.resnet_inputs(), tls, "grpc", 16, opts.resnet_seconds
        )
    # A small model: the wait is a fraction of a millisecond, adaptive closing runs a batch at once when
    # every request in flight has joined.
    out.small_batching = BatchingSettings(max_batch_size=16, batch_timeout_micros=500)
    with c.model_server({c.SMALL_MODEL: enc[c.SMALL_MODEL]}, tls, key=key, rest=False,
                        batching=out.small_batching) as server:  # fmt: skip
        print("digits: gRPC+TLS c=16 with server-side batching ...", flush=True)
        out.small_batched = _load(
            opts, server.grpc.port, c.SMALL_MODEL, c.small_inputs(), tls, "grpc", 16, opts.small_seconds
        )


def _startup_seconds(models: dict[str, Path], tls: c.Tls, key: Any) -> float:
    start = time.perf_counter()
    with c.model_server(models, tls, key=key) as server:
        elapsed = time.perf_counter() - start
        if not server.store.manager.is_ready():
            raise RuntimeError(f"model not loaded: {server.store.manager.model_status(c.RESNET_MODEL)}")
    return elapsed


def _read_all_seconds(version_dir: Path, key: Any) -> float:
    """Only the file reads of one load: plain read, or decrypt + MAC check of every protected file."""
    from confserve.serving import PlainOpener, ProtectedOpener

    opener = PlainOpener() if key is None else ProtectedOpener(key)
    start = time.perf_counter()
    for rel in opener.list_files(str(version_dir)):
        opener.read_bytes(f"{version_dir}/{rel}")
    return time.perf_counter() - start


def measure_startup(opts: Options, tls: c.Tls, key: Any, plain: Path, enc: Path, out: Results) -> None:
    print(f"start-up: {opts.startup_reps} repetitions each, plain and encrypted, alternating ...", flush=True)
    plain_models, enc_models = {c.RESNET_MODEL: plain}, {c.RESNET_MODEL: enc}
    _startup_seconds(plain_models, tls, None)  # warm-up: first SavedModel load in this process
    for _ in range(opts.startup_reps):
        out.startup["plain"].append(_startup_seconds(plain_models, tls, None))
        out.startup["encrypted"].append(_startup_seconds(enc_models, tls, key))
    out.read_seconds["plain"] = min(_read_all_seconds(plain / "1", None) for _ in range(2))
    out.read_seconds["encrypted"] = min(_read_all_seconds(enc / "1", key) for _ in range(2))


def _row(label: str, rps: float, p50_ms: float, ratio: float | None = None, note: str = "") -> None:
    ratio_text = f"{ratio:>8.2f}x" if ratio is not None else f"{'':>9}"
    print(f"  {label:<44}{rps:>9.1f}{p50_ms:>10.2f}{ratio_text}  {note}".rstrip())


def _settings(b: Any) -> str:
    return (
        f"max_batch_size {b.max_batch_size}, batch_timeout_micros {b.batch_timeout_micros}, "
        f"num_batch_threads {b.num_batch_threads}, adaptive {b.adaptive}"
    )


def report(out: Results) -> None:
    print(f"\n{c.machine_line()}")
    print(f"  {'':<44}{'req/s':>9}{'p50 ms':>10}{'x base':>9}")
    report_resnet(out)
    report_small(out)
    report_memory_and_startup(out)


def report_resnet(out: Results) -> None:
    print("ResNet-50, batch 1 (224x224x3 float32, 602 KB per request)")
    ratios = []
    for i, (base, served) in enumerate(out.resnet_rounds, 1):
        ratio = served.rps / base.per_second
        ratios.append(ratio)
        _row(f"round {i}: baseline, in-process signature call", base.per_second, base.p50_ms, 1.0)
        _row(f"round {i}: gRPC+TLS, concurrency 1", served.rps, served.p50_ms, ratio)
    best_base = max(b.per_second for b, _ in out.resnet_rounds)
    best_served = max(s.rps for _, s in out.resnet_rounds)
    print(
        f"  gRPC+TLS c=1 / in-process: median of rounds {statistics.median(ratios):.2f}x, "
        f"best vs best {best_served / best_base:.2f}x (target >= 0.97x)"
    )
    r16 = out.resnet_c16
    _row(
        "gRPC+TLS, concurrency 16, no batching", r16.rps, r16.p50_ms, r16.rps / best_base, "vs best baseline"
    )
    rb = out.resnet_c16_batched
    _row("gRPC+TLS, concurrency 16, server-side batching", rb.rps, rb.p50_ms, rb.rps / best_base,
         "vs best baseline; target >= 1.3x")  # fmt: skip
    print(f"  batching: {_settings(out.batching)}")
    b16 = out.resnet_batch16
    images = 16 * b16.per_second
    _row("in-process, a batch of 16 (images/s)", images, b16.p50_ms, images / best_base,
         "TensorFlow's own gain from batching: the ceiling of server-side batching")  # fmt: skip
    print(f"  server-side batching reached {rb.rps / images:.2f}x of that ceiling")


def report_small(out: Results) -> None:
    print("gRPC+TLS floor: the health service's Check, no model and no inference")
    for concurrency, r in out.grpc_floor.items():
        _row(f"gRPC+TLS, concurrency {concurrency}", r.rps, r.p50_ms, None, f"p99 {r.p99_ms:.2f} ms")
    for name in SMALL:
        bases = out.small_base[name]
        base = max(bases, key=lambda b: b.per_second)
        runs = " / ".join(f"{b.per_second:.0f} req/s p50 {b.p50_ms:.3f} ms" for b in bases)
        shape = "1x8x8x1" if name == c.SMALL_MODEL else "1x1"
        print(f"{name} (input {shape} float32)")
        print(f"  (baseline before / after the load: {runs}; faster kept)")
        _row("baseline: in-process signature call", base.per_second, base.p50_ms, 1.0)
        for protocol in ("grpc", "rest"):
            for concurrency in (1, 16):
                r = out.small[name, protocol, concurrency]
                label = f"{'gRPC' if protocol == 'grpc' else 'REST'}+TLS, concurrency {concurrency}"
                _row(label, r.rps, r.p50_ms, r.rps / base.per_second, f"p99 {r.p99_ms:.2f} ms")
        added = out.small[name, "grpc", 1].p50_ms - min(b.p50_ms for b in bases)
        print(
            f"  added p50 latency over the in-process call, gRPC+TLS c=1: {added:.2f} ms "
            "(digits target <= 0.5)"
        )
        for concurrency in (1, 16):
            rest, grpc = out.small[name, "rest", concurrency], out.small[name, "grpc", concurrency]
            print(
                f"  c={concurrency}: REST / gRPC throughput {rest.rps / grpc.rps:.2f}x (target >= 0.6x); "
                f"REST p99 / p50 {rest.p99_ms / rest.p50_ms:.1f}x (target at c=16 <= 4x)"
            )
        if name == c.SMALL_MODEL and out.small_batched is not None:
            sb = out.small_batched
            ratio = sb.rps / base.per_second
            _row(
                "gRPC+TLS, concurrency 16, server-side batching",
                sb.rps,
                sb.p50_ms,
                ratio,
                f"p99 {sb.p99_ms:.2f} ms",
            )
            print(f"  batching: {_settings(out.small_batching)}")


def report_memory_and_startup(out: Results) -> None:
    print("Memory of this process (MiB: resident, peak)")
    for what, (resident, peak) in out.memory.items():
        print(f"  {what:<44}{resident:>9.0f}{peak:>10.0f}")

    startup = out.startup
    reps = len(startup["plain"])
    print(f"Start-up, ResNet-50: ModelServer construction -> loaded and listening ({reps} runs each)")
    best_p, best_e = min(startup["plain"]), min(startup["encrypted"])
    med_p, med_e = statistics.median(startup["plain"]), statistics.median(startup["encrypted"])
    print(f"  plain (PlainOpener)          best {best_p:6.2f} s  median {med_p:6.2f} s")
    print(f"  encrypted (ProtectedOpener)  best {best_e:6.2f} s  median {med_e:6.2f} s")
    print(
        f"  extra for encryption: best {best_e - best_p:+.2f} s, "
        f"median {med_e - med_p:+.2f} s (target <= 1 s)"
    )
    print(
        f"  of which file reads alone: plain {out.read_seconds['plain']:.2f} s, "
        f"decrypt+verify {out.read_seconds['encrypted']:.2f} s"
    )
    print("  (TensorFlow import, attestation and key release are outside this figure)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases, fewer rounds and repetitions")
    parser.add_argument("--seconds", type=float, help="each ResNet-50 phase (default 6, quick 4)")
    parser.add_argument("--small-seconds", type=float, help="each small-model phase (default 8, quick 3)")
    parser.add_argument("--rounds", type=int, help="ResNet-50 baseline/served rounds (default 4, quick 1)")
    parser.add_argument("--startup-reps", type=int, help="start-up repetitions each (default 4, quick 2)")
    parser.add_argument(
        "--c16-processes",
        type=int,
        default=2,
        help="at c=16: the Python client's processes, or h2load's connections (gRPC)",
    )
    parser.add_argument("--client", choices=load.CLIENTS, default="h2load", help="the load generator")
    args = parser.parse_args()
    opts = Options(
        resnet_seconds=args.seconds or (4.0 if args.quick else 6.0),
        small_seconds=args.small_seconds or (3.0 if args.quick else 8.0),
        rounds=args.rounds or (1 if args.quick else 4),
        startup_reps=args.startup_reps or (2 if args.quick else 4),
        c16_processes=args.c16_processes,
        client=args.client,
    )

    from confserve import pf

    print(f"{c.machine_line()}; load generator: {opts.client}", flush=True)
    key = pf.WrapKey(os.urandom(16))
    tls = c.make_tls()
    out = Results()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        plain = {
            c.RESNET_MODEL: c.build_resnet50(root / "plain"),
            c.SMALL_MODEL: c.build_small_model(root / "plain"),
            c.TINY_MODEL: c.build_half_plus_two(root / "plain"),
        }
        enc = {name: c.encrypt(base, root / "enc" / name, key) for name, base in plain.items()}
        size_mb = sum(f.stat().st_size for f in (plain[c.RESNET_MODEL] / "1").rglob("*") if f.is_file()) / 1e6
        print(f"models built and encrypted in {time.perf_counter() - t:.1f} s (ResNet-50 {size_mb:.0f} MB)")
        measure_serving(opts, tls, key, plain, enc, out)
        measure_startup(opts, tls, key, plain[c.RESNET_MODEL], enc[c.RESNET_MODEL], out)
    report(out)


if __name__ == "__main__":
    main()
