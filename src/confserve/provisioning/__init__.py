"""Secret provisioning: the Gramine-compatible attested key-release service, its in-enclave client, the
sans-I/O wire protocol (with confserve's multi-secret extension) and the hash-chained audit log.

Importing the package is light (standard library): errors, the wire protocol, the audit log and the
secret store load with it; the client, the server and the TLS layer (pyOpenSSL, cryptography's X.509
layer, the attestation stack) load on first use of a name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confserve._lazy import lazy_exports
from confserve.provisioning._audit import AuditLog, AuditVerification, verify_audit_log
from confserve.provisioning._errors import (
    AuditLogError,
    ConfigError,
    ProtocolError,
    ProvisioningError,
    RefusedError,
    TlsError,
    UnavailableError,
)
from confserve.provisioning._protocol import (
    DEFAULT_PORT,
    DEFAULT_SECRET_NAME,
    GRAMINE_REQUEST,
    GRAMINE_RESPONSE_PREFIX,
    ClientConnection,
    Granted,
    Refused,
    RequestKind,
    SecretRequest,
    ServerConnection,
)
from confserve.provisioning._secrets import RateLimiter, SecretStore, parse_secret_spec, read_secret_file

if TYPE_CHECKING:
    from confserve.provisioning._client import (
        DEFAULT_SERVERS,
        ClientSettings,
        DevAttestationKeys,
        KeyInstaller,
        SecretProvisioningClient,
        ServerAddress,
        fetch_wrap_key,
        parse_server_list,
        request_secrets,
    )
    from confserve.provisioning._server import (
        SecretProvisioningServer,
        ServerLimits,
        ServerSettings,
        collateral_from_file,
        collateral_from_pccs,
        collateral_from_sim_platform,
        policy_from_file,
        secrets_from_files,
        trust_for_sim_platform,
    )
    from confserve.provisioning._tls import load_ca_certificates, load_certificate_chain, load_private_key

# Where each lazily imported name lives: the module is imported on first use.
_LAZY: dict[str, str] = {
    "ClientSettings": "_client",
    "DEFAULT_SERVERS": "_client",
    "DevAttestationKeys": "_client",
    "KeyInstaller": "_client",
    "SecretProvisioningClient": "_client",
    "ServerAddress": "_client",
    "fetch_wrap_key": "_client",
    "parse_server_list": "_client",
    "request_secrets": "_client",
    "SecretProvisioningServer": "_server",
    "ServerLimits": "_server",
    "ServerSettings": "_server",
    "collateral_from_file": "_server",
    "collateral_from_pccs": "_server",
    "collateral_from_sim_platform": "_server",
    "policy_from_file": "_server",
    "secrets_from_files": "_server",
    "trust_for_sim_platform": "_server",
    "load_ca_certificates": "_tls",
    "load_certificate_chain": "_tls",
    "load_private_key": "_tls",
}

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_SECRET_NAME",
    "DEFAULT_SERVERS",
    "GRAMINE_REQUEST",
    "GRAMINE_RESPONSE_PREFIX",
    "AuditLog",
    "AuditLogError",
    "AuditVerification",
    "ClientConnection",
    "ClientSettings",
    "ConfigError",
    "DevAttestationKeys",
    "Granted",
    "KeyInstaller",
    "ProtocolError",
    "ProvisioningError",
    "RateLimiter",
    "Refused",
    "RefusedError",
    "RequestKind",
    "SecretProvisioningClient",
    "SecretProvisioningServer",
    "SecretRequest",
    "SecretStore",
    "ServerAddress",
    "ServerConnection",
    "ServerLimits",
    "ServerSettings",
    "TlsError",
    "UnavailableError",
    "collateral_from_file",
    "collateral_from_pccs",
    "collateral_from_sim_platform",
    "fetch_wrap_key",
    "load_ca_certificates",
    "load_certificate_chain",
    "load_private_key",
    "parse_secret_spec",
    "parse_server_list",
    "policy_from_file",
    "read_secret_file",
    "request_secrets",
    "secrets_from_files",
    "trust_for_sim_platform",
    "verify_audit_log",
]


__getattr__ = lazy_exports(__name__, _LAZY)
