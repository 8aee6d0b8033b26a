"""Interop: an mbedTLS client (the TLS stack Gramine's secret-provisioning library uses) against confserve's
server, over TLS 1.2 with RA-TLS client certificates of every Gramine generation.

The client (`secret_prov_mbedtls_client.c`) is compiled here against the system's libmbedtls (Debian's
libmbedtls-dev, 2.28), which scripts/bootstrap installs. Without them the tests fail under CI and are
skipped with the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confserve.attestation import (
    AllowRule,
    Collateral,
    EnclaveIdentity,
    Policy,
    RaTlsFormat,
    SimPlatform,
    SimulatedAttester,
    StaticCollateralSource,
    TrustConfig,
    create_ratls_credentials,
)
from confserve.owner import key_service_pki
from confserve.provisioning import (
    SecretProvisioningServer,
    SecretStore,
    ServerLimits,
    ServerSettings,
    verify_audit_log,
)

HERE = Path(__file__).resolve().parent
NOW = int(time.time())
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
GOOD = EnclaveIdentity(mr_enclave=b"\x11" * 32, mr_signer=b"\x22" * 32, isv_prod_id=0, isv_svn=0)


@pytest.fixture(scope="module")
def client_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc")
    if compiler is None or not Path("/usr/include/mbedtls/ssl.h").exists():
        reason = "needs a C compiler and libmbedtls-dev (scripts/bootstrap installs gcc libmbedtls-dev)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI ran bootstrap: a missing tool is an error, not a skip
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("mbedtls") / "client"
    subprocess.run(
        [compiler, "-O1", "-o", str(out), str(HERE / "secret_prov_mbedtls_client.c"),
         "-lmbedtls", "-lmbedx509", "-lmbedcrypto"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[SecretProvisioningServer, Path, SimPlatform]]:
    base = tmp_path_factory.mktemp("svc")
    ca_pem, cert_pem, key_pem = key_service_pki(
        ("localhost", "127.0.0.1"), datetime.datetime.now(datetime.UTC)
    )
    (base / "ca.crt").write_bytes(ca_pem)
    platform = SimPlatform.create(now=NOW)
    policy = Policy(rules=(AllowRule(name="gramine", mr_enclave=GOOD.mr_enclave),), allow_simulated=True)
    store = SecretStore({"default": KEY})
    collateral = StaticCollateralSource(Collateral.from_json(platform.collateral_json))
    settings = ServerSettings(
        certificate_chain=tuple(x509.load_pem_x509_certificates(cert_pem)),
        private_key=serialization.load_pem_private_key(key_pem, None),  # type: ignore[arg-type]
        policy=lambda: policy,
        secrets=lambda: store,
        collateral=lambda: collateral,
        trust=TrustConfig.simulated(platform.root_ca_der),
        listen_port=0,
        audit_log=base / "audit.log",
        audit_fsync=False,
        limits=ServerLimits(rate_limit_per_second=0, handshake_timeout_seconds=5, read_timeout_seconds=5),
        clock=lambda: NOW,
    )
    server = SecretProvisioningServer(settings)
    server.start()
    try:
        yield server, base, platform
    finally:
        server.stop()


def run_client(
    binary: Path,
    base: Path,
    port: int,
    fmt: RaTlsFormat,
    attester: SimulatedAttester,
    host: str = "localhost",
) -> subprocess.CompletedProcess[str]:
    credentials = create_ratls_credentials(attester, fmt)
    cert, key = base / f"ratls-{fmt.value}.crt", base / f"ratls-{fmt.value}.key"
    cert.write_bytes(credentials.certificate_pem())
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a throwaway test key
    with os.fdopen(fd, "wb") as handle:
        handle.write(credentials.private_key_pem())
    try:
        return subprocess.run(
            [str(binary), host, str(port), str(base / "ca.crt"), str(cert), str(key)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        with contextlib.suppress(FileNotFoundError):
            key.unlink()


@pytest.mark.parametrize("fmt", list(RaTlsFormat))
def test_mbedtls_client_gets_the_key(
    client_binary: Path, service: tuple[SecretProvisioningServer, Path, SimPlatform], fmt: RaTlsFormat
) -> None:
    server, base, platform = service
    result = run_client(client_binary, base, server.address[1], fmt, SimulatedAttester(platform, GOOD))
    assert result.returncode == 0, result.stderr
    secret_hex, version = result.stdout.split()
    assert bytes.fromhex(secret_hex) == KEY
    assert version == "TLSv1.2"


def test_mbedtls_client_refused_gets_nothing(
    client_binary: Path, service: tuple[SecretProvisioningServer, Path, SimPlatform]
) -> None:
    server, base, platform = service
    stranger = EnclaveIdentity(mr_enclave=b"\x99" * 32, mr_signer=b"\x22" * 32, isv_prod_id=0, isv_svn=0)
    result = run_client(
        client_binary, base, server.address[1], RaTlsFormat.LEGACY_EC, SimulatedAttester(platform, stranger)
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    assert verify_audit_log(base / "audit.log").ok


def test_mbedtls_client_checks_the_host_name(
    client_binary: Path, service: tuple[SecretProvisioningServer, Path, SimPlatform], tmp_path: Path
) -> None:
    server, _, platform = service
    ca = trustme.CA()
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem.bytes())
    attester = SimulatedAttester(platform, GOOD)
    for name, expected in (("attestation.service.com", 2), ("localhost", 0)):
        issued = ca.issue_cert(name)
        settings = dataclasses.replace(
            server._settings,
            certificate_chain=tuple(x509.load_pem_x509_certificates(issued.cert_chain_pems[0].bytes())),
            private_key=serialization.load_pem_private_key(issued.private_key_pem.bytes(), None),
            audit_log=None,
        )
        with SecretProvisioningServer(settings) as other:
            result = run_client(client_binary, tmp_path, other.address[1], RaTlsFormat.LEGACY_EC, attester)
        assert result.returncode == expected, result.stderr  # connects as "localhost"
        if expected:
            assert result.stdout == ""
            assert "verif" in result.stderr.lower()
