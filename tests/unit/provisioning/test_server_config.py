"""Server settings, limits and the loaders for policy, secrets, collateral and trust (no sockets)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confserve.attestation import SimPlatform, TrustConfig
from confserve.provisioning import (
    ConfigError,
    SecretProvisioningServer,
    SecretStore,
    ServerLimits,
    ServerSettings,
    collateral_from_file,
    collateral_from_pccs,
    collateral_from_sim_platform,
    policy_from_file,
    secrets_from_files,
    trust_for_sim_platform,
)
from confserve.provisioning._tls import client_context, server_context

NOW = int(time.time())


@pytest.fixture(scope="module")
def plat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plat") / "p"
    SimPlatform.init(path, now=NOW)
    return path


def test_limits_and_settings_validation() -> None:
    with pytest.raises(ConfigError):
        ServerLimits(handshake_timeout_seconds=0)
    with pytest.raises(ConfigError):
        ServerLimits(max_connections=0)
    for field in ("max_pending_connections", "max_pending_per_address", "refusal_summary_seconds"):
        with pytest.raises(ConfigError, match="positive"):
            ServerLimits(**{field: 0})  # type: ignore[arg-type]
    assert ServerLimits(rate_limit_per_second=0).rate_limit_per_second == 0  # 0 disables the rate limit
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    chain = tuple(x509.load_pem_x509_certificates(issued.cert_chain_pems[0].bytes()))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    common = {
        "private_key": key,
        "policy": lambda: None,
        "secrets": lambda: SecretStore({}),
        "collateral": lambda: None,
        "trust": TrustConfig.intel(),
    }
    with pytest.raises(ConfigError, match="ports"):
        ServerSettings(certificate_chain=chain, listen_port=70000, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="empty"):
        ServerSettings(certificate_chain=(), **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="holds no certificate"):
        server_context((), key)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="holds no certificate"):
        client_context((), chain[0], key)  # type: ignore[arg-type]
    other_key = serialization.load_pem_private_key(ca.issue_cert("x").private_key_pem.bytes(), None)
    with pytest.raises(ConfigError, match="does not match"):
        server_context(chain, other_key)  # type: ignore[arg-type]


def test_policy_loaders(tmp_path: Path) -> None:
    ra = tmp_path / "ra_config.json"
    ra.write_text(
        '{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",'
        '"mrs":[{"mr_enclave":"'
        + "11" * 32
        + '","mr_signer":"'
        + "22" * 32
        + '","isv_prod_id":"0","isv_svn":"0"}]}'
    )
    policy = policy_from_file(ra, ra_config=True, allow_simulated=True)()
    assert policy.allow_simulated
    assert policy.rules[0].secrets == ("default",)
    assert policy_from_file(ra, ra_config=False)().allow_simulated is False
    with pytest.raises(ConfigError, match="cannot read"):
        policy_from_file(tmp_path / "missing.json", ra_config=True)()


def test_secret_collateral_and_trust_loaders(tmp_path: Path, plat_dir: Path) -> None:
    secret = tmp_path / "k"
    secret.write_bytes(b"k" * 16)
    os.chmod(secret, 0o600)
    assert secrets_from_files((("default", secret),))().names() == {"default"}
    source = collateral_from_sim_platform(plat_dir)()
    assert source.get(b"", NOW).next_update > NOW
    assert collateral_from_file(plat_dir / "collateral.json")().get(b"", NOW).next_update > NOW
    assert trust_for_sim_platform(plat_dir).is_simulated
    missing = tmp_path / "none"  # the loaders' errors name what is missing (the platform's own wording)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(missing))}: "):
        collateral_from_sim_platform(missing)()
    with pytest.raises(ConfigError, match=f"^{re.escape(str(missing))}: "):
        trust_for_sim_platform(missing)
    assert collateral_from_pccs("https://pccs.invalid/sgx/certification/v4/")() is not None


def test_server_refuses_bad_configuration(tmp_path: Path, plat_dir: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    chain = tuple(x509.load_pem_x509_certificates(issued.cert_chain_pems[0].bytes()))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    settings = ServerSettings(
        certificate_chain=chain,
        private_key=key,  # type: ignore[arg-type]
        policy=policy_from_file(tmp_path / "missing.toml", ra_config=False),
        secrets=lambda: SecretStore({}),
        collateral=collateral_from_sim_platform(plat_dir),
        trust=trust_for_sim_platform(plat_dir),
    )
    with pytest.raises(ConfigError, match="cannot read policy file"):
        SecretProvisioningServer(settings)


def test_settings_from_files(tmp_path: Path, plat_dir: Path) -> None:
    issued = trustme.CA().issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    issued.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    secret = tmp_path / "k"
    secret.write_bytes(b"k" * 16)
    os.chmod(secret, 0o600)
    files = (
        tmp_path / "server.crt",
        tmp_path / "server.key",
        tmp_path / "policy.toml",
        ["default=" + str(secret)],
    )
    simulated = ServerSettings.from_files(*files, sim_platform=plat_dir, listen_port=0)
    assert simulated.trust.is_simulated
    assert simulated.listen_port == 0  # the other fields pass through
    assert (
        simulated.certificate_chain[0].subject
        == x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).subject
    )
    assert simulated.secrets().names() == {"default"}
    assert simulated.collateral().get(b"", NOW).next_update > NOW  # the platform's collateral
    real = ServerSettings.from_files(*files, collateral=plat_dir / "collateral.json")
    assert not real.trust.is_simulated  # Intel's root
    assert real.collateral().get(b"", NOW).next_update > NOW
    assert not ServerSettings.from_files(*files, pccs_url="https://pccs.invalid/v4/").trust.is_simulated
    with pytest.raises(ConfigError, match="collateral file or a PCCS URL"):
        ServerSettings.from_files(*files)
    with pytest.raises(ConfigError, match="NAME=FILE"):
        ServerSettings.from_files(*files[:3], ["default"], sim_platform=plat_dir)
