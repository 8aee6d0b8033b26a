"""`confserve sim-platform` and `confserve attest`: exit codes and the JSON verdict."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from confserve.attestation import SimPlatform
from confserve.attestation._structs import parse_quote_v3
from confserve.cli import main
from tests.unit.attestation.dcap_helpers import (
    SGX_ADVISORIES,
    SGX_MR_ENCLAVE,
    SGX_NOW,
    SGX_STATUS,
    dcap_vectors,
)

REPORT_DATA_HEX = "ab" * 64
MR_ENCLAVE_HEX = "11" * 32
MR_SIGNER_HEX = "22" * 32


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def verdict(result: Result) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


@pytest.fixture
def sim(tmp_path: Path) -> Path:
    directory = tmp_path / "sim"
    result = run("sim-platform", "init", directory)
    assert result.exit_code == 0, result.output
    assert "root CA sha256" in result.stdout
    return directory


@pytest.fixture
def quote_file(sim: Path, tmp_path: Path) -> Path:
    out = tmp_path / "quote.bin"
    result = run(
        "attest", "quote", "--sim-platform", sim, "--report-data", REPORT_DATA_HEX, "--out", out,
        "--mr-enclave", MR_ENCLAVE_HEX, "--mr-signer", MR_SIGNER_HEX, "--isv-prod-id", "5", "--isv-svn", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_init_writes_private_keys_0600(sim: Path) -> None:
    for key in sim.glob("*.key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert SimPlatform.load(sim).settings.tcb_status == "UpToDate"


def test_init_options(tmp_path: Path) -> None:
    result = run(
        "sim-platform", "init", tmp_path / "p", "--tcb-status", "SWHardeningNeeded",
        "--advisory-id", "INTEL-SA-00615", "--validity-days", "3", "--pck-revoked",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    settings = SimPlatform.load(tmp_path / "p").settings
    assert settings.tcb_status == "SWHardeningNeeded"
    assert settings.advisory_ids == ("INTEL-SA-00615",)
    assert settings.validity_seconds == 3 * 86400
    assert settings.pck_revoked


def test_init_twice_fails_cleanly(sim: Path) -> None:
    result = run("sim-platform", "init", sim)
    assert result.exit_code == 1
    assert "already holds a simulated platform" in result.stderr


def test_quote_and_verify_simulated(quote_file: Path, sim: Path) -> None:
    body = parse_quote_v3(quote_file.read_bytes()).report_body
    assert body.report_data.hex() == REPORT_DATA_HEX
    result = run("attest", "verify-quote", quote_file, "--sim-platform", sim, "--allow-simulated")
    assert result.exit_code == 0, result.output
    out = verdict(result)
    assert out == {
        "accepted": True,
        "reason": "accepted",
        "status": "UpToDate",
        "advisories": [],
        "mr_enclave": MR_ENCLAVE_HEX,
        "mr_signer": MR_SIGNER_HEX,
        "isv_prod_id": 5,
        "isv_svn": 2,
        "report_data": REPORT_DATA_HEX,
        "debug": False,
        "simulated": True,
    }


def test_simulated_root_needs_allow_simulated(quote_file: Path, sim: Path) -> None:
    result = run("attest", "verify-quote", quote_file, "--sim-platform", sim)
    assert result.exit_code == 1
    out = verdict(result)
    assert out["accepted"] is False
    assert "--allow-simulated" in out["reason"]
    assert out["status"] is None


def test_simulated_quote_under_intel_root_fails(quote_file: Path, sim: Path) -> None:
    result = run("attest", "verify-quote", quote_file, "--sim-platform", sim, "--root", "intel")
    assert result.exit_code == 1
    assert "does not end at the trusted root" in verdict(result)["reason"]


def test_root_from_file(quote_file: Path, sim: Path) -> None:
    for name in ("root_ca.cert.pem",):
        pem = sim / name
        result = run("attest", "verify-quote", quote_file, "--collateral", sim / "collateral.json",
                     "--root", pem, "--allow-simulated")  # fmt: skip
        assert result.exit_code == 0, result.output
    der = sim.parent / "root.der"
    der.write_bytes(SimPlatform.load(sim).root_ca_der)
    result = run("attest", "verify-quote", quote_file, "--collateral", sim / "collateral.json",
                 "--root", der, "--allow-simulated")  # fmt: skip
    assert result.exit_code == 0, result.output
    bad = sim.parent / "bad.der"
    bad.write_bytes(b"not a certificate")
    result = run("attest", "verify-quote", quote_file, "--collateral", sim / "collateral.json",
                 "--root", bad, "--allow-simulated")  # fmt: skip
    assert result.exit_code == 1
    assert "not a PEM or DER certificate" in result.stderr


def test_expired_collateral_then_refresh(quote_file: Path, sim: Path) -> None:
    later = int(time.time()) + 31 * 86400
    result = run("attest", "verify-quote", quote_file, "--sim-platform", sim, "--allow-simulated",
                 "--now", str(later))  # fmt: skip
    assert result.exit_code == 1
    assert verdict(result)["accepted"] is False
    result = run("sim-platform", "refresh", sim, "--validity-days", "60")
    assert result.exit_code == 0, result.output
    assert "next update" in result.stdout
    result = run("attest", "verify-quote", quote_file, "--sim-platform", sim, "--allow-simulated",
                 "--now", str(later))  # fmt: skip
    assert result.exit_code == 0, result.output


def test_refresh_changes_status_and_policy_refuses(quote_file: Path, sim: Path) -> None:
    result = run(
        "sim-platform", "refresh", sim, "--tcb-status", "OutOfDate", "--advisory-id", "INTEL-SA-00828"
    )
    assert result.exit_code == 0, result.output
    result = run("attest", "verify-quote", quote_file, "--sim-platform", sim, "--allow-simulated")
    assert result.exit_code == 1
    out = verdict(result)
    assert (out["status"], out["advisories"]) == ("OutOfDate", ["INTEL-SA-00828"])
    assert out["reason"] == "TCB status OutOfDate not allowed"
    result = run("sim-platform", "refresh", sim, "--pck-revoked")
    assert result.exit_code == 0, result.output
    settings = SimPlatform.load(sim).settings
    assert (settings.tcb_status, settings.pck_revoked) == ("OutOfDate", True)
    result = run("attest", "verify-quote", quote_file, "--sim-platform", sim, "--allow-simulated")
    assert result.exit_code == 1
    assert "DCAP verification failed" in verdict(result)["reason"]


def test_policy_file(quote_file: Path, sim: Path, tmp_path: Path) -> None:
    run(
        "sim-platform", "refresh", sim, "--tcb-status", "SWHardeningNeeded", "--advisory-id", "INTEL-SA-00615"
    )
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "version = 1\n"
        "allow_simulated = true\n"
        'allowed_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]\n'
        'allowed_advisory_ids = ["INTEL-SA-00615"]\n'
        "[[allow]]\n"
        'name = "app"\n'
        f'mr_enclave = "{MR_ENCLAVE_HEX}"\n'
    )
    result = run("attest", "verify-quote", quote_file, "--sim-platform", sim, "--allow-simulated",
                 "--policy", policy)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert verdict(result)["status"] == "SWHardeningNeeded"
    policy.write_text(policy.read_text().replace(MR_ENCLAVE_HEX, "33" * 32))
    result = run("attest", "verify-quote", quote_file, "--sim-platform", sim, "--allow-simulated",
                 "--policy", policy)  # fmt: skip
    assert result.exit_code == 1
    assert "mr_enclave" in verdict(result)["reason"]


def test_real_vector_with_collateral_file() -> None:
    vectors = dcap_vectors()
    args = (
        "attest",
        "verify-quote",
        vectors / "sgx_quote",
        "--collateral",
        vectors / "sgx_quote_collateral.json",
    )
    result = run(*args, "--now", str(SGX_NOW))
    assert result.exit_code == 1  # verified, but the default policy accepts only UpToDate
    out = verdict(result)
    assert out["status"] == SGX_STATUS
    assert out["advisories"] == list(SGX_ADVISORIES)
    assert out["mr_enclave"] == SGX_MR_ENCLAVE
    assert out["simulated"] is False
    assert out["reason"] == f"TCB status {SGX_STATUS} not allowed"
    result = run(*args, "--now", str(SGX_NOW), "--root", vectors / "intel_sgx_root_ca.der")
    assert verdict(result)["status"] == SGX_STATUS  # Intel's root given as a file is still Intel's
    result = run(*args, "--now", str(SGX_NOW + 10**6))
    assert result.exit_code == 1
    assert verdict(result)["status"] is None


def test_tdx_vector_is_refused() -> None:
    vectors = dcap_vectors()
    result = run("attest", "verify-quote", vectors / "tdx_quote", "--collateral",
                 vectors / "tdx_quote_collateral.json", "--now", "1752919234")  # fmt: skip
    assert result.exit_code == 1
    assert "TDX quote" in verdict(result)["reason"]


def test_usage_errors(quote_file: Path, sim: Path) -> None:
    both = run(
        "attest", "verify-quote", quote_file, "--sim-platform", sim, "--collateral", sim / "collateral.json"
    )
    assert both.exit_code == 2
    assert "exactly one of" in both.stderr
    neither = run("attest", "verify-quote", quote_file)
    assert neither.exit_code == 2
    for bad in ("zz" * 64, "ab" * 63):
        result = run("attest", "quote", "--sim-platform", sim, "--report-data", bad, "--out", sim / "q")
        assert result.exit_code == 2
    result = run("attest", "quote", "--sim-platform", sim, "--report-data", REPORT_DATA_HEX,
                 "--out", sim / "q", "--mr-signer", "00")  # fmt: skip
    assert result.exit_code == 2
    assert "32 bytes" in result.stderr


def test_debug_quote_is_refused(sim: Path, tmp_path: Path) -> None:
    out = tmp_path / "debug.bin"
    result = run(
        "attest", "quote", "--sim-platform", sim, "--report-data", REPORT_DATA_HEX, "--out", out, "--debug"
    )
    assert result.exit_code == 0, result.output
    result = run("attest", "verify-quote", out, "--sim-platform", sim, "--allow-simulated")
    assert result.exit_code == 1
    assert "Debug mode is enabled" in verdict(result)["reason"]


def test_missing_platform_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run("attest", "quote", "--sim-platform", tmp_path / "empty", "--report-data", REPORT_DATA_HEX,
                 "--out", tmp_path / "q")  # fmt: skip
    assert result.exit_code == 1
    assert "cannot load the simulated platform" in result.stderr


def test_show_cert(sim: Path, tmp_path: Path) -> None:
    from confserve.attestation import (
        EnclaveIdentity,
        RaTlsFormat,
        SimulatedAttester,
        create_ratls_credentials,
    )

    identity = EnclaveIdentity(mr_enclave=b"\x11" * 32, mr_signer=b"\x22" * 32, isv_prod_id=3, isv_svn=4)
    creds = create_ratls_credentials(SimulatedAttester(SimPlatform.load(sim), identity), RaTlsFormat.TCG_DICE)
    cert = tmp_path / "ratls.pem"
    cert.write_bytes(creds.certificate_pem())
    result = run("attest", "show-cert", cert)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["verified"] is False
    assert shown["format"] == "gramine-1.8"
    assert shown["mr_enclave"] == "11" * 32
    assert shown["isv_svn"] == 4
    result = run("attest", "show-cert", cert, "--sim-platform", sim, "--allow-simulated")
    assert verdict(result)["accepted"] is True
    assert result.exit_code == 0
    result = run("attest", "show-cert", cert, "--sim-platform", sim)
    assert result.exit_code == 1
    assert verdict(result)["accepted"] is False
    plain = tmp_path / "plain.pem"
    plain.write_bytes(b"not a certificate")
    result = run("attest", "show-cert", plain)
    assert result.exit_code == 1
    assert "not a parsable X.509 certificate" in result.output


def test_publish_writes_the_public_part_only(sim: Path, tmp_path: Path) -> None:
    result = run("sim-platform", "publish", sim, "--out", tmp_path / "public")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "public").iterdir()) == ["collateral.json", "root_ca.cert.pem"]
    assert (tmp_path / "public" / "root_ca.cert.pem").read_bytes() == (sim / "root_ca.cert.pem").read_bytes()
    refused = run("sim-platform", "publish", sim, "--out", sim)
    assert refused.exit_code == 2
    assert "private keys" in refused.output
