"""The model server's enclave side: who it is, how it proves it, and how it gets its key.

Start sequence (`confserve serve` with a secret-provisioning server): pick the attester (Gramine's
/dev/attestation when present, else the simulated platform it was given) -> compute the identity the
quote will carry (simulation: the measured description of this very command, see `serve_measured_args`)
-> fetch the wrap key from the provisioning service over RA-TLS, retrying with backoff until a deadline,
logging each wait -> hand the key to the model loader. Nothing is served before the key arrived.

Measured arguments. In simulation, MRENCLAVE covers confserve's code and every flag that decides what
the replica does with data: which models (the config's content hash), which TLS configuration, whether
plaintext or insecure serving is allowed, which provisioning CA it trusts (by content hash) and which
secret it asks for. Flags that only affect availability (ports, poll intervals, server lists) are not
measured, so an operator can move replicas without a new approval, but cannot change their behaviour
without the key being refused. Under Gramine the same role is played by the manifest's fixed argv.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from confserve import pf
from confserve.attestation import (
    DEV_ATTESTATION,
    Attester,
    EnclaveIdentity,
    GramineAttester,
    SimPlatform,
    SimulatedAttester,
    find_package_root,
    make_evidence,
    simulated_identity,
)
from confserve.errors import ConfserveError, Status
from confserve.files import MAX_SMALL_FILE_BYTES, open_input, read_input
from confserve.provisioning import (
    ClientSettings,
    DevAttestationKeys,
    Granted,
    KeyInstaller,
    ProvisioningError,
    SecretProvisioningClient,
)

__all__ = [
    "SERVE_ENTRY_POINT",
    "EnclaveError",
    "EnclaveRuntime",
    "EnclaveSettings",
    "file_sha256",
    "serve_measured_args",
    "simulated_replica_identity",
]

_log = logging.getLogger("confserve.enclave")

SERVE_ENTRY_POINT: Final = "confserve.cli:main serve"
AttestationMode = Literal["auto", "gramine", "simulated"]


class EnclaveError(ConfserveError, status=Status.FAILED_PRECONDITION):
    """The enclave side cannot start: no attester, bad signing key, or no key from provisioning."""


def file_sha256(path: str | Path) -> str:
    try:
        with open_input(path) as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise EnclaveError(f"cannot read {path}: {e.strerror}") from None


def serve_measured_args(
    *,
    models: str,
    ssl_config_file: str | None,
    ssl_config_bound_path: str | None,
    provisioning_ca_sha256: str,
    secret_name: str,
    insecure: bool,
    allow_plaintext_models: bool,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The flags of `confserve serve` that decide its behaviour (see the module docstring).

    `models` is the SHA-256 of the model config file's content, or "NAME=BASE_PATH" for a single model.
    """
    args = {
        "command": "serve",
        "models": models,
        "ssl_config_file": ssl_config_file or "",
        "ssl_config_bound_path": ssl_config_bound_path or "",
        "provisioning_ca_sha256": provisioning_ca_sha256,
        "secret_name": secret_name,
        "insecure": "true" if insecure else "false",
        "allow_plaintext_models": "true" if allow_plaintext_models else "false",
    }
    for key, value in (extra or {}).items():
        if key in args:
            raise EnclaveError(f"measured argument {key!r} is set by confserve itself")
        args[key] = value
    return args


@dataclass(frozen=True)
class EnclaveSettings:
    servers: str  # SECRET_PROVISION_SERVERS syntax
    ca_chain: Path  # SECRET_PROVISION_CA_CHAIN_PATH: CA that issued the provisioning service's certificate
    secret_name: str = "default"  # noqa: S105 - a secret's name, not a secret
    attestation: AttestationMode = "auto"
    sim_platform: Path | None = None  # simulation: the platform that signs this "enclave's" quotes
    signing_key: Path | None = None  # simulation: the enclave signer's RSA-3072 key (PEM, public is enough)
    isv_prod_id: int = 0
    isv_svn: int = 0
    # A replica may start before the provisioning service (a cluster coming up, a service restart):
    # keep asking for five minutes, backing off up to 5 s between rounds, before giving up.
    deadline_seconds: float = 300.0


def _load_signer(path: Path) -> rsa.RSAPublicKey:
    try:
        data = read_input(path, max_bytes=MAX_SMALL_FILE_BYTES)
    except OSError as e:
        raise EnclaveError(f"cannot read the enclave signing key {path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, None).public_key()
        except (ValueError, TypeError):
            raise EnclaveError(f"{path} is not an RSA PEM key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise EnclaveError(f"{path} is not an RSA key")
    return key


def simulated_replica_identity(
    signing_key: Path, measured_args: Mapping[str, str], *, isv_prod_id: int = 0, isv_svn: int = 0
) -> EnclaveIdentity:
    """The identity a simulated replica attests as: confserve's installed code, the serve entry point
    and its measured arguments (MRENCLAVE), the signer's key (MRSIGNER; the public key is enough)."""
    return simulated_identity(
        find_package_root(),
        SERVE_ENTRY_POINT,
        measured_args,
        _load_signer(signing_key),
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
    )


class EnclaveRuntime:
    """Attester, identity and key retrieval for one server process."""

    def __init__(self, settings: EnclaveSettings, measured_args: Mapping[str, str]) -> None:
        self.settings = settings
        mode = settings.attestation
        if mode == "auto":
            mode = "gramine" if (DEV_ATTESTATION / "attestation_type").exists() else "simulated"
        self.mode = mode
        self._platform: SimPlatform | None = None
        self.identity: EnclaveIdentity | None = None  # known up front only in simulation
        self.attester: Attester
        if mode == "gramine":
            self.attester = GramineAttester()
        else:
            if settings.sim_platform is None or settings.signing_key is None:
                raise EnclaveError(
                    "no SGX (no /dev/attestation): simulation needs --sim_platform DIR and --signing_key PEM"
                )
            self._platform = SimPlatform.load(settings.sim_platform)
            self.identity = simulated_replica_identity(
                settings.signing_key,
                measured_args,
                isv_prod_id=settings.isv_prod_id,
                isv_svn=settings.isv_svn,
            )
            self.attester = SimulatedAttester(self._platform, self.identity)

    def obtain_wrap_key(self, cancel: threading.Event | None = None) -> pf.WrapKey:
        """The wrap key, released by the provisioning service after attestation (retries until the
        deadline; raises EnclaveError naming the last failure)."""
        s = self.settings
        try:
            client_settings = ClientSettings.from_files(
                s.servers, s.ca_chain, deadline_seconds=s.deadline_seconds
            )
        except ProvisioningError as e:
            raise EnclaveError(f"secret provisioning is misconfigured: {e}") from None
        who = "" if self.identity is None else f" as mr_enclave {self.identity.mr_enclave.hex()[:16]}..."
        _log.info("attesting (%s) to %s%s for secret %r", self.mode, s.servers, who, s.secret_name)
        client = SecretProvisioningClient(client_settings, self.attester, cancel=cancel)
        start = time.monotonic()
        try:
            key = client.fetch_wrap_key(s.secret_name)
        except ProvisioningError as e:
            raise EnclaveError(
                f"no key from secret provisioning after {client.attempts} attempts: {e}"
            ) from None
        _log.info(
            "key %r released after %d attempt(s) in %.2f s (fingerprint %s)",
            s.secret_name,
            client.attempts,
            time.monotonic() - start,
            key.fingerprint(),
        )
        return key

    def lease(
        self,
        names: Sequence[str],
        models: Sequence[str],
        *,
        cancel: threading.Event | None = None,
        deadline_seconds: float | None = None,
    ) -> Granted:
        """One attested session of the key lease (docs/releases.md): the granted ones of `names`, the
        release floor of each of `models` and the owner's lease bound. Raises EnclaveError."""
        s = self.settings
        try:
            client_settings = ClientSettings.from_files(
                s.servers, s.ca_chain, deadline_seconds=deadline_seconds or s.deadline_seconds
            )
        except ProvisioningError as e:
            raise EnclaveError(f"secret provisioning is misconfigured: {e}") from None
        client = SecretProvisioningClient(client_settings, self.attester, cancel=cancel)
        try:
            return client.lease(names, models)
        except ProvisioningError as e:
            raise EnclaveError(
                f"no keys from secret provisioning after {client.attempts} attempts: {e}"
            ) from None

    def install_key(self, name: str, key: pf.WrapKey, installer: KeyInstaller | None = None) -> None:
        """Under Gramine: hand the key to Gramine as key `name` (/dev/attestation/keys/NAME, as
        SECRET_PROVISION_SET_KEY does), so the manifest's encrypted mounts open and Gramine decrypts and
        checks every block of the model and ssl.cfg itself."""
        if self.mode != "gramine" and installer is None:
            raise EnclaveError("installing a key for encrypted mounts needs Gramine (/dev/attestation)")
        try:
            (installer or DevAttestationKeys()).install(name, key.raw())
        except ProvisioningError as e:
            raise EnclaveError(f"cannot install key {name!r} into Gramine: {e}") from None
        _log.info("key installed as Gramine key %r for the encrypted mounts", name)

    def evidence(self, nonce: bytes, server_spki: bytes) -> bytes:
        """Evidence for a client (see confserve.attestation._evidence), with collateral when known."""
        collateral = self._platform.collateral_json if self._platform is not None else None
        return make_evidence(self.attester, nonce, server_spki, collateral)
