"""`confserve policy`: measurements in, a policy that approves exactly them out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from confserve.attestation import EnclaveIdentity, VerifiedEvidence, parse_policy_toml
from confserve.cli import main

IDENT = EnclaveIdentity(mr_enclave=b"\x11" * 32, mr_signer=b"\x22" * 32, isv_prod_id=3, isv_svn=4)


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["policy", *map(str, args)])


def measurement(tmp_path: Path, ident: EnclaveIdentity, name: str, *, one_line: bool = True) -> Path:
    doc = {"mr_enclave": ident.mr_enclave.hex(), "mr_signer": ident.mr_signer.hex(),
           "isv_prod_id": ident.isv_prod_id, "isv_svn": ident.isv_svn, "measured_args": {"command": "serve"}}  # fmt: skip
    path = tmp_path / name
    path.write_text(json.dumps(doc) + "\n" if one_line else json.dumps(doc, indent=2))
    return path


def evidence(ident: EnclaveIdentity, *, simulated: bool = True) -> VerifiedEvidence:
    return VerifiedEvidence(identity=ident, tcb_status="UpToDate", advisory_ids=(), simulated=simulated,
                            debug=False, report_data=bytes(64))  # fmt: skip


def test_policy_pins_everything_and_accepts_exactly_the_measurement(tmp_path: Path) -> None:
    out = tmp_path / "policy.toml"
    result = run(measurement(tmp_path, IDENT, "m.json"), "--allow-simulated", "--out", out)
    assert result.exit_code == 0, result.output
    policy = parse_policy_toml(out.read_bytes())
    (rule,) = policy.rules
    assert (rule.mr_enclave, rule.mr_signer, rule.isv_prod_id, rule.min_isv_svn) == (
        b"\x11" * 32,
        b"\x22" * 32,
        3,
        4,
    )
    assert policy.evaluate(evidence(IDENT)).accepted
    for other in (
        EnclaveIdentity(b"\x99" * 32, IDENT.mr_signer, 3, 4),  # other code
        EnclaveIdentity(IDENT.mr_enclave, b"\x99" * 32, 3, 4),  # other signer
        EnclaveIdentity(IDENT.mr_enclave, IDENT.mr_signer, 3, 3),  # older SVN
    ):
        assert not policy.evaluate(evidence(other)).accepted


def test_simulated_evidence_needs_the_flag(tmp_path: Path) -> None:
    out = tmp_path / "policy.toml"
    assert run(measurement(tmp_path, IDENT, "m.json", one_line=False), "--out", out).exit_code == 0
    assert not parse_policy_toml(out.read_bytes()).evaluate(evidence(IDENT)).accepted
    assert parse_policy_toml(out.read_bytes()).evaluate(evidence(IDENT, simulated=False)).accepted


def test_several_measurements_and_no_silent_overwrite(tmp_path: Path) -> None:
    other = EnclaveIdentity(b"\x33" * 32, b"\x22" * 32, 3, 5)
    out = tmp_path / "policy.toml"
    paths = [measurement(tmp_path, IDENT, "a.json"), measurement(tmp_path, other, "b.json")]
    assert run(*paths, "--out", out).exit_code == 0
    assert len(parse_policy_toml(out.read_bytes()).rules) == 2
    again = run(*paths, "--out", out)
    assert again.exit_code == 1
    assert "--force" in again.output
    assert run(*paths, "--out", out, "--force").exit_code == 0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b'{"mr_enclave": "zz"}',
        b'{"mr_enclave": "11"}',
        b"\xff",
        b'{"a": 1}',
        b"{" * 2_000_000,
    ],
)
def test_bad_measurements_are_refused(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    result = run(bad, "--out", tmp_path / "policy.toml")
    assert result.exit_code == 1
    assert "bad.json" in result.output
    assert not (tmp_path / "policy.toml").exists()


def test_missing_file(tmp_path: Path) -> None:
    result = run(tmp_path / "nope.json", "--out", tmp_path / "p.toml")
    assert result.exit_code == 1
    assert "cannot read" in result.output
