"""A load generator for TF Serving endpoints (the reference's resnet_client_grpc.py -batch -cnum -loop).

`concurrency` requests are kept in flight by threads spread over `processes` worker processes (Python's
GIL makes one process the bottleneck well before a fast server is; several processes lift that ceiling).
Each worker has its own channel/connection. Workers draw request tickets from a shared counter until
`requests` were sent or `duration_seconds` passed, and report their latencies; the parent shows progress
and computes the percentiles.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from confserve.client._errors import ClientError
from confserve.client._predict import PredictClient, Protocol_
from confserve.client._tls import ClientTls

__all__ = ["LoadResult", "LoadSpec", "run_load"]


@dataclass(frozen=True)
class LoadSpec:
    target: str
    model: str
    inputs: dict[str, Any]  # numpy arrays, sent unchanged with every request
    protocol: Protocol_ = "grpc"
    tls: ClientTls | None = None
    signature_name: str = ""
    concurrency: int = 1
    processes: int = 1
    requests: int | None = 100
    duration_seconds: float | None = None
    timeout_seconds: float = 30.0
    warmup_requests: int = 2  # per worker thread, not counted: connection set-up and first-call costs


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    throughput_rps: float
    examples_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    first_error: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _worker(spec: LoadSpec, threads: int, counter: Any, stop_at: Any, barriers: Any, results: Any) -> None:
    client = PredictClient(
        spec.target, protocol=spec.protocol, tls=spec.tls, timeout_seconds=spec.timeout_seconds
    )
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def ticket() -> bool:
        if time.monotonic() >= stop_at.value:
            return False
        with counter.get_lock():
            if spec.requests is not None and counter.value >= spec.requests:
                return False
            counter.value += 1
            return True

    ready = threading.Barrier(threads)

    def run() -> None:
        for _ in range(spec.warmup_requests):
            try:
                client.predict(spec.model, spec.inputs, signature_name=spec.signature_name)
            except ClientError:
                break
        if ready.wait() == 0:  # one thread per process meets the other processes and the parent
            barriers[0].wait()
            barriers[1].wait()
        ready.wait()
        while ticket():
            start = time.perf_counter()
            try:
                client.predict(spec.model, spec.inputs, signature_name=spec.signature_name)
            except ClientError as e:
                with lock:
                    errors.append(str(e))
                continue
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    client.close()
    results.put((latencies, errors))


def run_load(spec: LoadSpec, *, progress: Callable[[int, int | None], None] | None = None) -> LoadResult:
    """Run the load and return its figures; `progress(done, total)` is called about five times a second."""
    if spec.concurrency < 1 or spec.processes < 1:
        raise ClientError("concurrency and processes must be at least 1")
    if spec.requests is None and spec.duration_seconds is None:
        raise ClientError("give a number of requests or a duration")
    processes = min(spec.processes, spec.concurrency)
    per_process = [
        spec.concurrency // processes + (1 if i < spec.concurrency % processes else 0)
        for i in range(processes)
    ]
    ctx = mp.get_context("spawn")  # no inherited threads or gRPC state in the workers
    counter = ctx.Value("q", 0)
    stop_at = ctx.Value("d", float("inf"))
    barriers = (ctx.Barrier(processes + 1), ctx.Barrier(processes + 1))  # all warmed up; go
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(spec, n, counter, stop_at, barriers, results), daemon=True)
        for n in per_process
    ]
    for w in workers:
        w.start()
    try:
        barriers[0].wait(timeout=120)  # workers import TensorFlow and warm up their connections
    except threading.BrokenBarrierError:
        for w in workers:
            w.kill()
        raise ClientError("load-generator workers did not start within 120 s") from None
    if spec.duration_seconds is not None:
        stop_at.value = time.monotonic() + spec.duration_seconds
    start = time.perf_counter()
    barriers[1].wait()
    collected: list[tuple[list[float], list[str]]] = []
    while len(collected) < len(workers):
        try:
            collected.append(results.get(timeout=0.2))
        except queue.Empty:
            if not any(w.is_alive() for w in workers) and results.empty():
                break
        if progress is not None:
            progress(int(counter.value), spec.requests)
    seconds = time.perf_counter() - start
    for w in workers:
        w.join(timeout=5)
    if len(collected) < len(workers):
        raise ClientError("a load-generator worker process died; see its error above")
    latencies = np.array([x for lat, _ in collected for x in lat]) * 1000.0
    errors = [e for _, errs in collected for e in errs]
    done = len(latencies)
    batch = int(next(iter(spec.inputs.values())).shape[0]) if spec.inputs else 1

    def pct(q: float) -> float:
        return float(np.percentile(latencies, q)) if done else float("nan")

    return LoadResult(
        requests=done,
        errors=len(errors),
        seconds=seconds,
        throughput_rps=done / seconds if seconds else 0.0,
        examples_per_second=done * batch / seconds if seconds else 0.0,
        p50_ms=pct(50),
        p90_ms=pct(90),
        p99_ms=pct(99),
        max_ms=float(latencies.max()) if done else float("nan"),
        first_error=errors[0] if errors else None,
    )
