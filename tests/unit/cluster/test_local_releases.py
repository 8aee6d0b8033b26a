"""`confserve up` with releases: the replicas pin the owner's release key, the policy grants the model's
own key and makes its published release the floor, and the key service loads every per-model key."""

from __future__ import annotations

from pathlib import Path

import pytest

from confserve import owner, pf
from confserve.attestation import parse_policy_toml
from confserve.cluster._local import LocalCluster
from confserve.cluster._workspace import Workspace, WorkspaceError, key_service_secrets, published_release
from confserve.releases import ReleaseKey

IDENTITY = {"mr_enclave": "11" * 32, "mr_signer": "22" * 32, "isv_prod_id": 7, "isv_svn": 2}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path)
    ws.release_key.parent.mkdir(parents=True)
    key = ReleaseKey.generate()
    ws.release_key.write_bytes(key.private_pem())
    ws.model_keys.mkdir(parents=True)
    wrap = pf.WrapKey.generate()
    wrap.save(ws.model_keys / "digits")
    (ws.model_keys / "default").write_bytes(b"ignored: the default key is secret-prov/wrap_key")
    base = ws.host / "models" / "digits"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(
        pf.encrypt_bytes(b"pb", wrap, bound_path="models/digits/1/saved_model.pb")
    )
    for _ in range(5):  # releases 0..4
        owner.publish_release(base, model="digits", bind_root="models/digits", key=key, key_id="digits")
    return ws


def test_policy_grants_the_model_key_and_floors_its_release(ws: Workspace) -> None:
    LocalCluster(ws).write_policy(IDENTITY, "digits")
    policy = parse_policy_toml(ws.policy.read_bytes())
    (rule,) = policy.rules
    assert rule.secrets == ("default", "digits")
    assert policy.floors == (("digits", 4),)
    assert policy.max_lease_seconds == 300  # the replicas' lease, bounded: the host cannot lengthen it
    assert "SIGHUP" in ws.policy.read_text()


def test_key_service_loads_every_model_key(ws: Workspace) -> None:
    assert key_service_secrets(ws) == [
        "--secret", f"default={ws.wrap_key}", "--secret", f"digits={ws.model_keys / 'digits'}",
    ]  # fmt: skip


def test_replicas_pin_the_release_key(ws: Workspace) -> None:
    options = LocalCluster(ws).replica_options("digits", 1, 2, 3)
    assert options.release_public_key == str(ws.release_public_key)
    assert options.release_public_key is not None
    assert Path(options.release_public_key).is_absolute()  # measured by content, found from host/


def test_a_model_without_a_release_is_an_error(ws: Workspace) -> None:
    assert published_release(ws, "digits").release == 4
    with pytest.raises(WorkspaceError, match="model 'other' has no release"):
        published_release(ws, "other")
