"""Enclave identity, quotes (real and simulated), DCAP verification, policy and RA-TLS certificates."""

from confserve.attestation._errors import AttestationError, PolicyError, QuoteFormatError, VerificationError
from confserve.attestation._measure import (
    MeasurementError,
    SigStruct,
    build_sigstruct,
    describe_simulated,
    find_package_root,
    generate_signing_key,
    measure_simulated,
    mr_signer_from_pem,
    mr_signer_from_public_key,
    parse_sigstruct,
    simulated_identity,
)
from confserve.attestation._policy import (
    AllowRule,
    Decision,
    Policy,
    load_policy_file,
    parse_policy_toml,
    parse_ra_config,
)
from confserve.attestation._types import EnclaveIdentity, VerifiedEvidence

__all__ = [
    "AllowRule",
    "AttestationError",
    "Decision",
    "EnclaveIdentity",
    "MeasurementError",
    "Policy",
    "PolicyError",
    "QuoteFormatError",
    "SigStruct",
    "VerificationError",
    "VerifiedEvidence",
    "build_sigstruct",
    "describe_simulated",
    "find_package_root",
    "generate_signing_key",
    "load_policy_file",
    "measure_simulated",
    "mr_signer_from_pem",
    "mr_signer_from_public_key",
    "parse_policy_toml",
    "parse_ra_config",
    "parse_sigstruct",
    "simulated_identity",
]
