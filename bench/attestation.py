"""Attestation benchmarks: simulated quote generation and full DCAP verification (quote + collateral).

Run: .venv/bin/python bench/attestation.py [--seconds S]
Target (project brief): one full verification <= 2 ms. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import dcap_qvl

from confserve.attestation import (
    Collateral,
    EnclaveIdentity,
    SimPlatform,
    TrustConfig,
    parse_quote_v3,
    verify,
)

SIM_NOW = 1_780_000_000
SGX_NOW = 1752919277  # inside the real vector's window (testvectors/dcap/README.md)


def _vectors() -> Path:
    repo = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("CONFSERVE_SHARED", repo.parent / "shared")) / "testvectors" / "dcap"


def bench(name: str, op: Callable[[], object], seconds: float) -> None:
    """Run `op` in batches for about `seconds`; print the median and best per-operation time."""
    op()  # warm up
    batch = 1
    while True:  # size a batch to about 10 ms
        start = time.perf_counter()
        for _ in range(batch):
            op()
        if time.perf_counter() - start > 0.01:
            break
        batch *= 2
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 5:
        start = time.perf_counter()
        for _ in range(batch):
            op()
        samples.append((time.perf_counter() - start) / batch)
    median_us = statistics.median(samples) * 1e6
    best_us = min(samples) * 1e6
    print(f"{name:<58} {median_us:>9.1f} us/op (best {best_us:.1f}, {len(samples) * batch} ops)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per benchmark")
    args = parser.parse_args()

    identity = EnclaveIdentity(mr_enclave=bytes(32), mr_signer=bytes(range(32)), isv_prod_id=1, isv_svn=1)
    report_data = bytes(range(64))
    platform = SimPlatform.create(now=SIM_NOW)
    sim_trust = TrustConfig.simulated(platform.root_ca_der)
    sim_quote = platform.quote(report_data, identity)
    sim_collateral = Collateral.from_json(platform.collateral_json)
    sim_dcap_collateral = platform.collateral

    bench(
        "sim: create platform (5 P-256 keys, 4 certs, collateral)",
        lambda: SimPlatform.create(now=SIM_NOW),
        args.seconds,
    )
    bench("sim: quote generation", lambda: platform.quote(report_data, identity), args.seconds)
    bench("sim: refresh collateral", lambda: platform.refresh_collateral(SIM_NOW), args.seconds)
    bench("parse quote (_structs, strict)", lambda: parse_quote_v3(sim_quote), args.seconds)
    bench(
        "sim: full verify (Collateral JSON)",
        lambda: verify(sim_quote, sim_collateral, sim_trust, SIM_NOW),
        args.seconds,
    )
    bench(
        "sim: full verify (dcap_qvl.QuoteCollateralV3)",
        lambda: verify(sim_quote, sim_dcap_collateral, sim_trust, SIM_NOW),
        args.seconds,
    )
    bench(
        "sim: dcap-qvl alone (verify_with_root_ca), for reference",
        lambda: dcap_qvl.verify_with_root_ca(sim_quote, sim_dcap_collateral, platform.root_ca_der, SIM_NOW),
        args.seconds,
    )

    vectors = _vectors()
    if (vectors / "sgx_quote").is_file():
        real_quote = (vectors / "sgx_quote").read_bytes()
        real_collateral = Collateral.from_file(vectors / "sgx_quote_collateral.json")
        intel = TrustConfig.intel()
        bench(
            "real SGX vector: full verify (Intel root)",
            lambda: verify(real_quote, real_collateral, intel, SGX_NOW),
            args.seconds,
        )
    else:
        print(f"(real vectors not found in {vectors}; skipped)")


if __name__ == "__main__":
    main()
