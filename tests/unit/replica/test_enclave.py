"""The model server's enclave side: identity from the measured flags, key release over RA-TLS from a real
provisioning server on loopback, refusal when the identity is not approved, evidence for clients."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confserve import pf
from confserve.attestation import (
    AllowRule,
    Collateral,
    Policy,
    SimPlatform,
    StaticCollateralSource,
    TrustConfig,
    generate_signing_key,
    verify,
)
from confserve.attestation._evidence import new_nonce, verify_server_evidence
from confserve.provisioning import SecretProvisioningServer, SecretStore, ServerLimits, ServerSettings
from confserve.replica import EnclaveError, EnclaveRuntime, EnclaveSettings, serve_measured_args

WRAP = bytes(range(16))


def _args(**changes: object) -> dict[str, str]:
    base: dict[str, object] = {
        "models": "digits=models/digits",
        "ssl_config_file": "ssl.cfg",
        "ssl_config_bound_path": None,
        "provisioning_ca_sha256": "00" * 32,
        "secret_name": "default",
        "insecure": False,
        "allow_plaintext_models": False,
    }
    base.update(changes)
    return serve_measured_args(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("enclave")
    SimPlatform.init(root / "sim", now=int(time.time()))
    key = generate_signing_key()
    (root / "signer.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.crt"))
    issued = ca.issue_cert("localhost")
    (root / "server.pem").write_bytes(b"".join(b.bytes() for b in issued.cert_chain_pems))
    (root / "server.key").write_bytes(issued.private_key_pem.bytes())
    return {"root": root, "sim": root / "sim", "signer": root / "signer.pem", "ca": root / "ca.crt"}


def _settings(env: dict[str, Path], port: int, **changes: object) -> EnclaveSettings:
    base: dict[str, object] = {
        "servers": f"localhost:{port}",
        "ca_chain": env["ca"],
        "attestation": "simulated",
        "sim_platform": env["sim"],
        "signing_key": env["signer"],
        "deadline_seconds": 5.0,
    }
    base.update(changes)
    return EnclaveSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def provisioning(env: dict[str, Path]) -> Iterator[tuple[SecretProvisioningServer, list[Policy]]]:
    platform = SimPlatform.load(env["sim"])
    policies = [Policy(rules=(), allow_simulated=True)]
    chain = tuple(x509.load_pem_x509_certificates((env["root"] / "server.pem").read_bytes()))
    server = SecretProvisioningServer(
        ServerSettings(
            certificate_chain=chain,
            private_key=serialization.load_pem_private_key((env["root"] / "server.key").read_bytes(), None),  # type: ignore[arg-type]
            policy=lambda: policies[-1],
            secrets=lambda: SecretStore({"default": WRAP}),
            collateral=lambda: StaticCollateralSource(Collateral.from_json(platform.collateral_json)),
            trust=TrustConfig.simulated(platform.root_ca_der),
            listen_port=0,
            limits=ServerLimits(rate_limit_per_second=0),
        )
    )
    server.start()
    yield server, policies
    server.stop()


def test_identity_follows_the_measured_flags(env: dict[str, Path]) -> None:
    a = EnclaveRuntime(_settings(env, 1), _args())
    b = EnclaveRuntime(_settings(env, 2, isv_svn=3), _args())  # ports and svn do not change MRENCLAVE
    assert a.identity is not None
    assert b.identity is not None
    assert a.identity.mr_enclave == b.identity.mr_enclave
    assert b.identity.isv_svn == 3
    for change in (
        {"insecure": True},
        {"models": "digits=models/other"},
        {"provisioning_ca_sha256": "11" * 32},
    ):
        other = EnclaveRuntime(_settings(env, 1), _args(**change))
        assert other.identity is not None
        assert other.identity.mr_enclave != a.identity.mr_enclave, change
    with pytest.raises(EnclaveError, match="set by confserve"):
        serve_measured_args(
            models="m",
            ssl_config_file=None,
            ssl_config_bound_path=None,
            provisioning_ca_sha256="",
            secret_name="default",
            insecure=False,
            allow_plaintext_models=False,
            extra={"command": "x"},
        )


def test_simulation_needs_its_platform_and_signer(env: dict[str, Path]) -> None:
    with pytest.raises(EnclaveError, match="--sim_platform"):
        EnclaveRuntime(_settings(env, 1, sim_platform=None), _args())
    (env["root"] / "junk.pem").write_text("junk")
    with pytest.raises(EnclaveError, match="not an RSA PEM key"):
        EnclaveRuntime(_settings(env, 1, signing_key=env["root"] / "junk.pem"), _args())


def test_approved_enclave_gets_its_key(
    env: dict[str, Path], provisioning: tuple[SecretProvisioningServer, list[Policy]]
) -> None:
    server, policies = provisioning
    runtime = EnclaveRuntime(_settings(env, server.address[1]), _args())
    assert runtime.identity is not None
    policies.append(
        Policy(
            rules=(AllowRule(name="replica", mr_enclave=runtime.identity.mr_enclave),), allow_simulated=True
        )
    )
    server.reload()
    key = runtime.obtain_wrap_key()
    assert key == pf.WrapKey(WRAP)


def test_unapproved_enclave_never_gets_a_key(
    env: dict[str, Path], provisioning: tuple[SecretProvisioningServer, list[Policy]]
) -> None:
    server, policies = provisioning
    approved = EnclaveRuntime(_settings(env, server.address[1]), _args())
    assert approved.identity is not None
    policies.append(
        Policy(
            rules=(AllowRule(name="replica", mr_enclave=approved.identity.mr_enclave),), allow_simulated=True
        )
    )
    server.reload()
    tampered = EnclaveRuntime(_settings(env, server.address[1]), _args(insecure=True))
    with pytest.raises(EnclaveError, match="no key from secret provisioning"):
        tampered.obtain_wrap_key()


def test_unreachable_service_gives_up_at_the_deadline(env: dict[str, Path]) -> None:
    runtime = EnclaveRuntime(_settings(env, 9, deadline_seconds=0.5), _args())
    cancel = threading.Event()
    with pytest.raises(EnclaveError, match="attempts"):
        runtime.obtain_wrap_key(cancel)


def test_evidence_for_clients(env: dict[str, Path]) -> None:
    runtime = EnclaveRuntime(_settings(env, 1), _args())
    nonce = new_nonce()
    body = runtime.evidence(nonce, b"spki")
    platform = SimPlatform.load(env["sim"])
    trust = TrustConfig.simulated(platform.root_ca_der)
    evidence = verify_server_evidence(
        body, nonce, b"spki", lambda q, c: verify(q, Collateral.from_json(c or ""), trust, int(time.time()))
    )
    assert evidence.identity == runtime.identity
    assert json.loads(body)["collateral"] is not None


class FakeKeys:
    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}

    def install(self, name: str, key: bytes) -> None:
        self.keys[name] = key


def test_key_installed_for_gramine_encrypted_mounts(env: dict[str, Path], tmp_path: Path) -> None:
    runtime = EnclaveRuntime(_settings(env, 1), _args())
    key = pf.WrapKey(WRAP)
    with pytest.raises(EnclaveError, match="needs Gramine"):
        runtime.install_key("default", key)  # a simulated enclave has no Gramine to hand keys to
    fake = FakeKeys()
    runtime.install_key("default", key, fake)
    assert fake.keys == {"default": WRAP}
    # Gramine's /dev/attestation/keys semantics: the key file must already exist (declared by a mount).
    from confserve.provisioning import DevAttestationKeys

    (tmp_path / "keys").mkdir()
    with pytest.raises(EnclaveError, match="cannot install key"):
        runtime.install_key("default", key, DevAttestationKeys(tmp_path / "keys"))
    (tmp_path / "keys" / "default").write_bytes(b"")
    runtime.install_key("default", key, DevAttestationKeys(tmp_path / "keys"))
    assert (tmp_path / "keys" / "default").read_bytes() == WRAP
