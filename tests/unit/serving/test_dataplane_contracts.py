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
from confserve.serving import AspiredVersions, DataPlane, ModelManager, ServingError, dtype_name
from confserve.serving._tensors import check_compatible, from_proto, shape_of

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
        return {k: np.asarray(self.outputs[k]) for k in output_keys}


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


@pytest.mark.parametrize(
    ("sig", "outputs", "match"),
    [
        (signature(CLASSIFY, {"a": 7, "b": 7}, ["scores"]), {}, "Expected one input Tensor."),
        (signature(CLASSIFY, {"a": 1}, ["scores"]), {}, "type string"),
        (signature(CLASSIFY, {"inputs": 7}, ["other"]), {}, "contain classes or scores"),
        (signature(CLASSIFY, {"inputs": 7}, ["scores"]), {"scores": np.zeros((3, 2))}, "batch_size 2, got"),
        (signature(CLASSIFY, {"inputs": 7}, ["scores"]), {"scores": np.zeros(2)}, "batch_size 2, got"),
        (
            signature(CLASSIFY, {"inputs": 7}, ["scores", "classes"]),
            {"scores": np.zeros((2, 2)), "classes": np.full((2, 3), b"x", dtype=object)},
            "should match in shape",
        ),
    ],
)
def test_classify_contract_violations(sig: Any, outputs: Any, match: str) -> None:
    dataplane = dataplane_for({"c": sig}, outputs)
    with pytest.raises(ServingError, match=match) as info:
        dataplane.classify(examples_request(classification_pb2.ClassificationRequest, "c"))
    assert info.value.status is Status.INVALID_ARGUMENT


def test_classify_scores_only_and_classes_only() -> None:
    scores_only = dataplane_for(
        {"c": signature(CLASSIFY, {"inputs": 7}, ["scores"])}, {"scores": [[0.25, 0.75]]}
    )
    result = scores_only.classify(examples_request(classification_pb2.ClassificationRequest, "c", 1)).result
    assert [(c.label, c.score) for c in result.classifications[0].classes] == [("", 0.25), ("", 0.75)]
    classes_only = dataplane_for(
        {"c": signature(CLASSIFY, {"inputs": 7}, ["classes"])},
        {"classes": np.array([[b"a", "b"]], dtype=object)},
    )
    result = classes_only.classify(examples_request(classification_pb2.ClassificationRequest, "c", 1)).result
    assert [(c.label, c.score) for c in result.classifications[0].classes] == [("a", 0.0), ("b", 0.0)]


def test_regress_contract() -> None:
    ok = dataplane_for({"r": signature(REGRESS, {"inputs": 7}, ["outputs"])}, {"outputs": [[1.5], [2.5]]})
    result = ok.regress(examples_request(regression_pb2.RegressionRequest, "r")).result
    assert [r.value for r in result.regressions] == [1.5, 2.5]
    bad_shape = dataplane_for(
        {"r": signature(REGRESS, {"inputs": 7}, ["outputs"])}, {"outputs": [1.0, 2.0, 3.0]}
    )
    with pytest.raises(ServingError, match=r"shape \[batch_size\] or \[batch_size, 1\]"):
        bad_shape.regress(examples_request(regression_pb2.RegressionRequest, "r"))
    no_outputs = dataplane_for({"r": signature(REGRESS, {"inputs": 7}, ["y"])}, {})
    with pytest.raises(ServingError, match="contain outputs"):
        no_outputs.regress(examples_request(regression_pb2.RegressionRequest, "r"))


def test_predict_with_unknown_rank_signature_accepts_any_shape() -> None:
    dataplane = dataplane_for({"serving_default": signature("p", {"x": 1}, ["y"])}, {"y": [1.0]})
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
    check_compatible("x", 0, unknown_rank_tensor, info)  # unknown-rank request: left to TensorFlow
    with pytest.raises(ServingError, match="must be fully defined"):
        from_proto("x", unknown_rank_tensor)
