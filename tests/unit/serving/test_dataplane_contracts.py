"""Classify/Regress output contracts and tensor edge cases, with a scripted servable (no model run)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2

from confserve.errors import Status
from confserve.serving import (
    AspiredVersions,
    DataPlane,
    DataPlaneSettings,
    ModelManager,
    ServingError,
    dtype_name,
)
from confserve.serving._tensors import check_dtype, from_proto, response_proto, shape_of

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def signature(method: str, inputs: dict[str, int], outputs: Sequence[str]) -> Any:
    sig = meta_graph_pb2.SignatureDef(method_name=method)
    for key, dtype in inputs.items():
        sig.inputs[key].dtype = dtype
        sig.inputs[key].tensor_shape.unknown_rank = True
    for key in outputs:
        sig.outputs[key].dtype = 1
    return sig


class Scripted:
    def __init__(self, signatures: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        self.signature_defs = signatures
        self.outputs = outputs

    def run(
        self, signature_name: str, inputs: Mapping[str, Any], output_keys: Sequence[str]
    ) -> dict[str, Any]:
        return {k: self.outputs[k] for k in output_keys}


class Loader:
    def __init__(self, servable: Scripted) -> None:
        self.servable = servable

    def load(self, model: str, version: int, path: str) -> Scripted:
        return self.servable

    def unload(self, servable: Scripted) -> None:
        pass


def dataplane_for(signatures: Mapping[str, Any], outputs: Mapping[str, Any]) -> DataPlane:
    manager: ModelManager[Scripted] = ModelManager(Loader(Scripted(signatures, outputs)))
    manager.set_aspired_versions(AspiredVersions("m", {1: "/m/1"}))
    manager.reconcile()
    return DataPlane(manager)


def examples_request(kind: type, signature_name: str, count: int = 2) -> Any:
    request = kind()
    request.model_spec.name = "m"
    request.model_spec.signature_name = signature_name
    for _ in range(count):
        request.input.example_list.examples.add()
    return request


F32 = np.float32
STRINGS = object


@pytest.mark.parametrize(
    ("sig", "outputs", "match"),
    [
        (signature(CLASSIFY, {"a": 7, "b": 7}, ["scores"]), {}, "Expected one input Tensor."),
        (signature(CLASSIFY, {"inputs": 7}, ["scores", "classes", "x"]), {}, "one or two output Tensors, found 3"),
        (signature(CLASSIFY, {"a": 7}, ["scores"]), {}, "No classification inputs found"),
        (signature(CLASSIFY, {"inputs": 7}, ["other"]), {}, 'at least one of "classes" or "scores"'),
        (
            signature(CLASSIFY, {"inputs": 7}, ["scores"]),
            {"scores": np.zeros((3, 2), F32)},
            "Expected scores output batch size of 2. Got: 3",
        ),
        (
            signature(CLASSIFY, {"inputs": 7}, ["scores"]),
            {"scores": np.zeros(2, F32)},
            r"Expected Tensor shape: \[batch_size num_classes\] but got \[2\]",
        ),
        (
            signature(CLASSIFY, {"inputs": 7}, ["scores"]),
            {"scores": np.zeros((2, 2))},
            "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE",
        ),
        (
            signature(CLASSIFY, {"inputs": 7}, ["classes"]),
            {"classes": np.zeros((2, 2), np.int64)},
            "Expected classes Tensor of DT_STRING. Got: DT_INT64",
        ),
        (
            signature(CLASSIFY, {"inputs": 7}, ["classes"]),
            {"classes": np.full((1, 2), b"x", dtype=STRINGS)},
            "Expected classes output batch size of 2. Got: 1",
        ),
        (
            signature(CLASSIFY, {"inputs": 7}, ["scores", "classes"]),
            {"scores": np.zeros((2, 2), F32), "classes": np.full((2, 3), b"x", dtype=STRINGS)},
            r"should match in dim_size\(1\). Got 3 vs. 2",
        ),
    ],
)  # fmt: skip
def test_classify_contract_violations(sig: Any, outputs: Any, match: str) -> None:
    """TF Serving's checks and texts (classifier.cc, PreProcessClassification and
    PostProcessClassificationResult; classifier_test.cc)."""
    dataplane = dataplane_for({"c": sig}, outputs)
    with pytest.raises(ServingError, match=match) as info:
        dataplane.classify(examples_request(classification_pb2.ClassificationRequest, "c"))
    assert info.value.status is Status.INVALID_ARGUMENT


def test_examples_input_dtype_is_left_to_the_model() -> None:
    """TF Serving feeds the serialized examples whatever dtype the SignatureDef declares (its
    saved_model_half_plus_three declares DT_FLOAT for them)."""
    declared_float = dataplane_for(
        {"r": signature(REGRESS, {"inputs": 1}, ["outputs"])}, {"outputs": np.array([1.5, 2.5], F32)}
    )
    result = declared_float.regress(examples_request(regression_pb2.RegressionRequest, "r")).result
    assert [r.value for r in result.regressions] == [1.5, 2.5]


def test_classify_scores_only_and_classes_only() -> None:
    scores_only = dataplane_for(
        {"c": signature(CLASSIFY, {"inputs": 7}, ["scores"])}, {"scores": np.array([[0.25, 0.75]], F32)}
    )
    result = scores_only.classify(examples_request(classification_pb2.ClassificationRequest, "c", 1)).result
    assert [(c.label, c.score) for c in result.classifications[0].classes] == [("", 0.25), ("", 0.75)]
    classes_only = dataplane_for(
        {"c": signature(CLASSIFY, {"inputs": 7}, ["classes"])},
        {"classes": np.array([[b"a", "b"]], dtype=object)},
    )
    result = classes_only.classify(examples_request(classification_pb2.ClassificationRequest, "c", 1)).result
    assert [(c.label, c.score) for c in result.classifications[0].classes] == [("a", 0.0), ("b", 0.0)]


@pytest.mark.parametrize(
    ("outputs", "match"),
    [
        (np.array([1.0, 2.0, 3.0], F32), "Input batch size did not match output batch size: 2 vs. 3"),
        (np.zeros((2, 2), F32), r"either \[batch_size\] or \[batch_size, 1\] but got \[2,2\]"),
        (np.zeros(2), "Expected output Tensor of DT_FLOAT.  Got: DT_DOUBLE"),
    ],
)
def test_regress_output_contract(outputs: Any, match: str) -> None:
    """regressor.cc PostProcessRegressionResult (regressor_test.cc)."""
    dataplane = dataplane_for({"r": signature(REGRESS, {"inputs": 7}, ["outputs"])}, {"outputs": outputs})
    with pytest.raises(ServingError, match=match):
        dataplane.regress(examples_request(regression_pb2.RegressionRequest, "r"))


def test_regress_contract() -> None:
    ok = dataplane_for(
        {"r": signature(REGRESS, {"inputs": 7}, ["outputs"])}, {"outputs": np.array([[1.5], [2.5]], F32)}
    )
    result = ok.regress(examples_request(regression_pb2.RegressionRequest, "r")).result
    assert [r.value for r in result.regressions] == [1.5, 2.5]
    for outputs, match in ((["y"], "No regression outputs found"), (["outputs", "y"], "Expected one output")):
        bad = dataplane_for({"r": signature(REGRESS, {"inputs": 7}, outputs)}, {})
        with pytest.raises(ServingError, match=match):
            bad.regress(examples_request(regression_pb2.RegressionRequest, "r"))
    no_inputs = dataplane_for({"r": signature(REGRESS, {"x": 7}, ["outputs"])}, {})
    with pytest.raises(ServingError, match="No regression inputs found"):
        no_inputs.regress(examples_request(regression_pb2.RegressionRequest, "r"))


def test_method_name_check_is_off_by_default_and_on_when_asked() -> None:
    """TF Serving's --enable_signature_method_name_check (classifier_test.cc, regressor_test.cc,
    predict_util_test.cc MethodNameCheck): TF2 exports label classify/regress signatures "predict"."""
    signatures = {
        "c": signature("tensorflow/serving/predict", {"inputs": 7}, ["scores"]),
        "r": signature("tensorflow/serving/predict", {"inputs": 7}, ["outputs"]),
        "p": signature("not/supported/method", {"x": 1}, ["y"]),
    }
    outputs = {"scores": np.zeros((2, 1), F32), "outputs": np.zeros(2, F32), "y": np.zeros(1, F32)}
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = "m"
    predict.model_spec.signature_name = "p"
    predict.inputs["x"].CopyFrom(tf.make_tensor_proto(np.float32(1)))
    relaxed = dataplane_for(signatures, outputs)
    relaxed.classify(examples_request(classification_pb2.ClassificationRequest, "c"))
    relaxed.regress(examples_request(regression_pb2.RegressionRequest, "r"))
    relaxed.predict(predict)
    strict = DataPlane(relaxed._manager, DataPlaneSettings(method_name_check=True))
    with pytest.raises(ServingError, match="Expected classification signature method_name to be") as info:
        strict.classify(examples_request(classification_pb2.ClassificationRequest, "c"))
    assert info.value.status is Status.INVALID_ARGUMENT
    with pytest.raises(ServingError, match="Expected regression signature method_name to be"):
        strict.regress(examples_request(regression_pb2.RegressionRequest, "r"))
    with pytest.raises(ServingError, match="Expected prediction signature method_name to be one of") as info:
        strict.predict(predict)
    assert info.value.status is Status.INTERNAL  # as in TF Serving (predict_util.cc)


def test_predict_with_unknown_rank_signature_accepts_any_shape() -> None:
    dataplane = dataplane_for({"serving_default": signature("p", {"x": 1}, ["y"])}, {"y": np.ones(1, F32)})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros((2, 3, 4), np.float32)))
    assert list(dataplane.predict(request).outputs) == ["y"]
    assert dataplane.is_ready()


def test_tensor_helpers_edge_cases() -> None:
    assert dtype_name(1) == "float"
    assert dtype_name(7) == "string"
    assert dtype_name(999) == "DataType(999)"
    unknown = tf.TensorShape(None).as_proto()
    assert shape_of(unknown) is None
    resource = tf.make_tensor_proto(np.zeros(1, np.float32))
    resource.dtype = 20  # DT_RESOURCE
    with pytest.raises(ServingError, match="unsupported dtype resource"):
        from_proto("r", resource)
    text = tf.make_tensor_proto(np.array([b"a"], dtype=object))
    text.tensor_content = b"abcd"
    with pytest.raises(ServingError, match="cannot use tensor_content"):
        from_proto("t", text)
    unknown_rank_tensor = tf.make_tensor_proto(np.zeros((1, 4), np.float32))
    unknown_rank_tensor.tensor_shape.unknown_rank = True
    info = meta_graph_pb2.TensorInfo(dtype=1)
    info.tensor_shape.dim.add().size = 4
    check_dtype("x", 0, unknown_rank_tensor, info)  # shapes are left to the model's graph
    with pytest.raises(ServingError, match=r"input 'x': Expects arg\[0\] to be float but double is provided"):
        check_dtype("x", 0, tf.make_tensor_proto(np.zeros(1)), info)
    with pytest.raises(ServingError, match="must be fully defined"):
        from_proto("x", unknown_rank_tensor)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        np.array([1e300, -0.0, np.nan]),
        np.arange(4, dtype=np.int64) - 2,
        np.array([1.5, -2.25], np.float16),
        np.array([True, False]),
        np.array([b"a", b"b"], dtype=object),
        np.float32(3),
    ],
)
def test_response_proto_typed_fields_or_content(array: Any) -> None:
    """TF Serving's Predict answers with typed *_val fields (Tensor::AsProtoField; predict_util_test.cc
    PredictionSuccess reads float_val), and with tensor_content under
    --enable_serialization_as_tensor_content; both read back to the same array."""
    fields = response_proto(np.asarray(array))
    assert not fields.tensor_content
    assert fields.tensor_shape == tf.make_tensor_proto(array).tensor_shape
    np.testing.assert_array_equal(tf.make_ndarray(fields), array)
    content = response_proto(np.asarray(array), as_content=True)
    assert content == tf.make_tensor_proto(array)
    if np.asarray(array).dtype == np.float32 and np.asarray(array).size > 1:
        assert list(fields.float_val) == np.asarray(array).ravel().tolist()
