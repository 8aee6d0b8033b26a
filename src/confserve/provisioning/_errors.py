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


class ProvisioningError(ConfserveError, status=Status.INTERNAL):
    """Root of the secret-provisioning errors."""


class ProtocolError(ProvisioningError, status=Status.INVALID_ARGUMENT):
    """The peer's bytes are malformed, oversized, truncated or arrive in the wrong state."""


class TlsError(ProvisioningError, status=Status.UNAUTHENTICATED):
    """The TLS handshake or record layer failed (including a server certificate that does not verify)."""


class RefusedError(ProvisioningError, status=Status.PERMISSION_DENIED):
    """The service refused to release the secrets (attestation, policy, or a name not granted)."""


class UnavailableError(ProvisioningError, status=Status.UNAVAILABLE):
    """No server could be reached before the deadline, or a connection broke or timed out."""


class ConfigError(ProvisioningError, status=Status.INVALID_ARGUMENT):
    """A configuration value, secret file, server list or certificate file is invalid."""


class AuditLogError(ProvisioningError, status=Status.FAILED_PRECONDITION):
    """The audit log cannot be written, or its hash chain is broken."""
