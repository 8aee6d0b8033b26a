"""Secret-provisioning benchmark: attested key releases per second and latency, on this machine.

Run: .venv/bin/python bench/provisioning.py [--seconds S] [--levels 1,8,32] [--client-processes N]

The server runs in its own process (as in production: full RA-TLS + DCAP verification, policy, hash-chained
audit log with fsync, TLS 1.3); the simulated enclaves are threads spread over `--client-processes`
processes (default 2, one per core here), so clients and server compete for the same cores. Two client modes:

* `fresh`: what Gramine does, and what `SecretProvisioningClient` does: every session makes a new RA-TLS
  key and certificate (P-384, TCG DICE format: two simulated quotes) right before the handshake;
* `reused`: each simulated enclave makes its credentials once and reuses them, so the figure shows what the
  server sustains when client key generation is not on the same cores.

Targets (issue 4): >= 100 releases/s with verification included; p99 <= 100 ms at 8 concurrent clients.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from confserve.attestation import (
    AllowRule,
    EnclaveIdentity,
    Policy,
    RaTlsFormat,
    SimPlatform,
    SimulatedAttester,
    create_ratls_credentials,
    verify,
    verify_ratls_certificate,
)
from confserve.owner import key_service_pki
from confserve.provisioning import (
    ClientConnection,
    ClientSettings,
    Granted,
    SecretProvisioningClient,
    SecretProvisioningServer,
    SecretStore,
    ServerLimits,
    ServerSettings,
    collateral_from_sim_platform,
    load_ca_certificates,
    load_certificate_chain,
    load_private_key,
    trust_for_sim_platform,
)
from confserve.provisioning._tls import TlsChannel, client_context

IDENTITY = EnclaveIdentity(mr_enclave=b"\x11" * 32, mr_signer=b"\x22" * 32, isv_prod_id=1, isv_svn=1)
KEY = bytes(range(16))


def _serve(work: str, ready: Any, stop: Event) -> None:
    base = Path(work)
    policy = Policy(rules=(AllowRule(name="bench", mr_enclave=IDENTITY.mr_enclave),), allow_simulated=True)
    store = SecretStore({"default": KEY})
    settings = ServerSettings(
        certificate_chain=tuple(load_certificate_chain(str(base / "server.crt"))),
        private_key=load_private_key(str(base / "server.key")),
        policy=lambda: policy,
        secrets=lambda: store,
        collateral=collateral_from_sim_platform(base / "plat"),
        trust=trust_for_sim_platform(base / "plat"),
        listen_port=0,
        audit_log=base / "audit.log",
        limits=ServerLimits(rate_limit_per_second=0),
    )
    server = SecretProvisioningServer(settings)
    server.start()
    ready.send(server.address[1])
    stop.wait()
    server.stop()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _session_for(
    mode: str, base: Path, port: int, attester: SimulatedAttester, count: int
) -> Callable[[int], None]:
    if mode == "fresh":
        settings = ClientSettings.from_files(f"localhost:{port}", base / "ca.crt", deadline_seconds=30)

        def fresh(_index: int) -> None:
            got = SecretProvisioningClient(settings, attester).request(["default"])
            assert got == {"default": KEY}

        return fresh
    ca_certs = tuple(load_ca_certificates(str(base / "ca.crt")))
    creds = [create_ratls_credentials(attester, RaTlsFormat.TCG_DICE) for _ in range(count)]
    contexts = [client_context(ca_certs, c.certificate, c.private_key) for c in creds]

    def reused(index: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            channel = TlsChannel(sock, contexts[index], server_side=False, server_hostname="localhost")
            deadline = time.monotonic() + 10
            channel.handshake(deadline)
            protocol = ClientConnection(["default"])
            channel.sendall(protocol.request_bytes(), deadline)
            outcome = None
            while outcome is None:
                data = channel.recv(deadline)
                outcome = protocol.receive_data(data) if data else protocol.end_of_data()
            assert isinstance(outcome, Granted)
        finally:
            sock.close()

    return reused


def _client_process(
    work: str, port: int, mode: str, threads: int, start_at: float, seconds: float
) -> tuple[list[float], int]:
    """One client process: `threads` simulated enclaves releasing keys from start_at for `seconds`."""
    base = Path(work)
    attester = SimulatedAttester(SimPlatform.load(base / "plat"), IDENTITY)
    session = _session_for(mode, base, port, attester, threads)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    end_at = start_at + seconds

    def worker(index: int) -> None:
        local: list[float] = []
        threading.Event().wait(max(0.0, start_at - time.time()))  # start together across processes
        while time.time() < end_at:
            t0 = time.perf_counter()
            try:
                session(index)
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies, errors[0]


def run_level(
    pool: Any, work: str, port: int, mode: str, concurrency: int, processes: int, seconds: float
) -> tuple[float, float, float, int]:
    procs = min(processes, concurrency)
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    start_at = time.time() + 1.0  # time for every process to get ready
    results = pool.starmap(_client_process, [(work, port, mode, n, start_at, seconds) for n in shares])
    latencies = [x for lat, _ in results for x in lat]
    errors = sum(err for _, err in results)
    if not latencies:
        return 0.0, 0.0, 0.0, errors
    return len(latencies) / seconds, statistics.median(latencies), _percentile(latencies, 0.99), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per concurrency level and mode")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--client-processes", type=int, default=2, help="processes the enclaves run in")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    with tempfile.TemporaryDirectory() as work:
        base = Path(work)
        platform = SimPlatform.init(base / "plat", now=int(time.time()))
        ca_pem, cert_pem, key_pem = key_service_pki(
            ("localhost", "127.0.0.1"), datetime.datetime.now(datetime.UTC)
        )
        (base / "ca.crt").write_bytes(ca_pem)
        (base / "server.crt").write_bytes(cert_pem)
        (base / "server.key").write_bytes(key_pem)
        os.chmod(base / "server.key", 0o600)

        attester = SimulatedAttester(platform, IDENTITY)
        print(
            f"machine: {os.cpu_count()} cores; server in its own process, simulated enclaves as threads "
            f"of {args.client_processes} client processes"
        )
        print("\nper-session client and server costs (single thread, median of 20):")
        for fmt in (RaTlsFormat.TCG_DICE, RaTlsFormat.LEGACY_EC, RaTlsFormat.LEGACY_RSA):
            samples = []
            for _ in range(20 if fmt is not RaTlsFormat.LEGACY_RSA else 8):
                t0 = time.perf_counter()
                create_ratls_credentials(attester, fmt)
                samples.append(time.perf_counter() - t0)
            print(f"  RA-TLS key + certificate, {fmt.value:12s} {statistics.median(samples) * 1000:7.2f} ms")
        creds = create_ratls_credentials(attester, RaTlsFormat.TCG_DICE)
        collateral = platform.collateral
        trust = trust_for_sim_platform(base / "plat")
        now = int(time.time())
        der = creds.certificate_der()
        samples = []
        for _ in range(20):
            t0 = time.perf_counter()
            verify_ratls_certificate(der, lambda q: verify(q, collateral, trust, now))
            samples.append(time.perf_counter() - t0)
        print(f"  server: verify RA-TLS certificate (DCAP) {statistics.median(samples) * 1000:7.2f} ms")

        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        stop = ctx.Event()
        server = ctx.Process(target=_serve, args=(work, send, stop), daemon=True)
        server.start()
        port = int(receive.recv())
        print(f"\nkey releases (full attestation, audit log with fsync), {args.seconds:.0f} s per row:")
        print(
            f"  {'mode':7s} {'clients':>7s} {'releases/s':>11s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s}"
        )
        try:
            with ctx.Pool(args.client_processes) as pool:
                for mode in ("fresh", "reused"):
                    for level in levels:
                        rate, p50, p99, errors = run_level(
                            pool, work, port, mode, level, args.client_processes, args.seconds
                        )
                        row = f"{rate:11.1f} {p50 * 1000:8.1f} {p99 * 1000:8.1f} {errors:6d}"
                        print(f"  {mode:7s} {level:7d} {row}")
        finally:
            stop.set()
            server.join(timeout=30)


if __name__ == "__main__":
    main()
