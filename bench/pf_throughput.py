"""Protected-file throughput and memory: encrypt and decrypt a large file through the streaming API.

Prints MB/s for confserve's encrypt and decrypt, and, as a baseline measured in the same run, raw
AES-128-GCM over the same bytes in 4 KiB single-key calls (the floor no node-based format can beat) and a
plain file copy. Peak RSS growth is measured in a fresh child process per operation, so one operation's
buffers do not hide another's.

Usage: .venv/bin/python bench/pf_throughput.py [--size-mb 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mb * 1_000_000
    key_hex = os.urandom(16).hex()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        plain, enc, out = Path(tmp, "plain"), Path(tmp, "enc"), Path(tmp, "out")
        print(f"writing {args.size_mb} MB of random plaintext ...", flush=True)
        c.write_random_file(plain, size)
        results: dict[str, list[dict[str, float]]] = {"copy": [], "encrypt": [], "decrypt": [], "verify": []}
        gcm: list[float] = []
        for i in range(args.repeat):
            print(f"round {i + 1}/{args.repeat} ...", flush=True)
            results["copy"].append(c.pf_child("copy", plain, out, key_hex))
            results["encrypt"].append(c.pf_child("encrypt", plain, enc, key_hex))
            results["decrypt"].append(c.pf_child("decrypt", enc, out, key_hex))
            results["verify"].append(c.pf_child("verify", enc, out, key_hex))
            gcm.append(c.gcm_baseline_seconds(plain))
        mb = size / 1e6
        best_gcm = mb / min(gcm)
        print(
            f"\nfile size {mb:.0f} MB, best of {args.repeat} rounds; rss = peak RSS growth of each operation"
        )
        print(f"{'operation':<28}{'MB/s':>10}{'x AES-GCM':>12}{'rss MiB':>10}")
        print(f"{'baseline: AES-GCM 4KiB calls':<28}{best_gcm:>10.0f}{1.0:>12.2f}{'-':>10}")
        for op, runs in results.items():
            rate = mb / min(r["seconds"] for r in runs)
            rss = max(r["rss_growth_kib"] for r in runs) / 1024
            label = "baseline: plain copy" if op == "copy" else f"confserve pf {op}"
            print(f"{label:<28}{rate:>10.0f}{rate / best_gcm:>12.2f}{rss:>10.1f}")
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"(this process's own peak RSS: {own:.0f} MiB)")
        print("targets: decrypt >= 400 MB/s, encrypt >= 300 MB/s, streaming RSS growth <= 32 MiB")


if __name__ == "__main__":
    main()
