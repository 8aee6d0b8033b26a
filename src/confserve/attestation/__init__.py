"""Enclave identity, quotes (real and simulated), DCAP verification, policy and RA-TLS certificates.

Importing the package is light (standard library only): the value types and errors load with it, and
every other name loads its module on first use, so a command that only names a type or a TCB status
pays nothing for cryptography's X.509 layer or dcap-qvl.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from confserve.attestation._errors import AttestationError, PolicyError, QuoteFormatError, VerificationError
from confserve.attestation._types import SGX_TCB_STATUSES, EnclaveIdentity, VerifiedEvidence

if TYPE_CHECKING:
    from confserve.attestation._attester import (
        DEV_ATTESTATION,
        AttestationFiles,
        Attester,
        AttesterUnavailableError,
        DevAttestationFiles,
        GramineAttester,
        SimulatedAttester,
        detect_attester,
    )
    from confserve.attestation._evidence import (
        make_evidence,
        new_nonce,
        parse_evidence_request,
        verify_server_evidence,
    )
    from confserve.attestation._measure import (
        DEFAULT_ENTRY_POINT,
        MeasurementError,
        SigStruct,
        build_sigstruct,
        describe_simulated,
        find_package_root,
        format_identity,
        generate_signing_key,
        identity_to_json,
        load_measured_args_toml,
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
        policy_for_identities,
        render_policy_toml,
    )
    from confserve.attestation._ratls import (
        RaTlsCredentials,
        RaTlsFormat,
        create_ratls_credentials,
        extract_ratls_quote,
        verify_ratls_certificate,
    )
    from confserve.attestation._simplatform import (
        PlatformTcb,
        SimCollateralSettings,
        SimPlatform,
        SimPlatformError,
    )
    from confserve.attestation._structs import (
        QuoteHeader,
        QuoteV3,
        ReportBody,
        parse_quote_header,
        parse_quote_v3,
    )
    from confserve.attestation._trust import (
        SIM_COLLATERAL_FILE,
        SIM_ROOT_FILE,
        VerifierTrust,
        load_simulated_root,
        verifier_trust,
    )
    from confserve.attestation._verify import (
        INTEL_SGX_ROOT_CA_DER,
        INTEL_SGX_ROOT_CA_SHA256,
        CachingCollateralSource,
        Collateral,
        CollateralSource,
        FileCollateralSource,
        PccsCollateralSource,
        StaticCollateralSource,
        TrustConfig,
        verify,
    )

# Where each lazily imported name lives: the module is imported on first use.
_LAZY: dict[str, str] = {
    "AttestationFiles": "_attester",
    "Attester": "_attester",
    "AttesterUnavailableError": "_attester",
    "DEV_ATTESTATION": "_attester",
    "DevAttestationFiles": "_attester",
    "GramineAttester": "_attester",
    "SimulatedAttester": "_attester",
    "detect_attester": "_attester",
    "make_evidence": "_evidence",
    "new_nonce": "_evidence",
    "parse_evidence_request": "_evidence",
    "verify_server_evidence": "_evidence",
    "DEFAULT_ENTRY_POINT": "_measure",
    "MeasurementError": "_measure",
    "SigStruct": "_measure",
    "build_sigstruct": "_measure",
    "describe_simulated": "_measure",
    "find_package_root": "_measure",
    "format_identity": "_measure",
    "generate_signing_key": "_measure",
    "identity_to_json": "_measure",
    "load_measured_args_toml": "_measure",
    "measure_simulated": "_measure",
    "mr_signer_from_pem": "_measure",
    "mr_signer_from_public_key": "_measure",
    "parse_sigstruct": "_measure",
    "simulated_identity": "_measure",
    "AllowRule": "_policy",
    "Decision": "_policy",
    "Policy": "_policy",
    "load_policy_file": "_policy",
    "parse_policy_toml": "_policy",
    "parse_ra_config": "_policy",
    "policy_for_identities": "_policy",
    "render_policy_toml": "_policy",
    "RaTlsCredentials": "_ratls",
    "RaTlsFormat": "_ratls",
    "create_ratls_credentials": "_ratls",
    "extract_ratls_quote": "_ratls",
    "verify_ratls_certificate": "_ratls",
    "PlatformTcb": "_simplatform",
    "SimCollateralSettings": "_simplatform",
    "SimPlatform": "_simplatform",
    "SimPlatformError": "_simplatform",
    "QuoteHeader": "_structs",
    "QuoteV3": "_structs",
    "ReportBody": "_structs",
    "parse_quote_header": "_structs",
    "parse_quote_v3": "_structs",
    "SIM_COLLATERAL_FILE": "_trust",
    "SIM_ROOT_FILE": "_trust",
    "VerifierTrust": "_trust",
    "load_simulated_root": "_trust",
    "verifier_trust": "_trust",
    "CachingCollateralSource": "_verify",
    "Collateral": "_verify",
    "CollateralSource": "_verify",
    "FileCollateralSource": "_verify",
    "INTEL_SGX_ROOT_CA_DER": "_verify",
    "INTEL_SGX_ROOT_CA_SHA256": "_verify",
    "PccsCollateralSource": "_verify",
    "StaticCollateralSource": "_verify",
    "TrustConfig": "_verify",
    "verify": "_verify",
}

__all__ = [
    "DEFAULT_ENTRY_POINT",
    "DEV_ATTESTATION",
    "INTEL_SGX_ROOT_CA_DER",
    "INTEL_SGX_ROOT_CA_SHA256",
    "SGX_TCB_STATUSES",
    "SIM_COLLATERAL_FILE",
    "SIM_ROOT_FILE",
    "AllowRule",
    "AttestationError",
    "AttestationFiles",
    "Attester",
    "AttesterUnavailableError",
    "CachingCollateralSource",
    "Collateral",
    "CollateralSource",
    "Decision",
    "DevAttestationFiles",
    "EnclaveIdentity",
    "FileCollateralSource",
    "GramineAttester",
    "MeasurementError",
    "PccsCollateralSource",
    "PlatformTcb",
    "Policy",
    "PolicyError",
    "QuoteFormatError",
    "QuoteHeader",
    "QuoteV3",
    "RaTlsCredentials",
    "RaTlsFormat",
    "ReportBody",
    "SigStruct",
    "SimCollateralSettings",
    "SimPlatform",
    "SimPlatformError",
    "SimulatedAttester",
    "StaticCollateralSource",
    "TrustConfig",
    "VerificationError",
    "VerifiedEvidence",
    "VerifierTrust",
    "build_sigstruct",
    "create_ratls_credentials",
    "describe_simulated",
    "detect_attester",
    "extract_ratls_quote",
    "find_package_root",
    "format_identity",
    "generate_signing_key",
    "identity_to_json",
    "load_measured_args_toml",
    "load_policy_file",
    "load_simulated_root",
    "make_evidence",
    "measure_simulated",
    "mr_signer_from_pem",
    "mr_signer_from_public_key",
    "new_nonce",
    "parse_evidence_request",
    "parse_policy_toml",
    "parse_quote_header",
    "parse_quote_v3",
    "parse_ra_config",
    "parse_sigstruct",
    "policy_for_identities",
    "render_policy_toml",
    "simulated_identity",
    "verifier_trust",
    "verify",
    "verify_ratls_certificate",
    "verify_server_evidence",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value
