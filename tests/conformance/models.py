"""The SavedModels the conformance suite serves, generated here (our own code) in the shapes of TF Serving's
test models (tensorflow_serving/servables/tensorflow/testdata, as their generator and SignatureDefs
describe them):

- `half_plus_two` (TF1 graph + SavedModelBuilder, versions 123 and 124): serialized tf.Example ->
  ParseExample (x: float[1], x2: float[1] default 0) -> x = Identity -> y = 0.5 x + 2, y2 = 0.5 x + 3,
  y3 = 0.5 x2 + 3. Signatures serving_default (x -> y, declared [-1, 1]), regress_x_to_y, regress_x_to_y2,
  regress_x2_to_y3 (fed at x2), classify_x_to_y (scores = y).
- `half_plus_two_tf2` (tf.Module + tf.saved_model.save, versions 123 and 124): the same functions as TF2
  signatures, which the TF2 saver labels "tensorflow/serving/predict"; serving_default declares x [1];
  regress_x2_to_y3 and classify_x2_to_y3 take a float "inputs".
- `half_plus_three` (TF1, version 123): serving_default x -> 0.5 x + 3 with unknown shapes, and a
  regression signature keyed "tensorflow/serving/regress" (TF Serving's REST guide calls it by that name).
- `estimator` (TF1, version 1): an Estimator-style export parsing serialized tf.Example
  (x: float[1], count: int64[3] default zeros, kind: string default ""): serving_default and "regression"
  (outputs = 0.5 x + 3 + sum(count)), "classification" (classes ["neg", "pos"], scores), "predict"
  (examples -> predictions, kind).
- `bytes` (TF2, version 1): image_bytes, key (string) -> output_bytes (image_bytes + b"\\x00\\xff"),
  length (int32), key.
- `saved_model_save` and `multiple_signatures` (TF2, version 123): the models of
  tensorflow_model_server_test.py test_tf_saved_model_save (y = 3 * 2 * x, input of unknown shape) and
  test_tf_saved_model_save_multiple_signatures (serving_default -> 1.0, custom_signature_key -> 2.0).
- `broken` (version 1): a saved_model.pb that is not a SavedModel.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

VERSION_1 = 123
VERSION_2 = 124


def _tf() -> Any:
    from confserve.tf_runtime import import_tensorflow

    return import_tensorflow()


def _half_plus_tf1(export_dir: Path, offset: float) -> None:
    """TF Serving's TF1 half_plus_two graph (offset 2) or half_plus_three (offset 3, fewer signatures)."""
    tf = _tf()
    v1 = tf.compat.v1
    info = v1.saved_model.utils.build_tensor_info
    build = v1.saved_model.signature_def_utils.build_signature_def
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as session:
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(offset, name="b")
        c = v1.Variable(3.0, name="c")
        spec = {
            "x": v1.io.FixedLenFeature([1], tf.float32),
            "x2": v1.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
        }
        if offset == 2.0:
            serialized = v1.placeholder(tf.string, shape=[None], name="tf_example")
            parsed = v1.io.parse_example(serialized, spec)
            x = tf.identity(parsed["x"], name="x")
        else:  # half_plus_three: x is fed directly, shapes unknown
            serialized = v1.placeholder(tf.string, name="tf_example")
            parsed = v1.io.parse_example(serialized, spec)
            x = v1.placeholder_with_default(parsed["x"], shape=None, name="x")
        y = tf.identity(a * x + b, name="y")
        y2 = tf.identity(a * x + c, name="y2")
        x2 = tf.identity(parsed["x2"], name="x2")
        y3 = tf.identity(a * x2 + c, name="y3")
        session.run(v1.global_variables_initializer())
        predict, regress, classify = (f"tensorflow/serving/{m}" for m in ("predict", "regress", "classify"))
        if offset == 2.0:
            signatures = {
                "serving_default": build({"x": info(x)}, {"y": info(y)}, predict),
                "regress_x_to_y": build({"inputs": info(serialized)}, {"outputs": info(y)}, regress),
                "regress_x_to_y2": build({"inputs": info(serialized)}, {"outputs": info(y2)}, regress),
                "regress_x2_to_y3": build({"inputs": info(x2)}, {"outputs": info(y3)}, regress),
                "classify_x_to_y": build({"inputs": info(serialized)}, {"scores": info(y)}, classify),
            }
        else:
            signatures = {
                "serving_default": build({"x": info(x)}, {"y": info(y)}, predict),
                "tensorflow/serving/regress": build(
                    {"inputs": info(serialized)}, {"outputs": info(y)}, regress
                ),
            }
        builder = v1.saved_model.Builder(str(export_dir))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()


def _half_plus_two_tf2(export_dir: Path) -> None:
    tf = _tf()
    spec = {
        "x": tf.io.FixedLenFeature([1], tf.float32),
        "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
    }
    examples = tf.TensorSpec([None], tf.string, name="inputs")
    one_float = tf.TensorSpec([1], tf.float32, name="inputs")

    class HalfPlusTwo(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(2.0)
            self.c = tf.Variable(3.0)

        @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="x")])
        def predict(self, x: Any) -> Any:
            return {"y": self.a * x + self.b}

        @tf.function(input_signature=[examples])
        def regress_xy(self, serialized: Any) -> Any:
            return {"outputs": self.a * tf.io.parse_example(serialized, spec)["x"] + self.b}

        @tf.function(input_signature=[examples])
        def regress_xy2(self, serialized: Any) -> Any:
            return {"outputs": self.a * tf.io.parse_example(serialized, spec)["x"] + self.c}

        @tf.function(input_signature=[one_float])
        def regress_x2y3(self, x2: Any) -> Any:
            return {"outputs": self.a * x2 + self.c}

        @tf.function(input_signature=[examples])
        def classify_xy(self, serialized: Any) -> Any:
            return {"scores": self.a * tf.io.parse_example(serialized, spec)["x"] + self.b}

        @tf.function(input_signature=[one_float])
        def classify_x2y3(self, x2: Any) -> Any:
            return {"scores": self.a * x2 + self.c}

    module = HalfPlusTwo()
    tf.saved_model.save(
        module,
        str(export_dir),
        signatures={
            "serving_default": module.predict,
            "regress_x_to_y": module.regress_xy,
            "regress_x_to_y2": module.regress_xy2,
            "regress_x2_to_y3": module.regress_x2y3,
            "classify_x_to_y": module.classify_xy,
            "classify_x2_to_y3": module.classify_x2y3,
        },
    )


def _estimator(export_dir: Path) -> None:
    tf = _tf()
    v1 = tf.compat.v1
    info = v1.saved_model.utils.build_tensor_info
    build = v1.saved_model.signature_def_utils.build_signature_def
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as session:
        serialized = v1.placeholder(tf.string, shape=[None], name="input_example_tensor")
        features = v1.io.parse_example(
            serialized,
            {
                "x": v1.io.FixedLenFeature([1], tf.float32),
                "count": v1.io.FixedLenFeature([3], tf.int64, default_value=[0, 0, 0]),
                "kind": v1.io.FixedLenFeature([], tf.string, default_value=""),
            },
        )
        weight = v1.Variable(0.5, name="linear/weight")
        bias = v1.Variable(3.0, name="linear/bias")
        counted = tf.cast(tf.reduce_sum(features["count"], axis=1, keepdims=True), tf.float32)
        predictions = tf.identity(weight * features["x"] + bias + counted, name="predictions")
        positive = tf.sigmoid(predictions - 4.0)
        scores = tf.concat([1.0 - positive, positive], axis=1, name="scores")
        classes = tf.tile(tf.constant([[b"neg", b"pos"]]), [tf.shape(scores)[0], 1], name="classes")
        kind = tf.identity(features["kind"], name="kind")
        session.run(v1.global_variables_initializer())
        regression = build(
            {"inputs": info(serialized)}, {"outputs": info(predictions)}, "tensorflow/serving/regress"
        )
        builder = v1.saved_model.Builder(str(export_dir))
        builder.add_meta_graph_and_variables(
            session,
            ["serve"],
            signature_def_map={
                "serving_default": regression,
                "regression": regression,
                "classification": build(
                    {"inputs": info(serialized)},
                    {"classes": info(classes), "scores": info(scores)},
                    "tensorflow/serving/classify",
                ),
                "predict": build(
                    {"examples": info(serialized)},
                    {"predictions": info(predictions), "kind": info(kind)},
                    "tensorflow/serving/predict",
                ),
            },
        )
        builder.save()


def _bytes_model(export_dir: Path) -> None:
    tf = _tf()

    class Bytes(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="image_bytes"),
                tf.TensorSpec([None], tf.string, name="key"),
            ]
        )
        def serve(self, image_bytes: Any, key: Any) -> Any:
            return {
                "output_bytes": tf.strings.join([image_bytes, tf.constant(b"\x00\xff")]),
                "length": tf.strings.length(image_bytes),
                "key": tf.identity(key),
            }

    module = Bytes()
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})


def _saved_model_save(export_dir: Path) -> None:
    tf = _tf()
    root = tf.train.Checkpoint()
    root.v1 = tf.Variable(3.0)
    root.v2 = tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    tf.saved_model.save(root, str(export_dir), root.f.get_concrete_function(tf.TensorSpec(None, tf.float32)))


def _multiple_signatures(export_dir: Path) -> None:
    tf = _tf()
    root = tf.train.Checkpoint()
    spec = [tf.TensorSpec(None, tf.float32)]
    root.f = tf.function(lambda x: {"y": tf.constant(1.0)}, input_signature=spec)
    root.g = tf.function(lambda x: {"y": tf.constant(2.0)}, input_signature=spec)
    tf.saved_model.save(
        root, str(export_dir), signatures={"serving_default": root.f, "custom_signature_key": root.g}
    )


def build_models(root: Path) -> dict[str, Path]:
    """Every model under `root`; returns model name -> base path."""
    bases = {
        name: root / name
        for name in (
            "half_plus_two",
            "half_plus_two_tf2",
            "half_plus_three",
            "estimator",
            "bytes",
            "saved_model_save",
            "multiple_signatures",
            "broken",
        )
    }
    _half_plus_tf1(bases["half_plus_two"] / str(VERSION_1), 2.0)
    shutil.copytree(bases["half_plus_two"] / str(VERSION_1), bases["half_plus_two"] / str(VERSION_2))
    _half_plus_two_tf2(bases["half_plus_two_tf2"] / str(VERSION_1))
    shutil.copytree(bases["half_plus_two_tf2"] / str(VERSION_1), bases["half_plus_two_tf2"] / str(VERSION_2))
    _half_plus_tf1(bases["half_plus_three"] / str(VERSION_1), 3.0)
    _estimator(bases["estimator"] / "1")
    _bytes_model(bases["bytes"] / "1")
    _saved_model_save(bases["saved_model_save"] / str(VERSION_1))
    _multiple_signatures(bases["multiple_signatures"] / str(VERSION_1))
    (bases["broken"] / "1").mkdir(parents=True)
    (bases["broken"] / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    return bases


def model_server_config(bases: dict[str, Path]) -> str:
    """The ModelServerConfig text: TF Serving's test names ("default" is half_plus_two at version 123, as
    tensorflow_model_server_test.py serves it), every version of the two-version models, with labels."""

    def entry(name: str, base: Path, policy: str = "", labels: str = "") -> str:
        return f'  config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" {policy} {labels} }}\n'

    every = "model_version_policy { all {} }"
    labels = f'version_labels {{ key: "stable" value: {VERSION_1} }} version_labels {{ key: "canary" value: {VERSION_2} }}'
    only_first = f"model_version_policy {{ specific {{ versions: {VERSION_1} }} }}"
    return (
        "model_config_list {\n"
        + entry("default", bases["half_plus_two"], only_first)
        + entry("default_tf2", bases["half_plus_two_tf2"], only_first)
        + entry("half_plus_two", bases["half_plus_two"], every, labels)
        + entry("half_plus_two_tf2", bases["half_plus_two_tf2"], every, labels)
        + entry("half_plus_three", bases["half_plus_three"])
        + entry("saved_model_half_plus_three", bases["half_plus_three"])
        + entry("estimator", bases["estimator"])
        + entry("bytes", bases["bytes"])
        + entry("saved_model_save", bases["saved_model_save"])
        + entry("multiple_signatures", bases["multiple_signatures"])
        + entry("broken", bases["broken"])
        + "}\n"
    )
