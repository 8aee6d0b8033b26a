"""Errors of the attestation package.

Messages are short and safe to show to a peer; they never contain secrets. Verifiers raise, never warn:
every failure of a signature, a certificate chain, collateral or policy is an exception (fail closed).
"""

from __future__ import annotations

from confserve.errors import ConfserveError, Status

__all__ = [
    "AttestationError",
    "PolicyError",
    "QuoteFormatError",
    "VerificationError",
]


class AttestationError(ConfserveError, status=Status.PERMISSION_DENIED):
    """Root of the attestation errors."""


class QuoteFormatError(AttestationError, status=Status.INVALID_ARGUMENT):
    """A quote, report, SIGSTRUCT or certificate extension is malformed, truncated or oversized."""


class VerificationError(AttestationError):
    """Evidence failed cryptographic verification (signature, chain, CRL, collateral, binding)."""


class PolicyError(AttestationError):
    """Evidence verified but the policy refuses it, or a policy file is invalid."""
