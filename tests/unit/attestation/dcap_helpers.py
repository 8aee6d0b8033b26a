"""Shared facts for the DCAP tests: where the real vectors are and when they verify.

The vectors stay in ../shared/testvectors/dcap (CONFSERVE_SHARED overrides the shared directory); they are
read from there, never copied into the repository. Windows and results are from its README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from confserve.attestation import EnclaveIdentity

REPO = Path(__file__).resolve().parents[3]


def dcap_vectors() -> Path:
    shared = Path(os.environ.get("CONFSERVE_SHARED", REPO.parent / "shared"))
    path = shared / "testvectors" / "dcap"
    if not (path / "sgx_quote").is_file():
        raise RuntimeError(f"DCAP test vectors not found in {path} (set CONFSERVE_SHARED)")
    return path


# testvectors/dcap/README.md: the inclusive now_secs windows in which each vector verifies.
SGX_WINDOW = (1750330571, 1752919278)
SGX_NOW = 1752919277
SGX_STATUS = "ConfigurationAndSWHardeningNeeded"
SGX_ADVISORIES = ("INTEL-SA-00289", "INTEL-SA-00615")
SGX_MR_ENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
SGX_MR_SIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
TDX_NOW = 1752919234
TDX_OUTDATED_NOW = 1774003274

# A fixed "now" for simulated platforms (2026-05-28), far from the real vectors' windows.
SIM_NOW = 1_780_000_000

IDENTITY = EnclaveIdentity(
    mr_enclave=bytes(range(32)),
    mr_signer=bytes(range(32, 64)),
    isv_prod_id=7,
    isv_svn=3,
)
REPORT_DATA = bytes(range(64))
