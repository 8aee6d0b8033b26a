"""Errors of the provisioning package. Messages are short, safe to show to a peer, and never contain a
secret or key byte."""

from __future__ import annotations

from confserve.errors import ConfserveError, Status

__all__ = [
    "AuditLogError",
    "ConfigError",
    "ProtocolError",
    "ProvisioningError",
    "RefusedError",
    "TlsError",
    "UnavailableError",
]


class ProvisioningError(ConfserveError):
    """Root of the secret-provisioning errors."""

    status = Status.INTERNAL


class ProtocolError(ProvisioningError):
    """The peer's bytes are malformed, oversized, truncated or arrive in the wrong state."""

    status = Status.INVALID_ARGUMENT


class TlsError(ProvisioningError):
    """The TLS handshake or record layer failed (including a server certificate that does not verify)."""

    status = Status.UNAUTHENTICATED


class RefusedError(ProvisioningError):
    """The service refused to release the secrets (attestation, policy, or a name not granted)."""

    status = Status.PERMISSION_DENIED


class UnavailableError(ProvisioningError):
    """No server could be reached before the deadline, or a connection broke or timed out."""

    status = Status.UNAVAILABLE


class ConfigError(ProvisioningError):
    """A configuration value, secret file, server list or certificate file is invalid."""

    status = Status.INVALID_ARGUMENT


class AuditLogError(ProvisioningError):
    """The audit log cannot be written, or its hash chain is broken."""

    status = Status.FAILED_PRECONDITION
