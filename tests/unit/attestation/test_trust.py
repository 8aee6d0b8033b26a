"""Verifier trust from public material only: a published simulated platform, a root PEM, collateral."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from confserve.attestation import (
    EnclaveIdentity,
    SimPlatform,
    SimulatedAttester,
    VerificationError,
    load_simulated_root,
    verifier_trust,
    verify,
)

IDENTITY = EnclaveIdentity(mr_enclave=b"\x01" * 32, mr_signer=b"\x02" * 32, isv_prod_id=0, isv_svn=0)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("sim") / "platform", now=int(time.time()))


def test_published_directory_holds_no_private_key(platform: SimPlatform, tmp_path: Path) -> None:
    out = platform.publish(tmp_path / "public")
    assert sorted(p.name for p in out.iterdir()) == ["collateral.json", "root_ca.cert.pem"]
    for path in out.iterdir():
        assert b"PRIVATE KEY" not in path.read_bytes()
        assert path.stat().st_mode & 0o777 == 0o644


def test_a_quote_verifies_with_the_published_directory_alone(platform: SimPlatform, tmp_path: Path) -> None:
    public = platform.publish(tmp_path / "public")
    chosen = verifier_trust(sim_root=public)
    assert chosen.trust.is_simulated
    assert chosen.collateral is not None
    quote = SimulatedAttester(platform, IDENTITY).quote(bytes(64))
    now = int(time.time())
    evidence = verify(quote, chosen.collateral.get(quote, now), chosen.trust, now=now)
    assert evidence.identity == IDENTITY
    assert evidence.simulated


def test_root_from_a_pem_file_or_the_platform_directory(platform: SimPlatform, tmp_path: Path) -> None:
    assert platform.directory is not None
    from_dir = load_simulated_root(platform.directory)
    pem = tmp_path / "root.pem"
    shutil.copyfile(platform.directory / "root_ca.cert.pem", pem)
    assert load_simulated_root(pem) == from_dir
    assert from_dir.root_ca_der == platform.root_ca_der
    assert verifier_trust(sim_root=pem).collateral is None  # a PEM file alone names no collateral


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d, "holds no root_ca.cert.pem"),
        (lambda d: d / "missing.pem", "no such file"),
        (
            lambda d: (d / "bad.pem").write_text("not a certificate") and d / "bad.pem",
            "not a PEM certificate",
        ),
        (lambda d: (d / "big.pem").write_bytes(b"A" * 70000) and d / "big.pem", "too large"),
    ],
)
def test_bad_roots_are_named(tmp_path: Path, make: object, message: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(VerificationError, match=message):
        load_simulated_root(path)


def test_intel_by_default_and_one_collateral_source(platform: SimPlatform, tmp_path: Path) -> None:
    assert not verifier_trust().trust.is_simulated
    collateral = tmp_path / "collateral.json"
    collateral.write_text(platform.collateral_json)
    with pytest.raises(VerificationError, match="not both"):
        verifier_trust(collateral=collateral, pccs_url="https://pccs.example/")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(VerificationError, match="malformed"):
        verifier_trust(collateral=bad)


def test_simulated_quote_against_intel_says_what_to_do(platform: SimPlatform) -> None:
    quote = SimulatedAttester(platform, IDENTITY).quote(bytes(64))
    now = int(time.time())
    collateral = verifier_trust(sim_root=platform.directory).collateral
    assert collateral is not None
    with pytest.raises(VerificationError, match="non-Intel root: for a simulated platform, trust its root"):
        verify(quote, collateral.get(quote, now), verifier_trust().trust, now=now)
