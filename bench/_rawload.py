"""A load generator that costs the client as little as possible: each request is serialized once, before
the load, and sent as raw bytes, so what is measured is the server.

gRPC: one channel per worker process, a raw unary call (bytes in, bytes out; no proto is built or parsed
per request). REST: one kept-alive HTTP/1.1 connection per thread, the same body every time, status 200
checked. `concurrency` threads are spread over `processes` spawned worker processes (the GIL would make a
single client process the bottleneck); every worker warms up, then all start together on a barrier and
run for `seconds`. Used by bench/peer.py for both servers and by bench/serving.py.
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import ssl
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Target:
    """What to send: `kind` "grpc" (`path` is the full method name) or "rest" (`path` is the URL path)."""

    kind: str
    port: int
    path: str
    body: bytes
    ca_pem: bytes | None = None  # TLS when given; the certificate's name must be "localhost"


@dataclass(frozen=True)
class Result:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    first_error: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def _grpc_caller(target: Target):  # type: ignore[no-untyped-def]
    import grpc

    options = [("grpc.max_receive_message_length", 64 << 20)]
    if target.ca_pem is None:
        channel = grpc.insecure_channel(f"127.0.0.1:{target.port}", options=options)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=target.ca_pem)
        options.append(("grpc.ssl_target_name_override", "localhost"))
        channel = grpc.secure_channel(f"127.0.0.1:{target.port}", credentials, options=options)
    call = channel.unary_unary(target.path)

    def one() -> None:
        call(target.body, timeout=60)

    return one


def _rest_caller(target: Target):  # type: ignore[no-untyped-def]
    local = threading.local()
    headers = {"Content-Type": "application/json"}
    context = None
    if target.ca_pem is not None:
        context = ssl.create_default_context(cadata=target.ca_pem.decode())

    def one() -> None:
        connection = getattr(local, "connection", None)
        if connection is None:
            if context is None:
                connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=60)
            else:
                connection = http.client.HTTPSConnection(
                    "localhost", target.port, timeout=60, context=context
                )
            local.connection = connection
        connection.request("POST", target.path, body=target.body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")

    return one


def _worker(target: Target, threads: int, seconds: float, barrier, results) -> None:  # type: ignore[no-untyped-def]
    caller = _grpc_caller(target) if target.kind == "grpc" else None
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(threads + 1)
    go = threading.Event()
    stop = [0.0]

    def run() -> None:
        one = caller if caller is not None else _rest_caller(target)
        for _ in range(5):
            try:
                one()
            except Exception as exc:  # counted below as well
                errors.append(f"warm-up: {exc}")
        ready.wait()
        go.wait()
        mine = []
        while True:
            start = time.perf_counter()
            if start >= stop[0]:
                break
            try:
                one()
            except Exception as exc:
                with lock:
                    errors.append(str(exc)[:300])
                continue
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    ready.wait()  # every thread warmed up
    barrier.wait()  # every process too
    stop[0] = time.perf_counter() + seconds
    go.set()
    for thread in pool:
        thread.join()
    results.put((latencies, errors))


def run(target: Target, *, concurrency: int, processes: int, seconds: float) -> Result:
    processes = min(processes, concurrency)
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(target, n, seconds, barrier, results)) for n in shares]
    for worker in workers:
        worker.start()
    barrier.wait(timeout=120)
    collected = [results.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join(10)
    latencies = np.array([x for lat, _ in collected for x in lat]) * 1000
    errors = [e for _, errs in collected for e in errs]
    return Result(
        requests=len(latencies),
        errors=len(errors),
        seconds=seconds,  # each thread sends requests for exactly this long after the common start
        p50_ms=float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        p99_ms=float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
        first_error=errors[0] if errors else "",
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
