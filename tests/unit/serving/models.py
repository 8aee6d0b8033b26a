"""Builds the small SavedModels the serving tests use (once per test session; TensorFlow work is slow).

`clf`: a dense 4 -> 3 softmax classifier with fixed weights and four signatures:
  serving_default  x: float[-1,4]           -> probabilities: float[-1,3], class_ids: int64[-1]
  classify         inputs: string[-1]        -> classes: string[-1,3], scores: float[-1,3]   (tf.Example "x")
  regress          inputs: string[-1]        -> outputs: float[-1]                            (tf.Example "x")
  strings          text: string[-1], n: int32[-1] -> length: int32[-1], echo_bytes: string[-1]
The classify/regress method_names are patched into saved_model.pb, as TF 2's saver writes "predict" for all.
Versions 1 and 2 are identical copies (tests tell them apart by the version number in responses).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS = np.array(
    [[0.5, -1.0, 0.25], [1.5, 0.0, -0.5], [-0.75, 0.5, 1.0], [0.1, 0.2, 0.3]],
    dtype=np.float32,
)
BIAS = np.array([0.1, -0.2, 0.05], dtype=np.float32)
LABELS = [b"setosa", b"versicolor", b"virginica"]

_CACHE: dict[str, Path] = {}


def expected_probabilities(x: Any) -> Any:
    logits = np.asarray(x, dtype=np.float32) @ WEIGHTS + BIAS
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _build(target: Path) -> None:
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    class Classifier(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(WEIGHTS)
            self.b = tf.Variable(BIAS)

        def _probs(self, x: Any) -> Any:
            return tf.nn.softmax(tf.matmul(x, self.w) + self.b)

        def _parse(self, serialized: Any) -> Any:
            return tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([4], tf.float32)})["x"]

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def predict(self, x: Any) -> Any:
            probs = self._probs(x)
            return {"probabilities": probs, "class_ids": tf.argmax(probs, axis=-1)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: Any) -> Any:
            probs = self._probs(self._parse(inputs))
            classes = tf.tile(tf.constant([LABELS]), [tf.shape(probs)[0], 1])
            return {"classes": classes, "scores": probs}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: Any) -> Any:
            return {"outputs": tf.reduce_sum(self._parse(inputs), axis=-1) * 0.5}

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="text"),
                tf.TensorSpec([None], tf.int32, name="n"),
            ]
        )
        def strings(self, text: Any, n: Any) -> Any:
            return {"length": tf.strings.length(text) + n, "echo_bytes": text}

    module = Classifier()
    version_1 = target / "clf" / "1"
    tf.saved_model.save(
        module,
        str(version_1),
        signatures={
            "serving_default": module.predict,
            "classify": module.classify,
            "regress": module.regress,
            "strings": module.strings,
        },
    )
    pb_path = version_1 / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(pb_path.read_bytes())
    signatures = saved.meta_graphs[0].signature_def
    signatures["classify"].method_name = "tensorflow/serving/classify"
    signatures["regress"].method_name = "tensorflow/serving/regress"
    pb_path.write_bytes(saved.SerializeToString())
    shutil.copytree(version_1, target / "clf" / "2")


def model_tree() -> Path:
    """Path of a directory holding clf/1 and clf/2; built on first use in this process."""
    if "root" not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix="confserve-models-"))
        atexit.register(shutil.rmtree, root, True)
        _build(root)
        _CACHE["root"] = root
    return _CACHE["root"]


def copy_model(dest: Path, versions: tuple[int, ...] = (1,)) -> Path:
    """A private copy of clf with the given version numbers (each a copy of version 1)."""
    source = model_tree() / "clf" / "1"
    for version in versions:
        shutil.copytree(source, dest / str(version))
    return dest


def serving_config(root: Path) -> str:
    """A ModelServerConfig for a served tree made by `make_served_tree`."""
    return f"""
model_config_list {{
  config {{
    name: "clf"
    base_path: "{root / "clf"}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{ name: "broken" base_path: "{root / "broken"}" }}
}}
"""


def make_served_tree(root: Path) -> str:
    """clf (versions 1 and 2) and broken (version 1 with a garbage saved_model.pb); returns the config."""
    copy_model(root / "clf", (1, 2))
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    return serving_config(root)


def make_dataplane(root: Path) -> Any:
    """A DataPlane over a freshly polled store of `make_served_tree(root)`."""
    from confserve.serving import (
        DataPlane,
        ManagerSettings,
        ModelManager,
        ModelStore,
        PlainOpener,
        SavedModelLoader,
        parse_model_server_config,
    )

    config = parse_model_server_config(make_served_tree(root))
    opener = PlainOpener()
    manager: ModelManager[Any] = ModelManager(
        SavedModelLoader(opener), settings=ManagerSettings(max_load_retries=0)
    )
    store = ModelStore(config, opener, manager)
    store.poll_once()
    return DataPlane(manager)
