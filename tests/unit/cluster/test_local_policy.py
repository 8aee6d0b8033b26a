"""The policy `confserve up` writes pins the whole identity, not MRENCLAVE alone."""

from __future__ import annotations

from pathlib import Path

from confserve.attestation import parse_policy_toml
from confserve.cluster._local import LocalCluster
from confserve.cluster._workspace import Workspace


def test_up_policy_pins_signer_product_and_svn(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.owner.mkdir()
    identity = {"mr_enclave": "11" * 32, "mr_signer": "22" * 32, "isv_prod_id": 7, "isv_svn": 2}
    LocalCluster(ws).write_policy(identity)
    policy = parse_policy_toml(ws.policy.read_bytes())
    assert policy.allow_simulated
    (rule,) = policy.rules
    assert rule.mr_enclave == bytes.fromhex("11" * 32)
    assert rule.mr_signer == bytes.fromhex("22" * 32)
    assert (rule.isv_prod_id, rule.min_isv_svn) == (7, 2)
    assert rule.secrets == ("default",)
