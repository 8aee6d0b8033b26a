"""Value types shared across the attestation package: who an enclave is and what verification proved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["SGX_TCB_STATUSES", "EnclaveIdentity", "VerifiedEvidence"]

# The TCB statuses a TCB level can carry for SGX (Intel PCS API v4 "tcbStatus", as dcap-qvl reports
# them; docs/attestation.md). TDX-only statuses are not listed. Kept here, in a standard-library module,
# so the command line can offer them as choices without importing the verifier.
SGX_TCB_STATUSES: Final = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)


@dataclass(frozen=True, slots=True)
class EnclaveIdentity:
    """The measured identity of an SGX enclave (fields of the ISV enclave report body, SDM 38.15)."""

    mr_enclave: bytes  # 32 bytes: measurement of the enclave's code and initial data
    mr_signer: bytes  # 32 bytes: SHA-256 of the little-endian RSA-3072 modulus of the signing key
    isv_prod_id: int  # u16
    isv_svn: int  # u16

    def __post_init__(self) -> None:
        if len(self.mr_enclave) != 32 or len(self.mr_signer) != 32:
            raise ValueError("mr_enclave and mr_signer must be 32 bytes each")
        if not (0 <= self.isv_prod_id <= 0xFFFF and 0 <= self.isv_svn <= 0xFFFF):
            raise ValueError("isv_prod_id and isv_svn must be 16-bit unsigned integers")


@dataclass(frozen=True, slots=True)
class VerifiedEvidence:
    """What a successful cryptographic verification of a quote established (policy not yet applied)."""

    identity: EnclaveIdentity
    report_data: bytes  # 64 bytes, as signed in the report body
    debug: bool  # the enclave's DEBUG attribute (a debug enclave's memory is readable by the host)
    tcb_status: str  # dcap-qvl status string, e.g. "UpToDate", "SWHardeningNeeded", "OutOfDate"
    advisory_ids: tuple[str, ...]  # e.g. ("INTEL-SA-00615",)
    simulated: bool  # True when the chain is rooted at a simulated platform, not Intel's SGX root
