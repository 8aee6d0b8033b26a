"""TF Serving conformance: what TF Serving's own tests and guides state, replayed against confserve's
ModelServer over gRPC (TF Serving's stubs) and REST.

Each case names its source in the table (`Case.source`): a test in tensorflow/serving
(tensorflow_model_server_test.py, http_rest_api_handler_test.cc, json_tensor_test.cc,
predict_util_test.cc, predict_impl_test.cc, classifier_test.cc, regressor_test.cc, multi_inference_test.cc)
or a guide (g3doc/api_rest.md), or issue 12's list where TF Serving's behaviour was observed. The models
are ours (tests/conformance/models.py), built in the shapes of TF Serving's test models, so expected values
are those of TF Serving's tests. Deliberate differences are not cases; docs/server.md lists them.
"""

from __future__ import annotations

import base64
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from tests.conformance.conftest import Client, Served
from tests.conformance.models import VERSION_1, VERSION_2

TIMEOUT = 30
PREDICT, CLASSIFY, REGRESS = (f"tensorflow/serving/{m}" for m in ("predict", "classify", "regress"))


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # the TF Serving test or document the expectation comes from
    run: Callable[[Served], None]


CASES: list[Case] = []


def case(source: str) -> Callable[[Callable[[Served], None]], Callable[[Served], None]]:
    def register(run: Callable[[Served], None]) -> Callable[[Served], None]:
        CASES.append(Case(run.__name__, source, run))
        return run

    return register


# -- helpers ------------------------------------------------------------------------------------------------


def float_tensor(values: Iterable[float], dims: Iterable[int] | None = None) -> Any:
    """A DT_FLOAT TensorProto built the way TF Serving's tests build it (float_val; dims as given)."""
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    tensor.float_val.extend(values)
    for size in dims or ():
        tensor.tensor_shape.dim.add().size = size
    return tensor


def predict_request(
    model: str = "default",
    signature: str = "serving_default",
    inputs: dict[str, Any] | None = None,
    output_filter: Iterable[str] = ("y",),
) -> Any:
    """VerifyPredictRequest's request (tensorflow_model_server_test_base.py): x = [2.0], shape [1]."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for alias, tensor in (inputs if inputs is not None else {"x": float_tensor([2.0], [1])}).items():
        request.inputs[alias].CopyFrom(tensor)
    request.output_filter.extend(output_filter)
    return request


def verify_predict(client: Client, expected: float, version: int, **kwargs: Any) -> None:
    """VerifyPredictRequest: y is DT_FLOAT with one float_val equal to `expected`; the model_spec echoes."""
    request = predict_request(**kwargs)
    result = client.prediction.Predict(request, TIMEOUT)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [expected]
    verify_model_spec(result.model_spec, request.model_spec.name, request.model_spec.signature_name, version)


def verify_model_spec(spec: Any, name: str, signature: str, version: int) -> None:
    assert (spec.name, spec.signature_name or "serving_default", spec.version.value) == (
        name,
        signature or "serving_default",
        version,
    )


def example(**features: Any) -> Any:
    message = example_pb2.Example()
    for name, values in features.items():
        feature = message.features.feature[name]
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, float):
                feature.float_list.value.append(value)
            elif isinstance(value, int):
                feature.int64_list.value.append(value)
            else:
                feature.bytes_list.value.append(value)
    return message


def examples_request(kind: type, model: str, signature: str, *examples: Any, context: Any = None) -> Any:
    request = kind()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if context is not None:
        request.input.example_list_with_context.context.CopyFrom(context)
        request.input.example_list_with_context.examples.extend(examples)
    else:
        request.input.example_list.examples.extend(examples)
    return request


def rpc_error(call: Callable[..., Any], request: Any, code: grpc.StatusCode, fragment: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request, TIMEOUT)
    assert info.value.code() == code, info.value.details()
    details: str = info.value.details()
    assert fragment in details, details
    return details


def rest_error(client: Client, method: str, path: str, body: Any, status: int, fragment: str) -> None:
    got, parsed, raw = client.rest(method, path, body)
    assert got == status, raw
    assert list(parsed) == ["error"], raw
    assert fragment in parsed["error"], parsed["error"]


def multi_request(model: str, tasks: Iterable[tuple[str, str]], *examples: Any) -> Any:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = model
        task.model_spec.signature_name = signature
        task.method_name = method
    request.input.example_list.examples.extend(examples)
    return request


# -- tensorflow_model_server_test.py ---------------------------------------------------------------------

MODEL_SERVER_TEST = "tensorflow_model_server_test.py"


@case(f"{MODEL_SERVER_TEST} testGetModelStatus")
def get_model_status(served: Served) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    result = served.client.model.GetModelStatus(request, TIMEOUT)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == VERSION_1
    assert result.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert result.model_version_status[0].status.error_code == 0


@case(f"{MODEL_SERVER_TEST} testGetModelMetadata")
def get_model_metadata(served: Served) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    result = served.client.prediction.GetModelMetadata(request, TIMEOUT)
    assert result.model_spec.name == "default"
    assert result.model_spec.version.value == VERSION_1
    assert list(result.metadata) == ["signature_def"]


def _classify(served: Served, model: str) -> None:
    request = examples_request(
        classification_pb2.ClassificationRequest, model, "classify_x_to_y", example(x=2.0)
    )
    result = served.client.prediction.Classify(request, TIMEOUT)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    verify_model_spec(result.model_spec, model, "classify_x_to_y", VERSION_1)


@case(f"{MODEL_SERVER_TEST} testClassify")
def classify_tf1(served: Served) -> None:
    _classify(served, "default")


@case(f"{MODEL_SERVER_TEST} testClassifyTf2 (TF2 signatures carry method_name predict)")
def classify_tf2(served: Served) -> None:
    _classify(served, "default_tf2")


def _regress(served: Served, model: str) -> None:
    request = examples_request(regression_pb2.RegressionRequest, model, "regress_x_to_y", example(x=2.0))
    result = served.client.prediction.Regress(request, TIMEOUT)
    assert [r.value for r in result.result.regressions] == [3.0]
    verify_model_spec(result.model_spec, model, "regress_x_to_y", VERSION_1)


@case(f"{MODEL_SERVER_TEST} testRegress")
def regress_tf1(served: Served) -> None:
    _regress(served, "default")


@case(f"{MODEL_SERVER_TEST} testRegressTf2")
def regress_tf2(served: Served) -> None:
    _regress(served, "default_tf2")


def _multi_inference(served: Served, model: str) -> None:
    tasks = [("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY)]
    request = multi_request(model, tasks, example(x=2.0))
    result = served.client.prediction.MultiInference(request, TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for index, (signature, _) in enumerate(tasks):
        verify_model_spec(result.results[index].model_spec, model, signature, VERSION_1)


@case(f"{MODEL_SERVER_TEST} testMultiInference")
def multi_inference_tf1(served: Served) -> None:
    _multi_inference(served, "default")


@case(f"{MODEL_SERVER_TEST} testMultiInferenceTf2")
def multi_inference_tf2(served: Served) -> None:
    _multi_inference(served, "default_tf2")


@case(f"{MODEL_SERVER_TEST} testPredictSavedModel (x of shape [1] against the TF1 signature's [-1, 1])")
def predict_saved_model(served: Served) -> None:
    verify_predict(served.client, 3.0, VERSION_1)


@case(f"{MODEL_SERVER_TEST} testGoodModelConfig")
def good_model_config(served: Served) -> None:
    for specify_output in (True, False):
        output_filter = ("y",) if specify_output else ()
        verify_predict(served.client, 3.0, VERSION_2, model="half_plus_two", output_filter=output_filter)
        verify_predict(served.client, 4.0, VERSION_1, model="half_plus_three", output_filter=output_filter)


@case(f"{MODEL_SERVER_TEST} _TestBadModel")
def bad_model(served: Served) -> None:
    rpc_error(
        served.client.prediction.Predict,
        predict_request("broken", ""),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
    )


@case(f"{MODEL_SERVER_TEST} testBadModelConfig (the start-up error's text)")
def bad_model_config(served: Served) -> None:
    import tempfile

    from confserve import replica
    from confserve.errors import ConfserveError

    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "bad_model_config.txt"
        config.write_text("improperly formatted file")
        options = replica.ServeOptions(model_config_file=str(config), insecure=True, allow_plaintext=True)
        with pytest.raises(ConfserveError) as info:
            replica.build(options, threading.Event())
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in str(info.value)


@case(f"{MODEL_SERVER_TEST} testGoodGrpcChannelArgs (server started with grpc_channel_arguments)")
def good_grpc_channel_args(served: Served) -> None:
    verify_predict(served.client, 3.0, VERSION_1, output_filter=())


@case(f"{MODEL_SERVER_TEST} testClassifyREST")
def classify_rest(served: Served) -> None:
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    status, parsed, _ = served.client.rest("POST", "/v1/models/default:classify", body)
    assert (status, parsed) == (200, {"results": [[["", 3.0]]]})


@case(f"{MODEL_SERVER_TEST} testRegressREST")
def regress_rest(served: Served) -> None:
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    status, parsed, _ = served.client.rest("POST", "/v1/models/default:regress", body)
    assert (status, parsed) == (200, {"results": [3.0]})


@case(f"{MODEL_SERVER_TEST} testPredictREST (a [3] tensor against the declared [-1, 1])")
def predict_rest(served: Served) -> None:
    status, parsed, _ = served.client.rest(
        "POST", "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]}
    )
    assert (status, parsed) == (200, {"predictions": [3.0, 3.5, 4.0]})


@case(f"{MODEL_SERVER_TEST} testPredictColumnarREST")
def predict_columnar_rest(served: Served) -> None:
    status, parsed, _ = served.client.rest("POST", "/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]})
    assert (status, parsed) == (200, {"outputs": [3.0, 3.5, 4.0]})


AVAILABLE_123 = {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


@case(f"{MODEL_SERVER_TEST} testGetStatusREST")
def get_status_rest(served: Served) -> None:
    status, parsed, _ = served.client.rest("GET", "/v1/models/default")
    assert (status, parsed) == (200, {"model_version_status": [AVAILABLE_123]})


@case(f"{MODEL_SERVER_TEST} testGetModelMetadataREST (the layout of half_plus_two_model_metadata.json)")
def get_model_metadata_rest(served: Served) -> None:
    status, parsed, _ = served.client.rest("GET", "/v1/models/default/metadata")
    assert status == 200
    assert parsed["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}
    signatures = parsed["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {
        "serving_default",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
        "classify_x_to_y",
    }
    dims = [{"size": "-1", "name": ""}, {"size": "1", "name": ""}]
    assert signatures["regress_x2_to_y3"] == {
        "inputs": {
            "inputs": {
                "dtype": "DT_FLOAT",
                "tensor_shape": {"dim": dims, "unknown_rank": False},
                "name": "x2:0",
            }
        },
        "outputs": {
            "outputs": {
                "dtype": "DT_FLOAT",
                "tensor_shape": {"dim": dims, "unknown_rank": False},
                "name": "y3:0",
            }
        },
        "method_name": REGRESS,
        "defaults": {},
    }


@case(f"{MODEL_SERVER_TEST} testPrometheusEndpoint")
def prometheus_endpoint(served: Served) -> None:
    status, _, raw = served.client.rest("GET", "/monitoring/prometheus/metrics")
    assert status == 200
    assert "# TYPE" in raw.decode()


@case(f"{MODEL_SERVER_TEST} test_tf_saved_model_save")
def tf_saved_model_save(served: Served) -> None:
    verify_predict(served.client, 12.0, VERSION_1, model="saved_model_save", output_filter=())


@case(f"{MODEL_SERVER_TEST} test_tf_saved_model_save_multiple_signatures")
def tf_saved_model_save_multiple_signatures(served: Served) -> None:
    verify_predict(
        served.client, 2.0, VERSION_1, model="multiple_signatures", signature="custom_signature_key"
    )
    verify_predict(served.client, 1.0, VERSION_1, model="multiple_signatures")


# -- http_rest_api_handler_test.cc --------------------------------------------------------------------------

HANDLER_TEST = "http_rest_api_handler_test.cc"


@case(f"{HANDLER_TEST} UnsupportedApiCalls")
def rest_unsupported_api_calls(served: Served) -> None:
    malformed = [
        ("GET", "/v1/foo"),
        ("POST", "/v1/foo"),
        ("GET", "/v1/models/debug/model_name"),
        ("POST", "/v1/models"),
        ("GET", "/v1/models/foo:predict"),
        ("GET", "/v1/models/foo/version/50:predict"),
        ("POST", "/v1/models/foo/version/50:regress"),
        ("POST", "/v1/models/foo/versions/HELLO:regress"),
        ("POST", "/v1/models/foo/metadata"),
        ("POST", "/v1/models/foo/label/some_label:regress"),
        ("POST", "/v1/models/foo/versions/50/labels/some_label:regress"),
        ("POST", "/v1/models/foo/versions/some_label:regress"),
    ]
    for method, path in malformed:
        rest_error(served.client, method, path, b"", 400, "Malformed request")
    rest_error(served.client, "GET", "/v1/models", b"", 400, "Missing model name")
    huge = "/v1/models/foo/versions/" + "9" * 30 + ":regress"
    rest_error(served.client, "POST", huge, b"", 400, "Failed to convert version")


@case(f"{HANDLER_TEST} PredictModelNameVersionErrors")
def rest_predict_model_name_version_errors(served: Served) -> None:
    for path in (
        "/v1/models/foo:predict",
        "/v1/models/foo/versions/50:predict",
        "/v1/models/default99:predict",
    ):
        status, _, raw = served.client.rest("POST", path, {"instances": [1]})
        assert status == 404, raw


@case(f"{HANDLER_TEST} PredictRequestErrors")
def rest_predict_request_errors(served: Served) -> None:
    path = "/v1/models/half_plus_two:predict"
    rest_error(served.client, "POST", path, b"", 400, "JSON Parse error: The document is empty")
    rest_error(served.client, "POST", path, b"instances = [1, 2]", 400, "JSON Parse error: Invalid value")
    rest_error(served.client, "POST", path, {"instances": ["x", "y"]}, 400, "not of expected type: float")
    label_path = "/v1/models/half_plus_two/labels/Version_Nonexistent:predict"
    rest_error(
        served.client,
        "POST",
        label_path,
        {"instances": ["x", "y"]},
        400,
        "Unrecognized servable version label",
    )
    rest_error(
        served.client,
        "POST",
        path,
        {"signature_name": 100},
        400,
        "'signature_name' key must be a string value.",
    )


@case(f"{HANDLER_TEST} Predict (row and columnar; version and label paths)")
def rest_predict(served: Served) -> None:
    calls = [
        (
            "/v1/models/half_plus_two:predict",
            {"instances": [[1.0, 2.0], [3.0, 4.0]]},
            {"predictions": [[2.5, 3.0], [3.5, 4.0]]},
        ),
        (
            "/v1/models/half_plus_two/versions/123:predict",
            {"instances": [1.0, 2.0]},
            {"predictions": [2.5, 3.0]},
        ),
        (
            "/v1/models/half_plus_two/labels/stable:predict",
            {"instances": [1.0, 2.0]},
            {"predictions": [2.5, 3.0]},
        ),
        (
            "/v1/models/half_plus_two/versions/123:predict",
            {"signature_name": "serving_default", "instances": [3.0, 4.0]},
            {"predictions": [3.5, 4.0]},
        ),
        (
            "/v1/models/half_plus_two/versions/123:predict",
            {"signature_name": "serving_default", "inputs": [3.0, 4.0]},
            {"outputs": [3.5, 4.0]},
        ),
    ]
    for path, body, expected in calls:
        status, parsed, raw = served.client.rest("POST", path, body)
        assert (status, parsed) == (200, expected), raw


@case(f"{HANDLER_TEST} Regress")
def rest_regress(served: Served) -> None:
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    for path in (
        "/v1/models/half_plus_two",
        "/v1/models/half_plus_two/versions/123",
        "/v1/models/half_plus_two/labels/stable",
    ):
        status, parsed, raw = served.client.rest("POST", f"{path}:regress", body)
        assert (status, parsed) == (200, {"results": [42]}), raw


@case(f"{HANDLER_TEST} Classify")
def rest_classify(served: Served) -> None:
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}
    status, parsed, _ = served.client.rest("POST", "/v1/models/half_plus_two:classify", body)
    assert (status, parsed) == (200, {"results": [[["", 12]]]})
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]}
    status, parsed, _ = served.client.rest("POST", "/v1/models/half_plus_two/labels/stable:classify", body)
    assert (status, parsed) == (200, {"results": [[["", 7]]]})


@case(f"{HANDLER_TEST} GetStatus (all versions, one version, a label)")
def rest_get_status(served: Served) -> None:
    status, parsed, _ = served.client.rest("GET", "/v1/models/half_plus_two")
    assert status == 200
    assert sorted(entry["version"] for entry in parsed["model_version_status"]) == ["123", "124"]
    for path in ("/v1/models/half_plus_two/versions/123", "/v1/models/half_plus_two/labels/stable"):
        status, parsed, _ = served.client.rest("GET", path)
        assert (status, parsed) == (200, {"model_version_status": [AVAILABLE_123]})


@case(f"{HANDLER_TEST} GetInfoMap: an unknown predict signature is INVALID_ARGUMENT (400)")
def rest_unknown_signature(served: Served) -> None:
    for verb in ("predict", "classify", "regress"):
        body = {"signature_name": "nope", "instances": [1.0], "examples": [{"x": 1.0}]}
        if verb == "predict":
            del body["examples"]
        else:
            del body["instances"]
        status, parsed, raw = served.client.rest("POST", f"/v1/models/half_plus_two:{verb}", body)
        assert status == 400, raw
        assert "nope" in parsed["error"]


# -- json_tensor_test.cc and g3doc/api_rest.md --------------------------------------------------------------

JSON_TEST = "json_tensor_test.cc"
REST_GUIDE = "g3doc/api_rest.md"


@case(f"{JSON_TEST} FromJsonSingleFloatTensorSixDigitPrecision / json_tensor.cc WriteDecimal (9e+06, 3.0)")
def rest_float_formatting(served: Served) -> None:
    status, _, raw = served.client.rest(
        "POST", "/v1/models/default:predict", {"instances": [17999996.0, 2.0]}
    )
    assert (status, raw.replace(b" ", b"").replace(b"\n", b"")) == (200, b'{"predictions":[9e+06,3.0]}')


@case(f"{JSON_TEST} ClassifyRegressRequestTest RequestWithContextAndSignature (booleans are int64 1/0)")
def rest_examples_bool_int_typing(served: Served) -> None:
    body = {"examples": [{"x": 2.0, "count": [1, True, False]}]}
    status, parsed, raw = served.client.rest("POST", "/v1/models/estimator:regress", body)
    assert (status, parsed) == (200, {"results": [6.0]}), raw  # 0.5 * 2 + 3 + (1 + 1 + 0)


@case(f"{JSON_TEST} ClassifyRegressRequestTest JsonErrors")
def rest_examples_json_errors(served: Served) -> None:
    errors = [
        ({"names": [10, None]}, "names has element with unexpected JSON type: Null"),
        ({"names": [10, 10.0]}, "feature: names expecting type: int64"),
        ({"names": [10, {"test": 10}]}, "names has element with unexpected JSON type: Object"),
        ({"names": [[10], 20]}, "names has element with unexpected JSON type: Array"),
        ({"names": [20, 18446744073709551603]}, "Only int64_t is supported"),
    ]
    for features, fragment in errors:
        rest_error(
            served.client, "POST", "/v1/models/estimator:regress", {"examples": [features]}, 400, fragment
        )
    rest_error(
        served.client,
        "POST",
        "/v1/models/estimator:regress",
        {"context": [{}], "examples": [{}]},
        400,
        "Example must be JSON object",
    )
    rest_error(
        served.client,
        "POST",
        "/v1/models/estimator:regress",
        {"examples": {"names": ["foo"]}},
        400,
        "list/array",
    )
    rest_error(
        served.client,
        "POST",
        "/v1/models/estimator:regress",
        {"examples": [[{}]]},
        400,
        "Example must be JSON object",
    )
    rest_error(
        served.client,
        "POST",
        "/v1/models/estimator:regress",
        {"signature_name": ["x"], "examples": [{}]},
        400,
        "'signature_name' key must be a string",
    )


@case(f"{JSON_TEST} ClassifyRegressRequestTest RequestWithContextAndSignature (context shared by examples)")
def rest_examples_with_context(served: Served) -> None:
    body = {"signature_name": "regress_x_to_y", "context": {"x": 2.0}, "examples": [{}, {"x": 4.0}]}
    status, parsed, raw = served.client.rest("POST", "/v1/models/half_plus_two:regress", body)
    assert (status, parsed) == (200, {"results": [3.0, 4.0]}), raw


@case(f"{JSON_TEST} ClassifyRegressnResultTest JsonFromClassificationResult (labels and scores)")
def rest_classify_labels(served: Served) -> None:
    body = {"signature_name": "classification", "examples": [{"x": 2.0}, {"x": 4.0}]}
    status, parsed, raw = served.client.rest("POST", "/v1/models/estimator:classify", body)
    assert status == 200, raw
    assert [[label for label, _ in row] for row in parsed["results"]] == [["neg", "pos"]] * 2
    assert parsed["results"][1][1][1] > parsed["results"][0][1][1]


@case(f"{REST_GUIDE} Encoding binary values (a b64 feature in a classify request)")
def rest_classify_b64_feature(served: Served) -> None:
    body = {
        "signature_name": "classification",
        "examples": [{"kind": {"b64": "aW1hZ2UgYnl0ZXM="}, "x": 2.0}, {"kind": "mountains", "x": 6.0}],
    }
    status, parsed, raw = served.client.rest("POST", "/v1/models/estimator:classify", body)
    assert status == 200, raw
    assert len(parsed["results"]) == 2


@case(f"{REST_GUIDE} Output of binary values (_bytes suffix) and Encoding binary values")
def rest_bytes_b64(served: Served) -> None:
    raw_image = b"\x89PNG\x00\x01"
    body = {"instances": [{"image_bytes": {"b64": base64.b64encode(raw_image).decode()}, "key": "k1"}]}
    status, parsed, raw = served.client.rest("POST", "/v1/models/bytes:predict", body)
    assert status == 200, raw
    assert parsed == {
        "predictions": [
            {
                "key": "k1",
                "length": len(raw_image),
                "output_bytes": {"b64": base64.b64encode(raw_image + b"\x00\xff").decode()},
            }
        ]
    }


@case(f"{REST_GUIDE} Example (half_plus_three: status, predict, regress, a wrong model)")
def rest_guide_example(served: Served) -> None:
    status, parsed, _ = served.client.rest("GET", "/v1/models/saved_model_half_plus_three")
    assert (status, parsed) == (200, {"model_version_status": [AVAILABLE_123]})
    path = "/v1/models/saved_model_half_plus_three"
    status, parsed, _ = served.client.rest("POST", f"{path}:predict", {"instances": [1.0, 2.0, 5.0]})
    assert (status, parsed) == (200, {"predictions": [3.5, 4.0, 5.5]})
    body = {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}
    status, parsed, _ = served.client.rest("POST", f"{path}:regress", body)
    assert (status, parsed) == (200, {"results": [3.5, 4.0]})
    status, parsed, _ = served.client.rest("POST", "/v1/models/half:predict", {"instances": [1.0, 5.0]})
    assert (status, parsed) == (404, {"error": "Servable not found for request: Latest(half)"})


@case(f"{REST_GUIDE} JSON conformance (NaN and Infinity in and out)")
def rest_nan_and_infinity(served: Served) -> None:
    status, parsed, raw = served.client.rest(
        "POST", "/v1/models/default:predict", b'{"instances": [NaN, Infinity]}'
    )
    assert status == 200, raw
    assert math.isnan(parsed["predictions"][0])
    assert parsed["predictions"][1] == math.inf


@case("issue 12 (TF Serving accepts [3], scalar and [[1,2],[3,4]] for half_plus_two's [-1, 1]) over gRPC")
def grpc_predict_shapes_left_to_the_model(served: Served) -> None:
    for tensor, values in (
        (float_tensor([1.0, 2.0, 5.0], [3]), [2.5, 3.0, 4.5]),
        (float_tensor([2.0]), [3.0]),
        (float_tensor([1.0, 2.0, 3.0, 4.0], [2, 2]), [2.5, 3.0, 3.5, 4.0]),
    ):
        result = served.client.prediction.Predict(predict_request(inputs={"x": tensor}), TIMEOUT)
        assert list(result.outputs["y"].float_val) == values
        assert result.outputs["y"].tensor_shape == tensor.tensor_shape


# -- predict_util_test.cc / predict_impl_test.cc ------------------------------------------------------------

PREDICT_TEST = "predict_util_test.cc"


@case(f"{PREDICT_TEST} PredictionSuccess (a scalar in, TF Serving's exact response out)")
def predict_scalar_success(served: Served) -> None:
    request = predict_request(inputs={"x": float_tensor([2.0])}, output_filter=(), signature="")
    response = served.client.prediction.Predict(request, TIMEOUT)
    expected = predict_pb2.PredictResponse()
    expected.model_spec.name = "default"
    expected.model_spec.version.value = VERSION_1
    expected.model_spec.signature_name = "serving_default"
    output = expected.outputs["y"]
    output.dtype = types_pb2.DT_FLOAT
    output.tensor_shape.SetInParent()
    output.float_val.append(3.0)
    assert response == expected


@case(f"{PREDICT_TEST} PredictionWithNamedRegressionSignature")
def predict_named_regression_signature(served: Served) -> None:
    request = predict_request(
        signature="regress_x2_to_y3", inputs={"inputs": float_tensor([2.0])}, output_filter=()
    )
    response = served.client.prediction.Predict(request, TIMEOUT)
    assert list(response.outputs) == ["outputs"]
    assert list(response.outputs["outputs"].float_val) == [4.0]
    assert response.model_spec.signature_name == "regress_x2_to_y3"


@case(f"{PREDICT_TEST} PredictionWithNamedClassificationSignature")
def predict_named_classification_signature(served: Served) -> None:
    request = predict_request(
        "default_tf2", "classify_x2_to_y3", inputs={"inputs": float_tensor([2.0])}, output_filter=()
    )
    response = served.client.prediction.Predict(request, TIMEOUT)
    assert list(response.outputs["scores"].float_val) == [4.0]


@case(f"{PREDICT_TEST} InputTensorsDontMatchModelSpecInputs")
def predict_inputs_dont_match(served: Served) -> None:
    text = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"any_value"])
    text.tensor_shape.dim.add().size = 1
    request = predict_request(
        inputs={"unknown_key1": text, "unknown_key2": float_tensor([1.0], [1])}, output_filter=()
    )
    details = rpc_error(
        served.client.prediction.Predict,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "Sent extra: {unknown_key1,unknown_key2}",
    )
    assert "Missing but required: {x}" in details


@case(f"{PREDICT_TEST} PredictionInvalidTensor")
def predict_invalid_tensor(served: Served) -> None:
    flag = tensor_pb2.TensorProto(dtype=types_pb2.DT_BOOL, bool_val=[True])
    request = predict_request(inputs={"x": flag}, output_filter=())
    rpc_error(
        served.client.prediction.Predict,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expects arg[0] to be float but bool is provided",
    )


@case(f"{PREDICT_TEST} OutputFiltersDontMatchModelSpecOutputs")
def predict_output_filters(served: Served) -> None:
    request = predict_request(inputs={"x": float_tensor([2.0])}, output_filter=("output_filter",))
    rpc_error(
        served.client.prediction.Predict,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "output tensor alias not found in signature: output_filter",
    )
    served.client.prediction.Predict(predict_request(inputs={"x": float_tensor([2.0])}), TIMEOUT)
    duplicate = predict_request(inputs={"x": float_tensor([2.0])}, output_filter=("y", "y"))
    rpc_error(
        served.client.prediction.Predict,
        duplicate,
        grpc.StatusCode.INVALID_ARGUMENT,
        "duplicate output tensor alias: y",
    )


@case(f"{PREDICT_TEST} InputTensorsHaveWrongType")
def predict_inputs_wrong_type(served: Served) -> None:
    text = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"any_value"])
    text.tensor_shape.dim.add().size = 1
    rpc_error(
        served.client.prediction.Predict,
        predict_request(inputs={"x": text}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "to be float but string is provided",
    )


@case(f"{PREDICT_TEST} EmptyInputList")
def predict_empty_input_list(served: Served) -> None:
    request = predict_request(inputs={}, output_filter=())
    request.model_spec.version.value = VERSION_1
    rpc_error(served.client.prediction.Predict, request, grpc.StatusCode.INVALID_ARGUMENT, "")


@case("predict_impl_test.cc MissingOrEmptyModelSpec")
def predict_missing_model_spec(served: Served) -> None:
    rpc_error(
        served.client.prediction.Predict, predict_pb2.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT, ""
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.SetInParent()
    rpc_error(served.client.prediction.Predict, request, grpc.StatusCode.INVALID_ARGUMENT, "")
    request.model_spec.name = "test"
    rpc_error(served.client.prediction.Predict, request, grpc.StatusCode.NOT_FOUND, "")


@case(
    "predict_util.cc RunPredict; classifier.cc, regressor.cc, multi_inference.cc: an unknown signature's status"
)
def unknown_signature_status_per_rpc(served: Served) -> None:
    stub = served.client.prediction
    rpc_error(
        stub.Predict,
        predict_request(signature="nope"),
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "nope" not found.',
    )
    classify = examples_request(classification_pb2.ClassificationRequest, "default", "nope", example(x=2.0))
    rpc_error(
        stub.Classify,
        classify,
        grpc.StatusCode.INVALID_ARGUMENT,
        "No signature was found with the name: nope",
    )
    regress = examples_request(regression_pb2.RegressionRequest, "default", "nope", example(x=2.0))
    rpc_error(
        stub.Regress, regress, grpc.StatusCode.INVALID_ARGUMENT, "No signature was found with the name: nope"
    )
    multi = multi_request("default", [("nope", REGRESS)], example(x=2.0))
    rpc_error(stub.MultiInference, multi, grpc.StatusCode.INVALID_ARGUMENT, "signature not found")


@case(
    f"{PREDICT_TEST}, classifier_test.cc, regressor_test.cc MethodNameCheck (--enable_signature_method_name_check)"
)
def method_name_check(served: Served) -> None:
    stub = served.strict.prediction
    classify = examples_request(
        classification_pb2.ClassificationRequest, "default_tf2", "classify_x_to_y", example(x=2.0)
    )
    rpc_error(
        stub.Classify,
        classify,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Expected classification signature method_name to be {CLASSIFY}",
    )
    regress = examples_request(
        regression_pb2.RegressionRequest, "default_tf2", "regress_x_to_y", example(x=2.0)
    )
    rpc_error(
        stub.Regress,
        regress,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Expected regression signature method_name to be {REGRESS}",
    )
    verify_predict(served.strict, 3.0, VERSION_1, model="default_tf2")  # a predict signature passes


@case("predict_util.cc PostProcessPredictionResult: outputs as typed values (Tensor::AsProtoField)")
def predict_outputs_typed_fields(served: Served) -> None:
    request = predict_request(inputs={"x": float_tensor([1.0, 2.0, 3.0, 4.0], [4, 1])}, output_filter=())
    output = served.client.prediction.Predict(request, TIMEOUT).outputs["y"]
    assert output.tensor_content == b""
    assert list(output.float_val) == [2.5, 3.0, 3.5, 4.0]
    assert [d.size for d in output.tensor_shape.dim] == [4, 1]


@case("issue 12: an Estimator-style TF1 export (ParseExample on serialized tf.Example) loads and serves")
def estimator_export(served: Served) -> None:
    serialized = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    serialized.string_val.append(example(x=2.0, kind=b"a").SerializeToString())
    serialized.tensor_shape.dim.add().size = 1
    request = predict_request("estimator", "predict", inputs={"examples": serialized}, output_filter=())
    response = served.client.prediction.Predict(request, TIMEOUT)
    assert list(response.outputs["predictions"].float_val) == [4.0]
    assert list(response.outputs["kind"].string_val) == [b"a"]
    regress = examples_request(
        regression_pb2.RegressionRequest, "estimator", "", example(x=2.0, count=[1, 2, 3])
    )
    assert [r.value for r in served.client.prediction.Regress(regress, TIMEOUT).result.regressions] == [10.0]


# -- classifier_test.cc / regressor_test.cc -----------------------------------------------------------------


@case("classifier_test.cc InvalidNamedSignature; regressor_test.cc InvalidNamedSignature")
def invalid_named_signature(served: Served) -> None:
    stub = served.client.prediction
    for call, kind in (
        (stub.Classify, classification_pb2.ClassificationRequest),
        (stub.Regress, regression_pb2.RegressionRequest),
    ):
        rpc_error(
            call,
            examples_request(kind, "default", "idontexist", example(x=2.0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "",
        )


@case("classifier_test.cc, regressor_test.cc EmptyInput / EmptyExampleList / EmptyExampleListWithContext")
def empty_input(served: Served) -> None:
    stub = served.client.prediction
    for call, kind, signature in (
        (stub.Classify, classification_pb2.ClassificationRequest, "classify_x_to_y"),
        (stub.Regress, regression_pb2.RegressionRequest, "regress_x_to_y"),
    ):
        no_input = examples_request(kind, "default", signature)
        no_input.ClearField("input")
        empty_list = examples_request(kind, "default", signature)
        empty_context = examples_request(kind, "default", signature, context=example(x=2.0))
        for request in (no_input, empty_list, empty_context):
            rpc_error(call, request, grpc.StatusCode.INVALID_ARGUMENT, "Input is empty")


@case(
    "classifier_test.cc ExampleListWithContext_DuplicateFeatures; regressor_test.cc BasicExampleListWithContext"
)
def example_list_with_context(served: Served) -> None:
    request = examples_request(
        regression_pb2.RegressionRequest,
        "default",
        "regress_x_to_y",
        example(),
        example(x=4.0),
        context=example(x=2.0),
    )
    result = served.client.prediction.Regress(request, TIMEOUT)
    assert [r.value for r in result.result.regressions] == [3.0, 4.0]


@case("classifier_test.cc MissingClassificationSignature")
def missing_classification_signature(served: Served) -> None:
    request = examples_request(
        classification_pb2.ClassificationRequest, "default", "regress_x_to_y", example(x=2.0)
    )
    rpc_error(served.client.prediction.Classify, request, grpc.StatusCode.INVALID_ARGUMENT, "")


@case("classifier_test.cc ExampleList (classes and scores)")
def classify_classes_and_scores(served: Served) -> None:
    request = examples_request(
        classification_pb2.ClassificationRequest,
        "estimator",
        "classification",
        example(x=2.0),
        example(x=6.0),
    )
    result = served.client.prediction.Classify(request, TIMEOUT).result
    assert [[c.label for c in row.classes] for row in result.classifications] == [["neg", "pos"]] * 2
    for row in result.classifications:
        assert math.isclose(sum(c.score for c in row.classes), 1.0, rel_tol=1e-6)


# -- multi_inference_test.cc --------------------------------------------------------------------------------

MULTI_TEST = "multi_inference_test.cc"


@case(f"{MULTI_TEST} MissingInputTest")
def multi_missing_input(served: Served) -> None:
    request = multi_request("default", [("regress_x_to_y", REGRESS)])
    rpc_error(
        served.client.prediction.MultiInference, request, grpc.StatusCode.INVALID_ARGUMENT, "Input is empty"
    )


@case(f"{MULTI_TEST} UndefinedSignatureTest")
def multi_undefined_signature(served: Served) -> None:
    request = multi_request("default", [("ThisSignatureDoesNotExist", REGRESS)], example(x=2.0))
    rpc_error(
        served.client.prediction.MultiInference,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "signature not found",
    )


@case(f"{MULTI_TEST} InconsistentModelSpecsInRequestTest")
def multi_inconsistent_model_specs(served: Served) -> None:
    request = multi_request("default", [("regress_x_to_y", REGRESS)], example(x=2.0))
    task = request.tasks.add()
    task.model_spec.name = "ModelDoesNotExist"
    task.model_spec.signature_name = "regress_x_to_y"
    task.method_name = REGRESS
    rpc_error(
        served.client.prediction.MultiInference,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "must access the same model name",
    )


@case(f"{MULTI_TEST} EvaluateDuplicateSignaturesTest")
def multi_duplicate_signatures(served: Served) -> None:
    request = multi_request("default", [("regress_x_to_y", REGRESS)] * 2, example(x=2.0))
    rpc_error(
        served.client.prediction.MultiInference,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "Duplicate evaluation of signature: regress_x_to_y",
    )


@case(f"{MULTI_TEST} UsupportedSignatureTypeTest")
def multi_unsupported_signature_type(served: Served) -> None:
    request = multi_request("default", [("serving_default", PREDICT)], example(x=2.0))
    rpc_error(
        served.client.prediction.MultiInference,
        request,
        grpc.StatusCode.UNIMPLEMENTED,
        "Unsupported signature",
    )


@case(f"{MULTI_TEST} ValidSingleSignatureTest (the exact response)")
def multi_valid_single_signature(served: Served) -> None:
    request = multi_request("default", [("regress_x_to_y", REGRESS)], example(x=2.0))
    expected = inference_pb2.MultiInferenceResponse()
    result = expected.results.add()
    result.model_spec.CopyFrom(request.tasks[0].model_spec)
    result.model_spec.version.value = VERSION_1
    result.regression_result.regressions.add().value = 3.0
    assert served.client.prediction.MultiInference(request, TIMEOUT) == expected


@case(f"{MULTI_TEST} MultipleValidRegressSignaturesTest")
def multi_multiple_regress_signatures(served: Served) -> None:
    request = multi_request(
        "default", [("regress_x_to_y", REGRESS), ("regress_x_to_y2", REGRESS)], example(x=2.0)
    )
    results = served.client.prediction.MultiInference(request, TIMEOUT).results
    assert [r.regression_result.regressions[0].value for r in results] == [3.0, 4.0]


@pytest.mark.parametrize("conformance_case", CASES, ids=[c.name for c in CASES])
def test_tf_serving_case(served: Served, conformance_case: Case) -> None:
    assert conformance_case.source
    conformance_case.run(served)


def test_the_case_table_names_its_sources() -> None:
    sources = ("_test.py", "_test.cc", "g3doc/", ".cc", "issue 12")
    assert len({c.name for c in CASES}) == len(CASES)
    assert all(any(s in c.source for s in sources) for c in CASES)
