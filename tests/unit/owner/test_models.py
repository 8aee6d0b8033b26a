"""Example models, frozen-graph import, and encryption/inspection of versioned model trees."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from confserve import pf
from confserve.cli import main
from confserve.owner import _models as models

KEY = pf.WrapKey(bytes(range(16)))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> models.DigitsModel:
    return models.make_digits_model(tmp_path_factory.mktemp("m") / "digits", epochs=15)


def test_digits_model_is_accurate_and_serves_its_signature(digits: models.DigitsModel) -> None:
    import tensorflow as tf

    assert digits.test_accuracy >= 0.95
    assert (digits.train_examples, digits.test_examples) == (1437, 360)
    loaded = tf.saved_model.load(str(digits.path))
    serve = loaded.signatures["serving_default"]
    _, _, x_test, y_test = models.load_digits_dataset()
    out = serve(image=tf.constant(x_test))
    assert set(out) == {"probabilities", "classes"}
    accuracy = float(np.mean(out["classes"].numpy() == y_test))
    assert accuracy == pytest.approx(digits.test_accuracy, abs=1e-6)  # the saved model is the trained one
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_version_directory_is_never_replaced(digits: models.DigitsModel) -> None:
    with pytest.raises(models.ModelError, match="already exists"):
        models.make_digits_model(digits.path.parent, version=1)
    with pytest.raises(models.ModelError, match="positive"):
        models.make_digits_model(digits.path.parent, version=0)


def test_encrypt_and_inspect(
    digits: models.DigitsModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    entries = models.encrypt_model_tree(digits.path.parent, "enc/digits", KEY)
    files = {e.relative_path for e in entries}
    assert "1/saved_model.pb" in files
    assert any(f.startswith("1/variables/variables.data") for f in files)
    for entry in entries:
        assert entry.bound_path == f"enc/digits/{entry.relative_path}"
        assert pf.is_protected(Path("enc/digits") / entry.relative_path)
        plain = pf.read_protected(Path("enc/digits") / entry.relative_path, KEY, bound_path=entry.bound_path)
        assert plain == (digits.path.parent / entry.relative_path).read_bytes()
    plain_info = models.inspect_model_tree(digits.path.parent)
    enc_info = models.inspect_model_tree("enc/digits", key=KEY)
    assert enc_info[0].signatures == plain_info[0].signatures
    assert all(enc_info[0].files.values())
    assert not any(plain_info[0].files.values())
    sig = plain_info[0].signatures[0]
    assert sig.name == "serving_default"
    assert sig.inputs == {"image": ("float", (-1, 8, 8, 1))}
    assert sig.outputs["classes"] == ("int64", (-1,))
    no_key = models.inspect_model_tree("enc/digits")
    assert no_key[0].signatures == []
    assert "wrap key" in no_key[0].note
    with pytest.raises(pf.PathMismatchError):
        models.inspect_model_tree("enc/digits", key=KEY, bind_root="elsewhere")
    with pytest.raises(models.ModelError, match="never overwritten"):
        models.encrypt_model_tree(digits.path.parent, "enc/digits", KEY)
    # A new version is added beside the existing one (a rollout), bound to its own versioned paths.
    shutil.copytree(digits.path, tmp_path / "v2" / "2")
    added = models.encrypt_model_tree(tmp_path / "v2", "enc/digits", KEY)
    assert {e.relative_path.split("/")[0] for e in added} == {"2"}
    assert sorted(p.name for p in Path("enc/digits").iterdir()) == ["1", "2"]  # no staging left behind
    assert [i.version for i in models.inspect_model_tree("enc/digits", key=KEY)] == [1, 2]
    with pytest.raises(models.ModelError, match="already encrypted"):
        models.encrypt_model_tree("enc/digits", "enc2", KEY)


def test_model_tree_errors(tmp_path: Path) -> None:
    with pytest.raises(models.ModelError, match="not a directory"):
        models.encrypt_model_tree(tmp_path / "missing", tmp_path / "o", KEY)
    (tmp_path / "m/latest").mkdir(parents=True)
    with pytest.raises(models.ModelError, match="no numeric version"):
        models.encrypt_model_tree(tmp_path / "m", tmp_path / "o", KEY)
    (tmp_path / "m/3").mkdir()
    (tmp_path / "m/3/readme").write_text("x")
    with pytest.raises(models.ModelError, match="not a SavedModel"):
        models.encrypt_model_tree(tmp_path / "m", tmp_path / "o", KEY)
    assert models.inspect_model_tree(tmp_path / "m")[0].note == "no saved_model.pb"
    (tmp_path / "m/3/saved_model.pb").write_bytes(b"\xff\xff\xff")
    with pytest.raises(models.ModelError, match="not a SavedModel protobuf"):
        models.inspect_model_tree(tmp_path / "m")


def _frozen_graph(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    w = tf.Variable(np.arange(12, dtype="float32").reshape(4, 3) / 10.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="input")])
    def f(x: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(tf.matmul(x, w), name="predict")

    frozen = convert_variables_to_constants_v2(f.get_concrete_function())
    path.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    x = np.random.default_rng(1).random((5, 4), dtype="float32")
    return x, f(tf.constant(x)).numpy()


def test_import_frozen_graph_round_trip(tmp_path: Path) -> None:
    import tensorflow as tf

    x, expected = _frozen_graph(tmp_path / "graph.pb")
    path = models.import_frozen_graph(
        tmp_path / "graph.pb", inputs=["input"], outputs=["predict"], out=tmp_path / "m"
    )
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = serve(input=tf.constant(x))["predict"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    info = models.inspect_model_tree(tmp_path / "m")[0].signatures[0]
    assert info.inputs == {"input": ("float", (-1, 4))}
    with pytest.raises(models.ModelError, match="no tensor named"):
        models.import_frozen_graph(
            tmp_path / "graph.pb", inputs=["nope"], outputs=["predict"], out=tmp_path / "m2"
        )
    (tmp_path / "junk.pb").write_bytes(b"\x0a\xff\xff\xff\xff")
    with pytest.raises(models.ModelError, match="not a frozen TensorFlow GraphDef"):
        models.import_frozen_graph(tmp_path / "junk.pb", inputs=["a"], outputs=["b"], out=tmp_path / "m3")
    with pytest.raises(models.ModelError, match="at least one"):
        models.import_frozen_graph(tmp_path / "graph.pb", inputs=[], outputs=["b"], out=tmp_path / "m4")


@pytest.mark.slow
def test_resnet50_has_the_reference_signature(tmp_path: Path) -> None:
    path = models.make_resnet50_model(tmp_path / "resnet50")
    sig = models.inspect_model_tree(tmp_path / "resnet50")[0].signatures[0]
    assert sig.name == "serving_default"
    assert sig.inputs == {"input": ("float", (-1, 224, 224, 3))}
    assert sig.outputs == {"predict": ("float", (-1, 1001))}
    assert (path / "variables").is_dir()
    (tmp_path / "bad.weights.h5").write_bytes(b"junk")
    with pytest.raises(models.ModelError, match="cannot load weights"):
        models.make_resnet50_model(tmp_path / "resnet50", version=2, weights=tmp_path / "bad.weights.h5")


def test_cli(digits: models.DigitsModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    KEY.save("wk")
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "model",
            "encrypt",
            str(digits.path.parent),
            "-w",
            "wk",
            "--out",
            "e",
            "-v",
            "--bind-root",
            "/srv/models/digits",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "bound to /srv/models/digits/1/saved_model.pb" in result.output
    assert "--model_base_path /srv/models/digits" in result.output
    result = runner.invoke(
        main, ["model", "inspect", "e", "-w", "wk", "--bind-root", "/srv/models/digits", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["signatures"][0]["name"] == "serving_default"
    result = runner.invoke(main, ["model", "inspect", "e"])
    assert "4 files, 4 encrypted; encrypted: give the wrap key" in result.output
    result = runner.invoke(main, ["model", "inspect", str(digits.path.parent)])
    assert "input image: float [N,8,8,1]" in result.output
    result = runner.invoke(main, ["model", "encrypt", str(digits.path.parent), "-w", "wk", "--out", "e"])
    assert result.exit_code == 1
    assert "never overwritten" in result.output
    assert not os.path.exists("e2")
