"""Release manifests: signed by the owner, verified against the pinned key, refused when swapped,
older than the floor, for another model, or malformed."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path

import pytest

from confserve.releases import (
    MANIFEST_FILE,
    ReleaseError,
    ReleaseKey,
    load_public_key,
    manifest_for_tree,
    sign_release,
    verify_release,
)

FILES = {1: {"models/m/1/saved_model.pb": "aa" * 32}, 2: {"models/m/2/saved_model.pb": "bb" * 32}}


@pytest.fixture(scope="module")
def key() -> ReleaseKey:
    return ReleaseKey.generate()


def signed(key: ReleaseKey, **changes: object) -> bytes:
    fields: dict[str, object] = {"model": "m", "release": 3, "key_id": "default", "versions": FILES}
    fields.update(changes)
    return sign_release(key, **fields)  # type: ignore[arg-type]


def test_round_trip(key: ReleaseKey) -> None:
    release = verify_release(signed(key), key.public_key, model="m", floor=3)
    assert (release.model, release.release, release.key_id) == ("m", 3, "default")
    assert release.versions == FILES
    assert "ReleaseKey(id=" in repr(key)
    assert b"PRIVATE" not in repr(key).encode()


def test_pem_round_trip(key: ReleaseKey) -> None:
    again = ReleaseKey.from_pem(key.private_pem())
    assert again.key_id == key.key_id
    assert verify_release(signed(again), load_public_key(key.public_pem()), model="m").release == 3


def test_other_key_model_and_floor_are_refused(key: ReleaseKey) -> None:
    with pytest.raises(ReleaseError, match="not signed by the owner's release key"):
        verify_release(signed(ReleaseKey.generate()), key.public_key, model="m")
    with pytest.raises(ReleaseError, match="for model 'm', not 'other'"):
        verify_release(signed(key), key.public_key, model="other")
    with pytest.raises(ReleaseError, match="below its floor 4"):
        verify_release(signed(key), key.public_key, model="m", floor=4)


def test_re_signed_or_edited_payload_is_refused(key: ReleaseKey) -> None:
    document = json.loads(signed(key))
    payload = json.loads(base64.b64decode(document["payload"]))
    payload["release"] = 99  # a host raising the number of an old release
    document["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(ReleaseError, match="not signed"):
        verify_release(json.dumps(document).encode(), key.public_key, model="m")


def test_check_file(key: ReleaseKey, tmp_path: Path) -> None:
    ciphertext = b"encrypted bytes"
    digest = hashlib.sha256(ciphertext).hexdigest()
    release = verify_release(
        signed(key, versions={1: {"models/m/1/saved_model.pb": digest}}), key.public_key, model="m"
    )
    release.check_file(1, "models/m/1/saved_model.pb", ciphertext)
    with pytest.raises(ReleaseError, match="differs from release 3"):
        release.check_file(1, "models/m/1/saved_model.pb", ciphertext + b"!")
    with pytest.raises(ReleaseError, match="is not in release 3"):
        release.check_file(1, "models/m/1/extra.pb", ciphertext)
    with pytest.raises(ReleaseError, match="version 2 is not in release 3"):
        release.check_file(2, "models/m/2/saved_model.pb", ciphertext)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "bad name"}, "no valid model"),
        ({"release": -1}, "non-negative"),
        ({"release": True}, "non-negative"),
        ({"key_id": ""}, "no valid key id"),
        ({"versions": {}}, "lists no version"),
        ({"versions": {1: {}}}, "lists no file"),
        ({"versions": {1: {"p": "xyz"}}}, "has no SHA-256"),
        ({"versions": {1: {"": "aa" * 32}}}, "invalid path"),
    ],
)
def test_signing_refuses_a_bad_manifest(key: ReleaseKey, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ReleaseError, match=message):
        signed(key, **changes)


@pytest.mark.parametrize(
    "data",
    [b"", b"{}", b"[]", b"null", b'{"format": "confserve-release-v1"}', b"\xff\xfe", b"[" * 100000,
     b'{"format": "confserve-release-v1", "payload": "!!", "signature": ""}',
     b"x" * (1 << 20 + 1)],
)  # fmt: skip
def test_malformed_documents_are_refused(key: ReleaseKey, data: bytes) -> None:
    with pytest.raises(ReleaseError):
        verify_release(data, key.public_key, model="m")


def test_mutations_never_verify(key: ReleaseKey) -> None:
    """Any single-byte change to a valid manifest is refused (never accepted, never another exception),
    except where it leaves the signed bytes and the signature intact (JSON whitespace, the signer hint)."""
    good = signed(key)
    document = json.loads(good)
    rng = random.Random(1234)
    for _ in range(400):
        data = bytearray(good)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        try:
            release = verify_release(bytes(data), key.public_key, model="m")
        except ReleaseError:
            continue
        again = json.loads(bytes(data))
        assert (again["payload"], again["signature"]) == (document["payload"], document["signature"])
        assert release.release == 3


def test_signed_garbage_payload_is_refused(key: ReleaseKey) -> None:
    for payload in (b"not json", b"[]", json.dumps({"format": "other"}).encode()):
        document = {
            "format": "confserve-release-v1",
            "payload": base64.b64encode(payload).decode(),
            "signature": base64.b64encode(key.sign(payload)).decode(),
        }
        with pytest.raises(ReleaseError, match="signed manifest"):
            verify_release(json.dumps(document).encode(), key.public_key, model="m")


def test_bad_keys() -> None:
    with pytest.raises(ReleaseError, match="not a PEM public key"):
        load_public_key(b"nope")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ReleaseError, match="not an Ed25519 key"):
        load_public_key(pem)
    private = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ReleaseError, match="not an Ed25519 key"):
        ReleaseKey.from_pem(private)
    with pytest.raises(ReleaseError, match="not a PEM private key"):
        ReleaseKey.from_pem(b"garbage")


def test_manifest_for_tree(tmp_path: Path) -> None:
    base = tmp_path / "digits"
    (base / "1" / "variables").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"one")
    (base / "1" / "variables" / "variables.index").write_bytes(b"index")
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"two")
    (base / "notaversion").mkdir()
    (base / MANIFEST_FILE).write_text("{}")
    versions = manifest_for_tree(base, "models/digits")
    assert versions == {
        1: {
            "models/digits/1/saved_model.pb": hashlib.sha256(b"one").hexdigest(),
            "models/digits/1/variables/variables.index": hashlib.sha256(b"index").hexdigest(),
        },
        2: {"models/digits/2/saved_model.pb": hashlib.sha256(b"two").hexdigest()},
    }
    with pytest.raises(ReleaseError, match="holds no version"):
        manifest_for_tree(tmp_path / "digits" / "notaversion", "x")
