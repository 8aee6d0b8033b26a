"""The whole confidential flow on loopback: a model server process attests to the secret-provisioning
service, gets the wrap key, decrypts ssl.cfg and the model in memory, serves over mutual TLS, and proves
to an attesting client that it is the approved enclave. Refusals: another identity never gets the key, a
wrong key never serves, the client refuses an unapproved server. No plaintext lands on disk."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import trustme
from click.testing import CliRunner
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
)
from confserve.cli import main
from confserve.client import ClientError, ClientTls, PredictClient
from confserve.client._attest import AttestationCheck
from confserve.cluster._local import free_port
from confserve.owner import generate_tls_material
from confserve.provisioning import SecretProvisioningServer, SecretStore, ServerLimits, ServerSettings
from tests.unit.serving.models import copy_model, expected_probabilities

X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], dtype=np.float32)
LINE = re.compile(r"serving gRPC on port (\d+), REST on port (\d+)")


@dataclass
class Env:
    root: Path
    host: Path
    sim: Path
    signer: Path
    key: pf.WrapKey
    client: Path
    prov_chain: tuple[x509.Certificate, ...]
    prov_key: object

    def flags(self, port: int, *extra: str) -> list[str]:
        return [
            "--host=127.0.0.1", "--port=0", f"--rest_api_port={free_port()}", "--model_name=clf",
            "--model_base_path=models/clf",
            "--ssl_config_file=ssl.cfg", f"--secret_provision_servers=localhost:{port}",
            "--secret_provision_ca_chain_path=prov-ca.crt", f"--sim_platform={self.sim}",
            f"--signing_key={self.signer}", "--secret_provision_deadline_seconds=20", *extra,
        ]  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("attested")
    host = root / "host"
    host.mkdir()
    SimPlatform.init(root / "sim", now=int(time.time()))
    signer = generate_signing_key()
    (root / "signer.pem").write_bytes(
        signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    key = pf.WrapKey.generate()
    copy_model(root / "plain" / "clf", (1,))
    pf.encrypt_tree(
        root / "plain" / "clf" / "1", host / "models" / "clf" / "1", key, bind_root="models/clf/1"
    )
    generate_tls_material(root / "tls", "localhost", "client.local", wrap_key=key)
    shutil.copyfile(root / "tls" / "server" / "ssl.cfg", host / "ssl.cfg")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(host / "prov-ca.crt"))
    issued = ca.issue_cert("localhost")
    chain = tuple(x509.load_pem_x509_certificates(b"".join(b.bytes() for b in issued.cert_chain_pems)))
    prov_key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    return Env(root, host, root / "sim", root / "signer.pem", key, root / "tls" / "client", chain, prov_key)


def measurement(env: Env, *extra: str) -> bytes:
    old = os.getcwd()
    os.chdir(env.host)
    try:
        result = CliRunner().invoke(main, ["serve", *env.flags(1, *extra), "--print_measurement"])
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    import json

    return bytes.fromhex(json.loads(result.output)["mr_enclave"])


@dataclass
class Provisioning:
    server: SecretProvisioningServer
    policies: list[Policy]
    secrets: list[bytes]

    @property
    def port(self) -> int:
        return self.server.address[1]

    def approve(self, mr_enclave: bytes, secret: bytes) -> None:
        self.policies.append(
            Policy(rules=(AllowRule(name="replica", mr_enclave=mr_enclave),), allow_simulated=True)
        )
        self.secrets.append(secret)
        assert self.server.reload()


@pytest.fixture
def provisioning(env: Env) -> Iterator[Provisioning]:
    platform = SimPlatform.load(env.sim)
    policies, secrets = [Policy(rules=(), allow_simulated=True)], [bytes(16)]
    server = SecretProvisioningServer(
        ServerSettings(
            certificate_chain=env.prov_chain,
            private_key=env.prov_key,  # type: ignore[arg-type]
            policy=lambda: policies[-1],
            secrets=lambda: SecretStore({"default": secrets[-1]}),
            collateral=lambda: StaticCollateralSource(Collateral.from_json(platform.collateral_json)),
            trust=TrustConfig.simulated(platform.root_ca_der),
            listen_port=0,
            audit_log=env.root / f"audit-{time.monotonic_ns()}.log",
            limits=ServerLimits(rate_limit_per_second=0),
        )
    )
    server.start()
    yield Provisioning(server, policies, secrets)
    server.stop()


def start(env: Env, args: list[str]) -> subprocess.Popen[str]:
    (env.root / "tmp").mkdir(exist_ok=True)
    with (env.root / "serve.log").open("a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "confserve", "serve", *args],
            cwd=env.host,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "TMPDIR": str(env.root / "tmp")},
        )


def ports(process: subprocess.Popen[str], env: Env) -> tuple[int, int]:
    assert process.stdout is not None
    line = process.stdout.readline()
    match = LINE.search(line)
    assert match, (line, (env.root / "serve.log").read_text()[-3000:])
    return int(match.group(1)), int(match.group(2))


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.communicate(timeout=60)
    assert process.returncode == 0


def check(env: Env, mr_enclave: bytes) -> AttestationCheck:
    platform = SimPlatform.load(env.sim)
    policy = Policy(rules=(AllowRule(name="approved", mr_enclave=mr_enclave),), allow_simulated=True)
    return AttestationCheck(policy, TrustConfig.simulated(platform.root_ca_der))


def test_attested_start_serve_and_attested_client(env: Env, provisioning: Provisioning) -> None:
    mr_enclave = measurement(env)
    provisioning.approve(mr_enclave, env.key.raw())
    process = start(env, env.flags(provisioning.port))
    try:
        grpc_port, rest_port = ports(process, env)
        tls = ClientTls.from_bundle(env.client, server_name="localhost")
        for protocol, port in (("grpc", grpc_port), ("rest", rest_port)):
            with PredictClient(f"127.0.0.1:{port}", protocol=protocol, tls=tls) as client:  # type: ignore[arg-type]
                attested = client.attest(check(env, mr_enclave))
                assert attested.evidence.identity.mr_enclave == mr_enclave
                assert attested.decision.rule == "approved"
                out = client.predict("clf", {"x": X})
                np.testing.assert_allclose(out["probabilities"], expected_probabilities(X), rtol=1e-5)
                with pytest.raises(ClientError, match="refused by policy"):
                    client.attest(check(env, bytes(32)))
        # Intel's root only: the simulated server is refused before any data is sent.
        intel_only = AttestationCheck(check(env, mr_enclave).policy, TrustConfig.intel())
        with (
            PredictClient(f"127.0.0.1:{grpc_port}", tls=tls) as client,
            pytest.raises(ClientError, match="failed"),
        ):
            client.attest(intel_only)
        # No plaintext of the model, or of the server's TLS key, anywhere the server could write.
        plain_files = [p.read_bytes() for p in (env.root / "plain" / "clf" / "1").rglob("*") if p.is_file()]
        secrets = [data[:64] for data in plain_files if len(data) >= 64]
        secrets.append((env.root / "tls" / "owner" / "server.key").read_bytes()[40:104])
        for area in (env.host, env.root / "tmp"):
            for path in area.rglob("*"):
                if path.is_file():
                    content = path.read_bytes()
                    assert not any(s in content for s in secrets), path
    finally:
        stop(process)


def test_other_identity_never_gets_the_key(env: Env, provisioning: Provisioning) -> None:
    provisioning.approve(measurement(env), env.key.raw())
    # The host points the replica at another model: a different measurement, so no key. (Another spelling
    # of the same path, e.g. models/./clf, is the same model and the same identity: tests/unit/replica.)
    args = [
        a if not a.startswith("--model_base_path") else "--model_base_path=models/other"
        for a in env.flags(provisioning.port)
    ]
    args = [
        a if not a.startswith("--secret_provision_deadline") else "--secret_provision_deadline_seconds=2"
        for a in args
    ]
    process = start(env, args)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "serving" not in out
    log = (env.root / "serve.log").read_text()
    assert "no key from secret provisioning" in log
    assert "refused" in log


def test_wrong_key_never_serves(env: Env, provisioning: Provisioning) -> None:
    provisioning.approve(measurement(env), pf.WrapKey.generate().raw())
    process = start(env, env.flags(provisioning.port))
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "serving" not in out
    assert "authentication" in (env.root / "serve.log").read_text()


def test_cli_predict_with_attestation(env: Env, provisioning: Provisioning, tmp_path: Path) -> None:
    mr_enclave = measurement(env)
    provisioning.approve(mr_enclave, env.key.raw())
    header = "version = 1\nallow_simulated = true\n[[allow]]\n"
    (tmp_path / "policy.toml").write_text(f'{header}name = "replica"\nmr_enclave = "{mr_enclave.hex()}"\n')
    (tmp_path / "other.toml").write_text(
        f'version = 1\nallow_simulated = true\n[[allow]]\nname = "other"\nmr_enclave = "{"ab" * 32}"\n'
    )
    np.save(tmp_path / "x.npy", X)
    process = start(env, env.flags(provisioning.port))
    try:
        grpc_port, _ = ports(process, env)
        base = [f"127.0.0.1:{grpc_port}", "-m", "clf", "--tls-bundle", str(env.client),
                "--server-name", "localhost", "-i", str(tmp_path / "x.npy"),
                "--attest-sim-platform", str(env.sim)]  # fmt: skip
        result = CliRunner().invoke(main, ["predict", *base, "--attest", str(tmp_path / "policy.toml")])
        assert result.exit_code == 0, result.output
        assert f"attested: simulated enclave mr_enclave {mr_enclave.hex()}" in result.output
        assert "top-3" in result.output
        result = CliRunner().invoke(main, ["predict", *base, "--attest", str(tmp_path / "other.toml")])
        assert result.exit_code == 1
        assert "refused by policy" in result.output
        assert "top-3" not in result.output
    finally:
        stop(process)


def test_behaviour_flags_are_measured_and_availability_flags_are_not(env: Env) -> None:
    base = measurement(env)
    assert measurement(env, "--max_concurrent_requests=7", "--shutdown_grace_seconds=9") == base
    assert measurement(env, "--enable_model_warmup") != base
    assert measurement(env, "--enable_batching") != base
    (env.host / "monitoring.cfg").write_text('prometheus_config { enable: true path: "/metrics" }')
    assert measurement(env, "--monitoring_config_file=monitoring.cfg") != base
