"""Load generators that cost the client as little as possible: each request is serialized once, before
the load, and sent as raw bytes, so what is measured is the server.

Two clients send the same bytes. `h2load` (nghttp2's load generator, written in C; Debian's
nghttp2-client, installed by scripts/bootstrap) is the default: at concurrency 1 a Python gRPC client
spends about as long per call as the server does (a round trip to a server that does nothing took
0.46 ms from Python and 0.27 ms from h2load on this machine), and at 16 its CPU is taken from the server's
two cores. h2load speaks plain HTTP/2 (gRPC's framing is the 5-byte prefix written here) and HTTP/1.1
(`--h1`, kept-alive connections); it checks no certificate and no gRPC status, so every run is checked
here: one probe call with the Python client gives the response, and the run counts as clean only when
h2load saw HTTP 2xx for every request and exactly as many DATA bytes as that many copies of the probe's
response (a gRPC error carries no DATA, a REST error a different body). Latencies come from its per-request
log.

The Python client: one channel per worker process, a raw unary call (bytes in, bytes out; no proto is
built or parsed per request). REST: one kept-alive HTTP/1.1 connection per thread, the same body every
time, status 200 checked. `concurrency` threads are spread over `processes` spawned worker processes
(the GIL would make a single client process the bottleneck); every worker warms up, then all start
together on a barrier and run for `seconds`. Used by bench/peer.py for both servers and by bench/serving.py.
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import os
import re
import shutil
import ssl
import statistics
import struct
import subprocess
import tempfile
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


def _channel(target: Target):  # type: ignore[no-untyped-def]
    import grpc

    options = [("grpc.max_receive_message_length", 64 << 20)]
    if target.ca_pem is None:
        return grpc.insecure_channel(f"127.0.0.1:{target.port}", options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates=target.ca_pem)
    options.append(("grpc.ssl_target_name_override", "localhost"))
    return grpc.secure_channel(f"127.0.0.1:{target.port}", credentials, options=options)


def _http_connection(target: Target) -> http.client.HTTPConnection:
    if target.ca_pem is None:
        return http.client.HTTPConnection("127.0.0.1", target.port, timeout=60)
    context = ssl.create_default_context(cadata=target.ca_pem.decode())
    return http.client.HTTPSConnection("localhost", target.port, timeout=60, context=context)


_REST_HEADERS = {"Content-Type": "application/json"}


def _grpc_caller(target: Target):  # type: ignore[no-untyped-def]
    call = _channel(target).unary_unary(target.path)

    def one() -> None:
        call(target.body, timeout=60)

    return one


def _rest_caller(target: Target):  # type: ignore[no-untyped-def]
    local = threading.local()

    def one() -> None:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = _http_connection(target)
        connection.request("POST", target.path, body=target.body, headers=_REST_HEADERS)
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


CLIENTS = ("h2load", "python")


def run(
    target: Target, *, concurrency: int, processes: int, seconds: float, client: str = "h2load"
) -> Result:
    """`concurrency` requests in flight for `seconds`. `processes`: the Python client's worker processes,
    or h2load's HTTP/2 connections (the streams in flight are spread over them)."""
    if client == "h2load":
        return _run_h2load(target, concurrency=concurrency, connections=processes, seconds=seconds)
    if client != "python":
        raise ValueError(f"unknown load client {client!r} (one of {', '.join(CLIENTS)})")
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


def _probe(target: Target) -> bytes:
    """One call with the Python client: the bytes every response of the run must carry as DATA."""
    if target.kind == "grpc":
        import grpc

        channel = _channel(target)
        try:
            message = channel.unary_unary(target.path)(target.body, timeout=60)
        except grpc.RpcError as exc:
            raise RuntimeError(f"probe: {exc.code()}: {exc.details()}") from None
        finally:
            channel.close()
        return _grpc_frame(message)
    connection = _http_connection(target)
    try:
        connection.request("POST", target.path, body=target.body, headers=_REST_HEADERS)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"probe: HTTP {response.status}: {body[:200]!r}")
    return body


def _grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: flag byte 0 (not compressed), 4-byte big-endian length, the bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


_H2LOAD_COUNTS = re.compile(r"requests: (\d+) total, (\d+) started, \d+ done, (\d+) succeeded")
_H2LOAD_2XX = re.compile(r"status codes: (\d+) 2xx")
_H2LOAD_DATA = re.compile(r"traffic: .*\((\d+)\) data")


def _run_h2load(target: Target, *, concurrency: int, connections: int, seconds: float) -> Result:
    h2load = shutil.which("h2load")
    if h2load is None:
        raise SystemExit(
            "h2load not found: scripts/bootstrap installs it (Debian's nghttp2-client); "
            "or pass --client python"
        )
    expected = _probe(target)
    scheme = "http" if target.ca_pem is None else "https"
    if target.kind == "grpc":
        connections = max(1, min(connections, concurrency))
        shape = ["-c", str(connections), "-m", str(-(-concurrency // connections))]
        headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        body = _grpc_frame(target.body)
    else:  # HTTP/1.1: one request in flight per kept-alive connection
        shape = ["--h1", "-c", str(concurrency), "-m", "1"]
        headers = ["-H", "content-type: application/json"]
        body = target.body
    with tempfile.TemporaryDirectory() as tmp:
        body_path, log_path = os.path.join(tmp, "body"), os.path.join(tmp, "log")
        with open(body_path, "wb") as f:
            f.write(body)
        url = f"{scheme}://127.0.0.1:{target.port}{target.path}"
        command = [h2load, "-t", "1", *shape, *headers, "-d", body_path, url]
        # A warm-up run of its own: h2load's --warm-up-time leaves the warm-up's bytes in its DATA count.
        subprocess.run([*command, "--duration=1"], check=False, capture_output=True, timeout=120)
        command += [f"--duration={seconds:g}", f"--log-file={log_path}"]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=seconds + 120)
        with open(log_path) as f:
            log = [line.split() for line in f if line.strip()]
    report = done.stdout
    counts, ok, data = (p.search(report) for p in (_H2LOAD_COUNTS, _H2LOAD_2XX, _H2LOAD_DATA))
    if done.returncode != 0 or counts is None or ok is None or data is None:
        raise RuntimeError(f"h2load failed ({done.returncode}): {(done.stderr or report)[-400:]}")
    total, started, succeeded = int(counts[1]), int(counts[2]), int(counts[3])
    errors, first_error = total - int(ok[1]), ""
    # A response that arrives as the run ends is in the DATA count but not among the requests done.
    copies, rest = divmod(int(data[1]), len(expected))
    if errors:
        first_error = f"{errors} responses were not HTTP 2xx"
    elif rest or not succeeded <= copies <= started:
        errors = succeeded  # which ones is unknown; the run is not clean
        first_error = (
            f"{int(data[1])} bytes of DATA for {succeeded} responses of {len(expected)} bytes each: "
            "some responses differ from the probe's (an error, or a different answer)"
        )
    # Each row of the log: the request's start (microseconds since the epoch), its status, its duration (us).
    latencies = np.array([int(row[2]) / 1000 for row in log if row[1].startswith("2")])
    return Result(
        requests=succeeded,
        errors=errors,
        seconds=seconds,
        p50_ms=float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        p99_ms=float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
        first_error=first_error,
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
