"""TLS material for the model server and its clients, split by who may hold it.

The reference's generate_*_ssl_config.sh made RSA certificates without SANs, with one serial for every
leaf, and left the server's private key in a plaintext ssl.cfg next to the model. Here:

| directory | holder                           | contents                                              |
|-----------|----------------------------------|-------------------------------------------------------|
| `owner/`  | the model owner (never leaves)   | CA key and cert, server key and cert, plaintext       |
|           |                                  | `ssl.cfg` (0600), client key and cert (two-way)       |
| `server/` | the untrusted host               | `ssl.cfg` as a protected file only the enclave reads  |
|           |                                  | (written only when a wrap key is given)               |
| `client/` | the users                        | `ca.crt`; two-way TLS: also `client.crt`, `client.key` |

`ssl.cfg` is TF Serving's SSLConfig text proto (PEM contents, not paths). Keys are ECDSA P-256 by
default (RSA-3072 on request), every certificate has its own random serial, leaves carry SANs, key usage
and extended key usage, and validity is bounded.

The key service's TLS material (`key_service_pki`, for `confserve secret-prov init`) comes from the same
builder: one place decides validity, key usage and names for every certificate confserve issues
(RA-TLS certificates aside, which follow Gramine's; attestation/_ratls.py).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from confserve import pf
from confserve.attestation import key_usage
from confserve.errors import ConfserveError, Status
from confserve.tfs_config import SSLConfig, format_text

SERVER_NAME_FILE = "server_name"  # in a client bundle: the server certificate's DNS name

__all__ = [
    "DEFAULT_SSL_CONFIG_BOUND_PATH",
    "SERVER_NAME_FILE",
    "KeyType",
    "TlsMaterial",
    "TlsMaterialError",
    "generate_tls_material",
    "key_service_pki",
]

KeyType = Literal["ecdsa-p256", "rsa-3072"]
DEFAULT_SSL_CONFIG_BOUND_PATH: Final = "ssl.cfg"  # the server opens its config relative to its root
_CA_DAYS: Final = 5 * 365  # the CA outlives a few rotations of leaf certificates
_CLOCK_SKEW: Final = datetime.timedelta(hours=1)  # notBefore backdated for peers with a slow clock
# The key service's CA signs one server certificate and is then thrown away (rotation = a new CA), so
# it may live long; its server certificate keeps to the CA/Browser Forum's former maximum of 825 days.
_KEY_SERVICE_CA_DAYS: Final = 3650
_KEY_SERVICE_DAYS: Final = 825

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class TlsMaterialError(ConfserveError, status=Status.INVALID_ARGUMENT):
    """TLS material cannot be created (bad name, output directory already used)."""


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Where everything was written."""

    root: Path
    ssl_config_plain: Path  # owner/ssl.cfg: contains the server's private key, stays with the owner
    ssl_config_encrypted: Path | None  # server/ssl.cfg (protected file) when a wrap key was given
    ssl_config_bound_path: str | None
    client_bundle: Path
    service_domain: str
    client_domain: str | None


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise TlsMaterialError(f"unknown key type {key_type!r} (ecdsa-p256 or rsa-3072)")


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _check_name(name: str, what: str) -> None:
    if not name or len(name) > 253 or any(c.isspace() or c in "/\\\0" for c in name):
        raise TlsMaterialError(f"{what} {name!r} is not a valid host name or address")


def _issue(
    names: Sequence[str],
    issuer: tuple[x509.Certificate, PrivateKey] | None,
    usage: x509.ObjectIdentifier | None,
    *,
    now: datetime.datetime,
    days: int,
    key_type: KeyType,
) -> tuple[PrivateKey, x509.Certificate]:
    """A new key and its certificate, named `names` (the first is the subject): a self-signed CA's when
    `issuer` (certificate, key) is None, else a leaf's for the extended key `usage` that `issuer` signs."""
    key = _new_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    issuer_name, issuer_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.BasicConstraints(ca=issuer is None, path_length=0 if issuer is None else None), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if issuer is None:
        builder = builder.add_extension(key_usage("key_cert_sign", "crl_sign"), critical=True)
    else:
        # EC keys agree on the TLS key exchange (ECDH); RSA keys encipher it.
        ec_key = isinstance(key, ec.EllipticCurvePrivateKey)
        exchange = key_usage("digital_signature", "key_agreement" if ec_key else "key_encipherment")
        builder = builder.add_extension(exchange, critical=True)
        builder = builder.add_extension(x509.SubjectAlternativeName(map(_san, names)), critical=False)
        assert usage is not None
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return key, builder.sign(issuer_key, hashes.SHA256())


def _pem(obj: x509.Certificate | PrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca_and_server(
    hostnames: Sequence[str],
    *,
    ca_subject: str,
    now: datetime.datetime,
    ca_days: int,
    days: int,
    key_type: KeyType,
) -> tuple[PrivateKey, x509.Certificate, PrivateKey, x509.Certificate]:
    """A new CA and a server certificate it issues for `hostnames` (the first is the subject)."""
    ca_key, ca = _issue((ca_subject,), None, None, now=now, days=ca_days, key_type=key_type)
    server_key, server = _issue(
        hostnames, (ca, ca_key), ExtendedKeyUsageOID.SERVER_AUTH, now=now, days=days, key_type=key_type
    )
    return ca_key, ca, server_key, server


def key_service_pki(hostnames: Sequence[str], now: datetime.datetime) -> tuple[bytes, bytes, bytes]:
    """The key service's TLS material, PEM: (CA certificate, server certificate, server key). The
    server certificate names every one of `hostnames` (DNS names or IP addresses; clients must use one).
    The CA's key is not returned: nothing else is ever signed with it."""
    if not hostnames:
        raise TlsMaterialError("the key service needs at least one host name or address")
    for name in hostnames:
        _check_name(name, "host name")
    _, ca, server_key, server = _ca_and_server(
        hostnames,
        ca_subject="confserve secret provisioning CA",
        now=now,
        ca_days=_KEY_SERVICE_CA_DAYS,
        days=_KEY_SERVICE_DAYS,
        key_type="ecdsa-p256",
    )
    return _pem(ca), _pem(server), _pem(server_key)


def generate_tls_material(
    out_dir: str | os.PathLike[str],
    service_domain: str,
    client_domain: str | None = None,
    *,
    key_type: KeyType = "ecdsa-p256",
    days: int = 365,
    wrap_key: pf.WrapKey | None = None,
    ssl_config_bound_path: str = DEFAULT_SSL_CONFIG_BOUND_PATH,
    now: datetime.datetime | None = None,
) -> TlsMaterial:
    """Create a CA, a server certificate for `service_domain` and, for two-way TLS (`client_domain`), a
    client certificate; write the owner, server and client bundles below `out_dir` (which must not hold
    TLS material already). With `wrap_key`, the server bundle's ssl.cfg is encrypted and bound to
    `ssl_config_bound_path`, the path the enclave opens it under."""
    _check_name(service_domain, "service domain")
    if client_domain is not None:
        _check_name(client_domain, "client domain")
    if not 1 <= days <= 3650:
        raise TlsMaterialError("validity must be between 1 and 3650 days")
    root = Path(out_dir)
    owner, server, client = root / "owner", root / "server", root / "client"
    for sub in (owner, server, client):
        if sub.exists():
            raise TlsMaterialError(f"{sub} already exists; refusing to replace TLS material")
    now = now or datetime.datetime.now(datetime.UTC)
    ca_key, ca, server_key, server_cert = _ca_and_server(
        (service_domain,),
        ca_subject=f"confserve CA for {service_domain}",
        now=now,
        ca_days=max(_CA_DAYS, days),
        days=days,
        key_type=key_type,
    )
    config = SSLConfig(
        server_key=_pem(server_key).decode(),
        server_cert=_pem(server_cert).decode(),
        custom_ca=_pem(ca).decode() if client_domain else "",
        client_verify=client_domain is not None,
    )
    ssl_cfg = format_text(config).encode()

    root.mkdir(parents=True, exist_ok=True)
    owner.mkdir(mode=0o700)
    client.mkdir(mode=0o755)
    pf.write_private_file(owner / "ca.key", _pem(ca_key))
    pf.write_public_file(owner / "ca.crt", _pem(ca))
    pf.write_private_file(owner / "server.key", _pem(server_key))
    pf.write_public_file(owner / "server.crt", _pem(server_cert))
    pf.write_private_file(owner / "ssl.cfg", ssl_cfg)
    pf.write_public_file(client / "ca.crt", _pem(ca))
    # The name the server's certificate carries: clients of the bundle check it without --server-name.
    pf.write_public_file(client / SERVER_NAME_FILE, (service_domain + "\n").encode("ascii"))
    if client_domain is not None:
        client_key, client_cert = _issue(
            (client_domain,),
            (ca, ca_key),
            ExtendedKeyUsageOID.CLIENT_AUTH,
            now=now,
            days=days,
            key_type=key_type,
        )
        for where in (owner, client):
            pf.write_private_file(where / "client.key", _pem(client_key))
            pf.write_public_file(where / "client.crt", _pem(client_cert))
    encrypted: Path | None = None
    bound: str | None = None
    if wrap_key is not None:
        server.mkdir(mode=0o755)
        encrypted = server / "ssl.cfg"
        bound = pf.normalize_path(ssl_config_bound_path)
        pf.write_public_file(encrypted, pf.encrypt_bytes(ssl_cfg, wrap_key, bound_path=bound))
    return TlsMaterial(root, owner / "ssl.cfg", encrypted, bound, client, service_domain, client_domain)
