"""The SavedModel loader: whole versions are loaded from memory, never from a host path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from confserve.serving import LoadError, NotFoundError, PlainOpener, SavedModelLoader
from tests.unit.serving.models import expected_probabilities


class MemoryOpener:
    """Serves a model tree from a dict under a path that does not exist on disk."""

    def __init__(self, source: Path, prefix: str) -> None:
        opener = PlainOpener()
        self.prefix = prefix
        self.files = {rel: opener.read_bytes(str(source / rel)) for rel in opener.list_files(str(source))}
        self.reads: list[str] = []

    def read_bytes(self, path: str) -> bytes:
        self.reads.append(path)
        return self.files[path.removeprefix(self.prefix + "/")]

    def list_files(self, directory: str) -> list[str]:
        if directory != self.prefix:
            raise FileNotFoundError(directory)
        return sorted(self.files)


def ram_entries() -> list[str]:
    import tensorflow as tf

    return list(tf.io.gfile.glob("ram://confserve-*"))


def test_loads_from_memory_only(models_root: Path) -> None:
    opener = MemoryOpener(models_root / "clf" / "1", "/does/not/exist/clf/1")
    loader = SavedModelLoader(opener)
    servable = loader.load("clf", 1, "/does/not/exist/clf/1")
    assert not Path("/does/not/exist").exists()
    assert sorted(opener.reads) == sorted(f"/does/not/exist/clf/1/{rel}" for rel in opener.files)
    assert ram_entries() == []  # the in-memory copy is gone once loaded
    # As in TF Serving's metadata, the init op's entry is listed too; it cannot be run.
    assert set(servable.signature_defs) == {
        "serving_default",
        "classify",
        "regress",
        "strings",
        "__saved_model_init_op",
    }
    with pytest.raises(NotFoundError):
        servable.run("__saved_model_init_op", {}, [])
    assert servable.signature_defs["classify"].method_name == "tensorflow/serving/classify"
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    out = servable.run("serving_default", {"x": x}, ["probabilities"])
    np.testing.assert_allclose(out["probabilities"], expected_probabilities(x), rtol=1e-6)
    loader.unload(servable)


def test_missing_saved_model_pb(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "other.txt").write_bytes(b"x")
    with pytest.raises(LoadError, match=r"no saved_model\.pb"):
        SavedModelLoader(PlainOpener()).load("m", 1, str(tmp_path / "1"))


def test_unlistable_directory(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"cannot list version directory \(FileNotFoundError\)"):
        SavedModelLoader(PlainOpener()).load("m", 1, str(tmp_path / "nope"))


def test_garbage_saved_model_pb(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"\xff\xff\xff not a proto")
    with pytest.raises(LoadError, match="not a valid SavedModel"):
        SavedModelLoader(PlainOpener()).load("m", 1, str(tmp_path / "1"))


def test_wrong_tags(models_root: Path) -> None:
    loader = SavedModelLoader(PlainOpener(), tags=("train",))
    with pytest.raises(LoadError, match=r"no MetaGraph with tags \['train'\]"):
        loader.load("clf", 1, str(models_root / "clf" / "1"))


def test_truncated_variables_fail_and_leave_nothing_in_ram(models_root: Path) -> None:
    opener = MemoryOpener(models_root / "clf" / "1", "/mem/clf/1")
    opener.files["variables/variables.index"] = b"truncated"
    with pytest.raises(LoadError, match="TensorFlow could not load the SavedModel"):
        SavedModelLoader(opener).load("clf", 1, "/mem/clf/1")
    assert ram_entries() == []


def test_read_failure_is_reported_without_detail(models_root: Path) -> None:
    class Failing(MemoryOpener):
        def read_bytes(self, path: str) -> bytes:
            raise ValueError("secret key material 00112233")

    opener = Failing(models_root / "clf" / "1", "/mem/clf/1")
    with pytest.raises(LoadError) as info:
        SavedModelLoader(opener).load("clf", 1, "/mem/clf/1")
    assert str(info.value) == "cannot read model file fingerprint.pb (ValueError)"


def test_assets_are_read_during_load_only(tmp_path: Path) -> None:
    """A vocabulary asset (lookup table) works after the ram:// copy is gone."""
    import tensorflow as tf

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("zero\none\ntwo\n")

    class Lookup(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            initializer = tf.lookup.TextFileInitializer(
                str(vocab),
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            )
            self.table = tf.lookup.StaticHashTable(initializer, default_value=-1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def serve(self, words: object) -> dict[str, object]:
            return {"ids": self.table.lookup(words)}

    module = Lookup()
    tf.saved_model.save(module, str(tmp_path / "m" / "1"), signatures={"serving_default": module.serve})
    vocab.unlink()  # only the SavedModel's own assets/ copy remains
    opener = MemoryOpener(tmp_path / "m" / "1", "/mem/m/1")
    assert any(rel.startswith("assets/") for rel in opener.files)
    servable = SavedModelLoader(opener).load("m", 1, "/mem/m/1")
    assert ram_entries() == []
    words = np.array([b"two", b"zero", b"nine"], dtype=object)
    assert servable.run("serving_default", {"words": words}, ["ids"])["ids"].tolist() == [2, 0, -1]
