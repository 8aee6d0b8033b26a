"""Key service under an idle-connection flood: do enclaves still get their keys, and how fast?

Run: .venv/bin/python bench/provisioning_flood.py [--seconds 60] [--addresses 3] [--rate 18] [--requests 20]

Issue 13, F3: idle TCP connections from 3 source addresses, each under the per-address rate limit (18/s
against 20/s), used to hold all 256 workers before any authentication, so enclaves were closed unread.
The target: while 3 addresses each open 18 idle connections per second for 60 s, 20 of 20 enclave requests
get their key, p99 <= 1 s.

Everything runs on loopback (127.0.0.0/8 is all loopback on Linux, so the flood binds 127.0.0.2, .3, ...):

* the key service in its own process, with the default `ServerLimits` (rate limit included), the full
  RA-TLS + DCAP verification, a policy and an fsync'd audit log; its log goes to a file, counted at the end;
* the flood in another process: each address opens `--rate` connections per second, never sends a byte,
  and holds each until the server closes it (EOF or reset), then closes its end;
* the enclaves: simulated, in this process, one `SecretProvisioningClient.request` at a time (a fresh
  RA-TLS key per request, as Gramine makes), from 127.0.0.1, each with a 10 s deadline. First the baseline:
  the same number of requests without a flood (after one warm-up request, not counted); then during the
  flood, spread evenly from 2 s after its start (when every flooding address has filled its share of the
  pre-authentication stage) to its end.

Figures are printed, never asserted; the ratio is against the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import selectors
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from confserve.attestation import AllowRule, EnclaveIdentity, Policy, SimPlatform, SimulatedAttester
from confserve.provisioning import (
    ClientSettings,
    SecretProvisioningClient,
    SecretProvisioningServer,
    SecretStore,
    ServerLimits,
    ServerSettings,
    collateral_from_sim_platform,
    load_certificate_chain,
    load_private_key,
    trust_for_sim_platform,
)

IDENTITY = EnclaveIdentity(mr_enclave=b"\x11" * 32, mr_signer=b"\x22" * 32, isv_prod_id=1, isv_svn=1)
KEY = bytes(range(16))
MAX_SECONDS = 600  # the flood's duration is bounded
REQUEST_DEADLINE_SECONDS = 10.0
WARM_UP_SECONDS = 2.0  # the flood fills each address's share of the stage in 32 / 18 = 1.8 s
GAUGES = ("pending_connections", "active_connections", "waiting_connections")


# -- the key service (its own process) -----------------------------------------------------------------


def _metrics(server: SecretProvisioningServer) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in server.registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            name = sample.name.removeprefix("confserve_secret_prov_")
            values[f"{name}{{{labels}}}" if labels else name] = sample.value
    return values


def _serve(work: str, ready: Any, stop: Any, results: Any) -> None:
    base = Path(work)
    handler = logging.FileHandler(base / "server.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    policy = Policy(rules=(AllowRule(name="bench", mr_enclave=IDENTITY.mr_enclave),), allow_simulated=True)
    store = SecretStore({"default": KEY})
    settings = ServerSettings(
        certificate_chain=tuple(load_certificate_chain(str(base / "server.pem"))),
        private_key=load_private_key(str(base / "server.key")),
        policy=lambda: policy,
        secrets=lambda: store,
        collateral=collateral_from_sim_platform(base / "plat"),
        trust=trust_for_sim_platform(base / "plat"),
        listen_port=0,
        audit_log=base / "audit.log",
    )
    server = SecretProvisioningServer(settings)
    server.start()
    ready.send(server.address[1])
    peaks = dict.fromkeys(GAUGES, 0.0)
    while not stop.wait(0.1):  # sample the gauges for their peaks
        values = _metrics(server)
        for gauge in GAUGES:
            peaks[gauge] = max(peaks[gauge], values.get(gauge, 0.0))
    server.stop()
    handler.close()
    log_lines = len((base / "server.log").read_text().splitlines())
    audit_lines = len((base / "audit.log").read_text().splitlines())
    results.send(
        {"metrics": _metrics(server), "peaks": peaks, "log_lines": log_lines, "audit_lines": audit_lines}
    )


# -- the flood (its own process) ------------------------------------------------------------------------


@dataclass
class FloodStats:
    opened: int = 0
    connect_failed: int = 0
    closed_within_1s: int = 0  # closed by the server at once (over a limit)
    closed_later: int = 0  # closed by the server after a while (its handshake deadline)
    held_at_end: int = 0
    held_peak: int = 0


def _flood(port: int, sources: list[str], rate: float, seconds: float, start_at: float) -> FloodStats:
    stats = FloodStats()
    selector = selectors.DefaultSelector()
    opened_at: dict[socket.socket, float] = {}
    interval = 1.0 / rate
    schedule = [(start_at + i * interval, source) for i in range(int(seconds * rate)) for source in sources]
    schedule.sort()
    index = 0
    end_at = start_at + seconds
    while True:
        now = time.monotonic()
        while index < len(schedule) and schedule[index][0] <= now:
            source = schedule[index][1]
            index += 1
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0))
            except OSError:
                stats.connect_failed += 1
                continue
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            opened_at[sock] = now
            stats.opened += 1
        stats.held_peak = max(stats.held_peak, len(opened_at))
        if now >= end_at and index >= len(schedule):
            break
        wait = (schedule[index][0] if index < len(schedule) else end_at) - time.monotonic()
        for key, _ in selector.select(max(0.0, min(wait, 0.1))):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                continue  # a TLS alert: wait for the close
            held = time.monotonic() - opened_at.pop(sock)
            if held < 1.0:
                stats.closed_within_1s += 1
            else:
                stats.closed_later += 1
            selector.unregister(sock)
            sock.close()
    stats.held_at_end = len(opened_at)
    for sock in opened_at:
        sock.close()
    selector.close()
    return stats


# -- the enclaves (this process) ------------------------------------------------------------------------


@dataclass
class Requests:
    latencies: list[float]
    failures: list[str]

    def row(self, label: str, total: int) -> str:
        lat = sorted(self.latencies)
        if not lat:
            return f"  {label:22s} {total:8d} {0:8d}"
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        return (
            f"  {label:22s} {total:8d} {len(lat):8d} {statistics.median(lat) * 1000:8.1f} "
            f"{p99 * 1000:8.1f} {lat[-1] * 1000:8.1f}"
        )

    @property
    def p99(self) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] if lat else float("inf")


def _request(client: SecretProvisioningClient, out: Requests) -> None:
    started = time.perf_counter()
    try:
        got = client.request(["default"])
    except Exception as exc:  # a failure is a figure here, not a crash
        out.failures.append(f"{type(exc).__name__}: {exc}")
        return
    elapsed = time.perf_counter() - started
    if got == {"default": KEY}:
        out.latencies.append(elapsed)
    else:
        out.failures.append("wrong secret")


def _client(base: Path, port: int) -> SecretProvisioningClient:
    settings = ClientSettings.from_files(
        f"localhost:{port}", base / "ca.pem", deadline_seconds=REQUEST_DEADLINE_SECONDS
    )
    return SecretProvisioningClient(settings, SimulatedAttester(SimPlatform.load(base / "plat"), IDENTITY))


def main() -> None:  # noqa: PLR0915 - one linear script: set up, measure, print
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help=f"flood duration, 5..{MAX_SECONDS}")
    parser.add_argument("--addresses", type=int, default=3, help="flooding source addresses, 1..16")
    parser.add_argument("--rate", type=float, default=18.0, help="idle connections per address per second")
    parser.add_argument("--requests", type=int, default=20, help="enclave requests per phase, 1..200")
    args = parser.parse_args()
    if not 5 <= args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be within 5..{MAX_SECONDS}")
    if not 1 <= args.addresses <= 16 or not 0 < args.rate <= 100 or not 1 <= args.requests <= 200:
        parser.error("--addresses 1..16, --rate (0, 100], --requests 1..200")
    sources = [f"127.0.0.{2 + i}" for i in range(args.addresses)]
    with tempfile.TemporaryDirectory() as work:
        base = Path(work)
        SimPlatform.init(base / "plat", now=int(time.time()))
        ca = trustme.CA()
        issued = ca.issue_cert("localhost", "127.0.0.1")
        ca.cert_pem.write_to_path(str(base / "ca.pem"))
        (base / "server.pem").write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(base / "server.key"))
        os.chmod(base / "server.key", 0o600)

        limits = ServerLimits()
        print(
            f"machine: {os.cpu_count()} cores; key service in its own process with the default limits "
            f"({limits.max_connections} workers, {limits.max_pending_connections} pre-authentication slots, "
            f"{limits.max_pending_per_address} per address, {limits.rate_limit_per_second:g}/s burst "
            f"{limits.rate_limit_burst} per address, handshake deadline "
            f"{limits.handshake_timeout_seconds:g} s)"
        )
        print(
            f"flood: {args.addresses} addresses x {args.rate:g} idle connections/s for {args.seconds:g} s "
            f"({int(args.addresses * args.rate * args.seconds)} connections); enclaves from 127.0.0.1, "
            f"{args.requests} requests per phase, deadline {REQUEST_DEADLINE_SECONDS:g} s each"
        )
        ctx = multiprocessing.get_context("spawn")
        ready_r, ready_w = ctx.Pipe(duplex=False)
        results_r, results_w = ctx.Pipe(duplex=False)
        stop = ctx.Event()
        server = ctx.Process(target=_serve, args=(work, ready_w, stop, results_w), daemon=True)
        server.start()
        try:
            port = int(ready_r.recv())
            client = _client(base, port)
            _request(client, Requests([], []))  # warm-up, not counted
            baseline = Requests([], [])
            for _ in range(args.requests):
                _request(client, baseline)

            flood_result: list[FloodStats] = []
            with ctx.Pool(1) as pool:
                start_at = time.monotonic() + 1.0  # monotonic is system-wide on Linux
                pending = pool.apply_async(_flood, (port, sources, args.rate, args.seconds, start_at))
                during = Requests([], [])
                span = args.seconds - WARM_UP_SECONDS
                for i in range(args.requests):
                    at = start_at + WARM_UP_SECONDS + span * i / args.requests
                    threading.Event().wait(max(0.0, at - time.monotonic()))
                    _request(client, during)
                flood_result.append(pending.get(timeout=args.seconds + 60))
            stats = flood_result[0]
        finally:
            stop.set()
        if not results_r.poll(120):
            raise SystemExit("the key service process did not report (see its log above)")
        report = results_r.recv()
        server.join(timeout=60)

    print(f"\n  {'phase':22s} {'requests':>8s} {'released':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    print(baseline.row("baseline (no flood)", args.requests))
    print(during.row("during the flood", args.requests))
    for failure in (baseline.failures + during.failures)[:5]:
        print(f"    failure: {failure}")
    if baseline.latencies and during.latencies:
        print(f"  p99 during the flood / baseline p99: {during.p99 / baseline.p99:.2f}x")
    met = len(during.latencies) == args.requests and during.p99 <= 1.0
    verdict = "met" if met else "NOT met"
    print(f"  target ({args.requests} of {args.requests} released, p99 <= 1000 ms): {verdict}")

    print(
        f"\nflood: {stats.opened} connections opened ({stats.connect_failed} connects failed); closed by the "
        f"server within 1 s: {stats.closed_within_1s}, later (handshake deadline): {stats.closed_later}; "
        f"held at most {stats.held_peak} at once, {stats.held_at_end} at the end"
    )
    metrics = report["metrics"]
    rejected = {k: int(v) for k, v in metrics.items() if k.startswith("connections_rejected_total{")}
    failed = {k: int(v) for k, v in metrics.items() if k.startswith("handshake_failures_total{")}
    releases = int(sum(v for k, v in metrics.items() if k.startswith("releases_total{")))
    print(f"server: {releases} releases; rejected {rejected or 0}; handshake failures {failed or 0}")
    peaks = report["peaks"]
    print(
        f"server peaks (sampled every 0.1 s): {peaks['pending_connections']:.0f} connections before "
        f"authentication, {peaks['active_connections']:.0f} with workers, "
        f"{peaks['waiting_connections']:.0f} waiting for one"
    )
    refused = sum(rejected.values()) + sum(failed.values())
    print(
        f"logs: {report['log_lines']} server log lines and {report['audit_lines']} audit log lines for "
        f"{refused} refused connections and {releases} releases"
    )


if __name__ == "__main__":
    main()
