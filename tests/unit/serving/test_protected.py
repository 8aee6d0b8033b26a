"""Encrypted model trees (Gramine protected files) loaded through ProtectedOpener, in memory only."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from confserve.pf import WrapKey, encrypt_tree
from confserve.serving import (
    LoadError,
    ModelConfig,
    ModelManager,
    ModelStore,
    ProtectedOpener,
    SavedModelLoader,
    State,
)
from tests.unit.serving.models import expected_probabilities

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def key() -> WrapKey:
    return WrapKey.generate()


@pytest.fixture
def encrypted(models_root: Path, tmp_path: Path, key: WrapKey) -> Path:
    target = tmp_path / "enc" / "clf" / "1"
    encrypt_tree(models_root / "clf" / "1", target, key)
    return target


def test_encrypted_version_loads_and_predicts(encrypted: Path, key: WrapKey) -> None:
    assert b"serving_default" not in (encrypted / "saved_model.pb").read_bytes()  # really encrypted
    servable = SavedModelLoader(ProtectedOpener(key)).load("clf", 1, str(encrypted))
    out = servable.run("serving_default", {"x": X}, ["probabilities"])
    np.testing.assert_allclose(out["probabilities"], expected_probabilities(X), rtol=1e-6)


def test_store_serves_an_encrypted_model(encrypted: Path, key: WrapKey) -> None:
    opener = ProtectedOpener(key)
    manager: ModelManager[object] = ModelManager(SavedModelLoader(opener))
    ModelStore([ModelConfig("clf", str(encrypted.parent))], opener, manager).poll_once()
    assert [s.state for s in manager.model_status("clf")] == [State.AVAILABLE]


def test_wrong_key_fails_closed(encrypted: Path) -> None:
    with pytest.raises(LoadError, match=r"cannot read model file .* \(\w+Error\)"):
        SavedModelLoader(ProtectedOpener(WrapKey.generate())).load("clf", 1, str(encrypted))


def test_tampered_file_fails_closed(encrypted: Path, key: WrapKey) -> None:
    path = encrypted / "variables" / "variables.data-00000-of-00001"
    data = bytearray(path.read_bytes())
    data[1000] ^= 1  # inside the encrypted, MAC-protected part of the metadata node
    path.write_bytes(bytes(data))
    with pytest.raises(LoadError, match=r"variables.data-00000-of-00001 \(IntegrityError\)"):
        SavedModelLoader(ProtectedOpener(key)).load("clf", 1, str(encrypted))


def test_plaintext_file_in_an_encrypted_tree_fails_closed(
    encrypted: Path, models_root: Path, key: WrapKey
) -> None:
    shutil.copy(models_root / "clf" / "1" / "saved_model.pb", encrypted / "saved_model.pb")
    with pytest.raises(LoadError, match=r"saved_model.pb \(\w+Error\)"):
        SavedModelLoader(ProtectedOpener(key)).load("clf", 1, str(encrypted))


def test_moved_tree_is_refused_unless_binding_is_mapped(
    encrypted: Path, tmp_path: Path, key: WrapKey
) -> None:
    moved = tmp_path / "elsewhere" / "clf" / "7"
    shutil.copytree(encrypted, moved)
    with pytest.raises(LoadError, match=r"\(PathMismatchError\)"):
        SavedModelLoader(ProtectedOpener(key)).load("clf", 7, str(moved))
    opener = ProtectedOpener(key, bound_path_for=lambda p: p.replace(str(moved), str(encrypted)))
    SavedModelLoader(opener).load("clf", 7, str(moved))
