"""DataPlane semantics against the real TF Serving protos and a real (tiny) SavedModel."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from confserve.errors import Status
from confserve.serving import ServingError
from tests.unit.serving.models import LABELS, expected_probabilities, make_dataplane

X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def dataplane(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_dataplane(tmp_path_factory.mktemp("served"))


def predict_request(model: str = "clf", **inputs: Any) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in (inputs or {"x": X}).items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def expect_error(status: Status, match: str, call: Any, request: Any) -> ServingError:
    with pytest.raises(ServingError, match=match) as info:
        call(request)
    assert info.value.status is status, info.value
    return info.value


def example(**features: list[float]) -> Any:
    ex = tf.train.Example()
    for key, values in features.items():
        ex.features.feature[key].float_list.value.extend(values)
    return ex


# -- Predict ---------------------------------------------------------------------------------------------


def test_predict_default_signature_latest_version(dataplane: Any) -> None:
    response = dataplane.predict(predict_request())
    assert response.model_spec.name == "clf"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    assert set(response.outputs) == {"class_ids", "probabilities"}
    probs = tf.make_ndarray(response.outputs["probabilities"])
    np.testing.assert_allclose(probs, expected_probabilities(X), rtol=1e-6)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["class_ids"]), probs.argmax(axis=1))


def test_predict_version_and_label_selection(dataplane: Any) -> None:
    request = predict_request()
    request.model_spec.version.value = 1
    assert dataplane.predict(request).model_spec.version.value == 1
    request = predict_request()
    request.model_spec.version_label = "canary"
    assert dataplane.predict(request).model_spec.version.value == 2
    request.model_spec.version_label = "stable"
    assert dataplane.predict(request).model_spec.version.value == 1


def test_predict_output_filter(dataplane: Any) -> None:
    request = predict_request()
    request.output_filter.append("class_ids")
    assert list(dataplane.predict(request).outputs) == ["class_ids"]


def test_predict_strings_signature(dataplane: Any) -> None:
    request = predict_request(text=np.array([b"ab", b"\xff\x00"], dtype=object), n=np.array([1, 2], np.int32))
    request.model_spec.signature_name = "strings"
    response = dataplane.predict(request)
    assert tf.make_ndarray(response.outputs["length"]).tolist() == [3, 4]
    assert tf.make_ndarray(response.outputs["echo_bytes"]).tolist() == [b"ab", b"\xff\x00"]


@pytest.mark.parametrize(
    ("mutate", "status", "match"),
    [
        (lambda r: r.ClearField("model_spec"), Status.INVALID_ARGUMENT, "Missing ModelSpec"),
        (lambda r: setattr(r.model_spec, "name", ""), Status.INVALID_ARGUMENT, "Missing model name"),
        (
            lambda r: setattr(r.model_spec, "name", "nope"),
            Status.NOT_FOUND,
            r"Servable not found for request: Latest\(nope\)",
        ),
        (
            lambda r: r.model_spec.version.__setattr__("value", 7),
            Status.NOT_FOUND,
            r"Servable not found for request: Specific\(clf, 7\)",
        ),
        (
            lambda r: setattr(r.model_spec, "version_label", "beta"),
            Status.INVALID_ARGUMENT,
            "Unrecognized servable version label: beta",
        ),
        (  # TF Serving: FAILED_PRECONDITION for Predict (predict_util.cc)
            lambda r: setattr(r.model_spec, "signature_name", "nope"),
            Status.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
        (
            lambda r: r.inputs["y"].CopyFrom(tf.make_tensor_proto(X)),
            Status.INVALID_ARGUMENT,
            r"input size does not match signature: 2!=1 len\(\{x,y\}\) != len\(\{x\}\). "
            r"Sent extra: \{y\}. Missing but required: \{\}.",
        ),
        (
            lambda r: (r.inputs["y"].CopyFrom(r.inputs["x"]), r.inputs.pop("x")),
            Status.INVALID_ARGUMENT,
            r"input tensor alias not found in signature: y. Inputs expected to be in the set \{x\}.",
        ),
        (
            lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto(X.astype(np.int32))),
            Status.INVALID_ARGUMENT,
            r"input 'x': Expects arg\[0\] to be float but int32 is provided",
        ),
        (  # shapes are the graph's to judge: TensorFlow's refusal, which names only shapes
            lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros((2, 5), np.float32))),
            Status.INVALID_ARGUMENT,
            r"InvalidArgumentError running signature 'serving_default': "
            r"Matrix size-incompatible: In\[0\]: \[2,5\], In\[1\]: \[4,3\]",
        ),
        (
            lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros((4,), np.float32))),
            Status.INVALID_ARGUMENT,
            r"In\[0\] is not a matrix",
        ),
        (
            lambda r: r.output_filter.append("logits"),
            Status.INVALID_ARGUMENT,
            r"output tensor alias not found in signature: logits Outputs expected to be in the set "
            r"\{class_ids,probabilities\}.",
        ),
        (
            lambda r: r.output_filter.extend(["class_ids", "class_ids"]),
            Status.INVALID_ARGUMENT,
            "duplicate output tensor alias: class_ids",
        ),
    ],
)
def test_predict_rejects_bad_requests(dataplane: Any, mutate: Any, status: Status, match: str) -> None:
    request = predict_request()
    mutate(request)
    error = expect_error(status, match, dataplane.predict, request)
    assert "1.0" not in str(error)  # no tensor values in messages


def _raw_tensor(**fields: Any) -> Any:
    proto = tf.make_tensor_proto(np.zeros((1, 4), np.float32))
    proto.ClearField("tensor_content")
    proto.tensor_shape.ClearField("dim")
    for size in fields.pop("dims", [1, 4]):
        proto.tensor_shape.dim.add().size = size
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(proto, key).extend(value)
        else:
            setattr(proto, key, value)
    return proto


@pytest.mark.parametrize(
    ("tensor", "status", "match"),
    [
        (_raw_tensor(tensor_content=b"\0" * 7), Status.INVALID_ARGUMENT, "content size does not match"),
        (_raw_tensor(float_val=[1.0] * 5), Status.INVALID_ARGUMENT, "more values than its shape"),
        (_raw_tensor(dims=[-1, 4]), Status.INVALID_ARGUMENT, "must be fully defined"),
        (
            _raw_tensor(dims=[1 << 27, 4], float_val=[1.0]),
            Status.RESOURCE_EXHAUSTED,
            "elements exceed the limit",
        ),
    ],
)
def test_predict_rejects_malformed_tensors(dataplane: Any, tensor: Any, status: Status, match: str) -> None:
    request = predict_request()
    request.inputs["x"].CopyFrom(tensor)
    expect_error(status, match, dataplane.predict, request)


def test_predict_broadcasts_a_short_value_list(dataplane: Any) -> None:
    # TensorFlow semantics: fewer values than elements repeats the last one.
    request = predict_request()
    request.inputs["x"].CopyFrom(_raw_tensor(dims=[2, 4], float_val=[1.0]))
    probs = tf.make_ndarray(dataplane.predict(request).outputs["probabilities"])
    np.testing.assert_allclose(probs, expected_probabilities(np.ones((2, 4))), rtol=1e-6)


def test_unavailable_model_does_not_affect_others(dataplane: Any) -> None:
    expect_error(
        Status.FAILED_PRECONDITION,
        "No version of model broken is available",
        dataplane.predict,
        predict_request("broken"),
    )
    assert dataplane.predict(predict_request()).model_spec.version.value == 2


# -- Classify / Regress / MultiInference ------------------------------------------------------------------


def classify_request(signature: str = "classify") -> Any:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "clf"
    request.model_spec.signature_name = signature
    for row in X:
        request.input.example_list.examples.add().CopyFrom(example(x=row.tolist()))
    return request


def test_classify(dataplane: Any) -> None:
    response = dataplane.classify(classify_request())
    assert response.model_spec.signature_name == "classify"
    probs = expected_probabilities(X)
    assert len(response.result.classifications) == 2
    for row, classification in enumerate(response.result.classifications):
        assert [c.label for c in classification.classes] == [label.decode() for label in LABELS]
        np.testing.assert_allclose([c.score for c in classification.classes], probs[row], rtol=1e-6)


def test_classify_with_context(dataplane: Any) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "clf"
    request.model_spec.signature_name = "classify"
    with_context = request.input.example_list_with_context
    with_context.context.CopyFrom(example(x=[9.0, 9.0, 9.0, 9.0]))
    with_context.examples.add().CopyFrom(example(x=X[0].tolist()))  # overrides the context's "x"
    with_context.examples.add()  # takes "x" from the context
    response = dataplane.classify(request)
    scores = [[c.score for c in r.classes] for r in response.result.classifications]
    np.testing.assert_allclose(scores, expected_probabilities([X[0], [9.0] * 4]), rtol=1e-6)


def regress_request() -> Any:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "clf"
    request.model_spec.signature_name = "regress"
    for row in X:
        request.input.example_list.examples.add().CopyFrom(example(x=row.tolist()))
    return request


def test_regress(dataplane: Any) -> None:
    response = dataplane.regress(regress_request())
    np.testing.assert_allclose([r.value for r in response.result.regressions], X.sum(axis=1) * 0.5, rtol=1e-6)


def test_classify_and_regress_errors(dataplane: Any) -> None:
    # Without --enable_signature_method_name_check the signature's structure decides (classifier.cc).
    expect_error(
        Status.INVALID_ARGUMENT,
        "No classification inputs found in SignatureDef",
        dataplane.classify,
        classify_request("serving_default"),
    )
    wrong = regress_request()
    wrong.model_spec.signature_name = "classify"
    expect_error(Status.INVALID_ARGUMENT, "Expected one output Tensor.", dataplane.regress, wrong)
    # An unknown signature is INVALID_ARGUMENT for Classify and Regress (classifier.cc, regressor.cc).
    for method, request in ((dataplane.classify, classify_request("nope")), (dataplane.regress, wrong)):
        request.model_spec.signature_name = "nope"
        expect_error(Status.INVALID_ARGUMENT, "No signature was found with the name: nope", method, request)
    empty = classify_request()
    empty.input.example_list.ClearField("examples")
    expect_error(Status.INVALID_ARGUMENT, "Input is empty.", dataplane.classify, empty)
    no_input = classify_request()
    no_input.ClearField("input")
    expect_error(Status.INVALID_ARGUMENT, "Input is empty.", dataplane.classify, no_input)


def test_multi_inference(dataplane: Any) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("classify", "tensorflow/serving/classify"),
        ("regress", "tensorflow/serving/regress"),
    ):
        task = request.tasks.add()
        task.model_spec.name = "clf"
        task.model_spec.signature_name = signature
        task.method_name = method
    request.input.CopyFrom(classify_request().input)
    response = dataplane.multi_inference(request)
    classification, regression = response.results
    assert classification.model_spec.signature_name == "classify"
    assert len(classification.classification_result.classifications) == 2
    np.testing.assert_allclose(
        [r.value for r in regression.regression_result.regressions], X.sum(axis=1) * 0.5, rtol=1e-6
    )


def test_multi_inference_errors(dataplane: Any) -> None:
    request = inference_pb2.MultiInferenceRequest()
    expect_error(Status.INVALID_ARGUMENT, "at least one task", dataplane.multi_inference, request)
    task = request.tasks.add()
    task.model_spec.name = "clf"
    task.model_spec.signature_name = "classify"
    task.method_name = "tensorflow/serving/classify"
    request.input.CopyFrom(classify_request().input)
    duplicate = inference_pb2.MultiInferenceRequest()
    duplicate.CopyFrom(request)
    duplicate.tasks.add().CopyFrom(task)
    expect_error(
        Status.INVALID_ARGUMENT,
        "Duplicate evaluation of signature: classify",
        dataplane.multi_inference,
        duplicate,
    )
    other_model = inference_pb2.MultiInferenceRequest()
    other_model.CopyFrom(request)
    other_model.tasks.add().model_spec.name = "other"
    expect_error(Status.INVALID_ARGUMENT, "same model name", dataplane.multi_inference, other_model)
    unknown = inference_pb2.MultiInferenceRequest()
    unknown.CopyFrom(request)
    unknown.tasks[0].model_spec.signature_name = "nope"
    expect_error(
        Status.INVALID_ARGUMENT,
        "Requested signature not found in model graph: nope",
        dataplane.multi_inference,
        unknown,
    )
    # TF Serving runs every task on the version the first task selects (multi_inference_helper.cc).
    other_version = inference_pb2.MultiInferenceRequest()
    other_version.CopyFrom(request)
    extra = other_version.tasks.add()
    extra.model_spec.name = "clf"
    extra.model_spec.version.value = 1
    extra.model_spec.signature_name = "regress"
    extra.method_name = "tensorflow/serving/regress"
    results = dataplane.multi_inference(other_version).results
    assert [r.model_spec.version.value for r in results] == [2, 2]
    bad_method = inference_pb2.MultiInferenceRequest()
    bad_method.CopyFrom(request)
    bad_method.tasks[0].method_name = "tensorflow/serving/predict"
    expect_error(
        Status.UNIMPLEMENTED, "Unsupported signature method_name", dataplane.multi_inference, bad_method
    )


# -- metadata, status, reload -----------------------------------------------------------------------------


def test_get_model_metadata(dataplane: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "clf"
    request.model_spec.version_label = "stable"
    request.metadata_field.append("signature_def")
    response = dataplane.get_model_metadata(request)
    assert response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    default = signature_map.signature_def["serving_default"]
    assert list(default.inputs) == ["x"]
    assert default.inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 4]
    assert signature_map.signature_def["classify"].method_name == "tensorflow/serving/classify"


def test_get_model_metadata_errors(dataplane: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "clf"
    expect_error(
        Status.INVALID_ARGUMENT, "at least one metadata_field", dataplane.get_model_metadata, request
    )
    request.metadata_field.append("graph")
    expect_error(
        Status.INVALID_ARGUMENT,
        "Metadata field graph is not supported",
        dataplane.get_model_metadata,
        request,
    )


def test_get_model_status(dataplane: Any) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "clf"
    response = dataplane.get_model_status(request)
    assert [(s.version, s.state, s.status.error_code) for s in response.model_version_status] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0),
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0),
    ]
    request.model_spec.version_label = "stable"
    assert [s.version for s in dataplane.get_model_status(request).model_version_status] == [1]
    request.model_spec.version.value = 2
    assert [s.version for s in dataplane.get_model_status(request).model_version_status] == [2]
    broken = get_model_status_pb2.GetModelStatusRequest()
    broken.model_spec.name = "broken"
    (status,) = dataplane.get_model_status(broken).model_version_status
    assert status.state == get_model_status_pb2.ModelVersionStatus.END
    assert status.status.error_code != 0
    assert status.status.error_message == "saved_model.pb is not a valid SavedModel"
    expect_error(
        Status.INVALID_ARGUMENT,
        "Missing ModelSpec",
        dataplane.get_model_status,
        get_model_status_pb2.GetModelStatusRequest(),
    )
    unknown = get_model_status_pb2.GetModelStatusRequest()
    unknown.model_spec.name = "nope"
    expect_error(
        Status.NOT_FOUND, "Could not find any versions of model nope", dataplane.get_model_status, unknown
    )


def test_reload_config_refused(dataplane: Any) -> None:
    expect_error(
        Status.PERMISSION_DENIED,
        "HandleReloadConfigRequest is disabled",
        dataplane.reload_config,
        model_management_pb2.ReloadConfigRequest(),
    )


def test_model_runtime_error_names_shapes_only(dataplane: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Broadcasting [2] against [3] fails inside TensorFlow; its message names shapes only, so it is shown.
    request = predict_request(text=np.array([b"a", b"b"], dtype=object), n=np.array([1, 2, 3], np.int32))
    request.model_spec.signature_name = "strings"
    expect_error(
        Status.INVALID_ARGUMENT,
        r"InvalidArgumentError running signature 'strings': Incompatible shapes: \[2\] vs. \[3\]$",
        dataplane.predict,
        request,
    )
    assert "Incompatible" not in caplog.text  # the log gets the class only
    assert "InvalidArgumentError" in caplog.text
    # The server keeps serving.
    assert dataplane.predict(predict_request()).model_spec.version.value == 2


def test_log_unexpected_keeps_stack_drops_message(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from confserve.serving import log_unexpected

    def inner() -> None:
        raise ValueError(f"secret {123 * 1000 + 456}")

    try:
        inner()
    except ValueError as exc:
        log_unexpected(logging.getLogger("t"), "doing x", exc)
    assert "doing x: unexpected ValueError" in caplog.text
    assert "inner" in caplog.text
    assert "123456" not in caplog.text
