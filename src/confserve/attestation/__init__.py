"""Enclave identity, quotes (real and simulated), DCAP verification, policy and RA-TLS certificates."""

from confserve.attestation._errors import AttestationError, PolicyError, QuoteFormatError, VerificationError
from confserve.attestation._types import EnclaveIdentity, VerifiedEvidence

__all__ = [
    "AttestationError",
    "EnclaveIdentity",
    "PolicyError",
    "QuoteFormatError",
    "VerificationError",
    "VerifiedEvidence",
]
