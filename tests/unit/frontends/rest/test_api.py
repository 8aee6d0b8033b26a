"""The REST API without sockets: RestApi.handle over the real DataPlane and model."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import pytest

from confserve.frontends.rest import RestApi
from tests.unit.serving.models import LABELS, expected_probabilities, make_dataplane

X = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> RestApi:
    return RestApi(make_dataplane(tmp_path_factory.mktemp("served")))


def call(api: RestApi, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    response = api.handle(method, path, raw)
    assert response.content_type == "application/json"
    return response.status, json.loads(response.body)


def test_predict_row_format(api: RestApi) -> None:
    status, body = call(api, "POST", "/v1/models/clf:predict", {"instances": X})
    assert status == 200
    rows = body["predictions"]
    assert [sorted(r) for r in rows] == [["class_ids", "probabilities"]] * 2
    np.testing.assert_allclose([r["probabilities"] for r in rows], expected_probabilities(X), rtol=1e-6)
    assert [r["class_ids"] for r in rows] == list(expected_probabilities(X).argmax(axis=1))


def test_predict_named_instances_and_version_path(api: RestApi) -> None:
    status, body = call(
        api, "POST", "/v1/models/clf/versions/1:predict", {"instances": [{"x": row} for row in X]}
    )
    assert status == 200
    assert len(body["predictions"]) == 2


def test_predict_columnar_format(api: RestApi) -> None:
    status, body = call(api, "POST", "/v1/models/clf/labels/stable:predict", {"inputs": {"x": X}})
    assert status == 200
    np.testing.assert_allclose(body["outputs"]["probabilities"], expected_probabilities(X), rtol=1e-6)
    status, body = call(api, "POST", "/v1/models/clf:predict", {"inputs": X})
    assert status == 200
    assert set(body["outputs"]) == {"class_ids", "probabilities"}


def test_predict_strings_and_b64(api: RestApi) -> None:
    raw = b"\xff\x00\x01"
    request = {
        "signature_name": "strings",
        "instances": [{"text": "héllo", "n": 1}, {"text": {"b64": base64.b64encode(raw).decode()}, "n": 0}],
    }
    status, body = call(api, "POST", "/v1/models/clf:predict", request)
    assert status == 200, body
    first, second = body["predictions"]
    assert first == {
        "length": len("héllo".encode()) + 1,
        "echo_bytes": {"b64": base64.b64encode("héllo".encode()).decode()},
    }
    assert second["echo_bytes"] == {"b64": base64.b64encode(raw).decode()}
    status, body = call(
        api,
        "POST",
        "/v1/models/clf:predict",
        {"signature_name": "strings", "inputs": {"text": ["a"], "n": [2]}},
    )
    assert body == {"outputs": {"echo_bytes": [{"b64": "YQ=="}], "length": [3]}}


def test_nan_and_infinity_are_accepted(api: RestApi) -> None:
    status, body = call(api, "POST", "/v1/models/clf:predict", b'{"instances": [[NaN, 1, 2, Infinity]]}')
    assert status == 200
    assert all(math.isnan(p) for p in body["predictions"][0]["probabilities"])


def test_classify_and_regress(api: RestApi) -> None:
    examples = [{"x": row} for row in X]
    status, body = call(
        api, "POST", "/v1/models/clf:classify", {"signature_name": "classify", "examples": examples}
    )
    assert status == 200, body
    probs = expected_probabilities(X)
    for row, result in enumerate(body["results"]):
        assert [label for label, _ in result] == [label.decode() for label in LABELS]
        np.testing.assert_allclose([score for _, score in result], probs[row], rtol=1e-6)
    status, body = call(
        api,
        "POST",
        "/v1/models/clf:regress",
        {"signature_name": "regress", "context": {"x": [1.0, 1.0, 1.0, 1.5]}, "examples": [{}, {"x": X[0]}]},
    )
    assert status == 200, body
    np.testing.assert_allclose(body["results"], [2.25, 5.0], rtol=1e-6)


def test_status_and_metadata(api: RestApi) -> None:
    status, body = call(api, "GET", "/v1/models/clf")
    assert status == 200
    assert body == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }
    status, body = call(api, "GET", "/v1/models/broken/versions/1")
    assert status == 200
    (entry,) = body["model_version_status"]
    assert entry["state"] == "END"
    assert entry["status"]["error_message"] == "saved_model.pb is not a valid SavedModel"
    status, body = call(api, "GET", "/v1/models/clf/labels/stable/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "clf", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("POST", "/v1/models/clf:explain", {}, 400, "Malformed request: POST /v1/models/clf:explain"),
        (
            "POST",
            "/v1/models/nope:predict",
            {"instances": X},
            404,
            "Servable not found for request: Latest(nope)",
        ),
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        ("POST", "/v1/models/clf/versions/7:predict", {"instances": X}, 404, "Specific(clf, 7)"),
        (
            "POST",
            "/v1/models/clf/labels/zz:predict",
            {"instances": X},
            400,
            "Unrecognized servable version label",
        ),
        (
            "POST",
            "/v1/models/broken:predict",
            {"instances": X},
            400,
            "No version of model broken is available",
        ),
        ("POST", "/v1/models/clf:predict", b"{not json", 400, "JSON Parse error"),
        ("POST", "/v1/models/clf:predict", b"[1]", 400, "Is not object"),
        ("POST", "/v1/models/clf:predict", b" ", 400, "JSON Parse error: The document is empty"),
        ("POST", "/v1/models/clf:predict", {}, 400, "Missing 'inputs' or 'instances' key"),
        (
            "POST",
            "/v1/models/clf:predict",
            {"inputs": X, "instances": X},
            400,
            "only one of 'inputs' or 'instances' keys to exist",
        ),
        (
            "POST",
            "/v1/models/clf:predict",
            {"signature_name": 3, "inputs": X},
            400,
            "'signature_name' key must be a string value.",
        ),
        (
            "POST",
            "/v1/models/clf:predict",
            {"signature_name": "nope", "inputs": X},
            400,  # TF Serving: INVALID_ARGUMENT (http_rest_api_handler.cc, GetInfoMap)
            'Serving signature name: "nope" not found in signature def',
        ),
        ("POST", "/v1/models/clf:predict", {"instances": []}, 400, "No values in 'instances' array"),
        (
            "POST",
            "/v1/models/clf:predict",
            {"instances": 1},
            400,
            "Expecting 'instances' to be an list/array",
        ),
        ("POST", "/v1/models/clf:predict", {"instances": [{"x": X[0]}, X[1]]}, 400, "mixes named"),
        ("POST", "/v1/models/clf:predict", {"instances": [{"x": X[0]}, {"y": X[1]}]}, 400, "same inputs"),
        (  # the shape is the model's to refuse
            "POST",
            "/v1/models/clf:predict",
            {"instances": [[1, 2, 3]]},
            400,
            "Matrix size-incompatible: In[0]: [1,3], In[1]: [4,3]",
        ),
        ("POST", "/v1/models/clf:predict", {"instances": [[1, 2, 3, 4], [1]]}, 400, "rectangular"),
        (
            "POST",
            "/v1/models/clf:predict",
            {"instances": [["a", "b", "c", "d"]]},
            400,
            "JSON Type: String is not of expected type: float",
        ),
        (
            "POST",
            "/v1/models/clf:predict",
            {"instances": [[1, True, 2, 3]]},
            400,
            "JSON Type: True is not of expected type: float",
        ),
        ("POST", "/v1/models/clf:predict", {"inputs": {"y": X}}, 400, "alias not found in signature: y"),
        (
            "POST",
            "/v1/models/clf:predict",
            {"signature_name": "strings", "inputs": X},
            400,
            "inputs is a plain value/list, but expecting an object as multiple input tensors",
        ),
        (
            "POST",
            "/v1/models/clf:predict",
            {"signature_name": "strings", "inputs": {"text": ["a"], "n": [1.5]}},
            400,
            "JSON Type: Number is not of expected type: int32",
        ),
        (
            "POST",
            "/v1/models/clf:predict",
            {"signature_name": "strings", "inputs": {"text": ["a"], "n": [1 << 40]}},
            400,
            "out of range for int32",
        ),
        (
            "POST",
            "/v1/models/clf:predict",
            {"signature_name": "strings", "inputs": {"text": [1], "n": [1]}},
            400,
            "JSON Type: Number is not of expected type: string",
        ),
        (
            "POST",
            "/v1/models/clf:predict",
            {"signature_name": "strings", "inputs": {"text": [{"b64": "!!"}], "n": [1]}},
            400,
            "Unable to base64 decode",
        ),
        (
            "POST",
            "/v1/models/clf:predict",
            {"signature_name": "strings", "inputs": {"text": [["a"], "b"], "n": [1, 1]}},
            400,
            "rectangular",
        ),
        (
            "POST",
            "/v1/models/clf:classify",
            {"signature_name": "classify"},
            400,
            "key 'examples' is expected and was not found",
        ),
        (
            "POST",
            "/v1/models/clf:classify",
            {"examples": {}},
            400,
            "Expecting 'examples' value to be an list/array",
        ),
        ("POST", "/v1/models/clf:classify", {"examples": []}, 400, "'examples' value is an empty array"),
        (
            "POST",
            "/v1/models/clf:classify",
            {"examples": [[]]},
            400,
            "Example must be JSON object but got JSON Array",
        ),
        (  # an unknown signature is INVALID_ARGUMENT for classify and regress (classifier.cc, regressor.cc)
            "POST",
            "/v1/models/clf:regress",
            {"signature_name": "nope", "examples": [{}]},
            400,
            "No signature was found with the name: nope",
        ),
        (
            "POST",
            "/v1/models/clf:classify",
            {"signature_name": "classify", "examples": [{"x": []}]},
            400,  # an empty feature is allowed by the JSON; the model's ParseExample refuses it
            "Feature: x (data type: float) is required but could not be found.",
        ),
        (
            "POST",
            "/v1/models/clf:classify",
            {"signature_name": "classify", "examples": [{"x": [1, "a"]}]},
            400,
            "Unexpected element type in feature: x expecting type: int64",
        ),
        (
            "POST",
            "/v1/models/clf:classify",
            {"signature_name": "classify", "examples": [{"x": (1 << 64) - 1}]},
            400,
            "Feature: x has uint64_t element. Only int64_t is supported.",
        ),
        ("POST", "/v1/models/clf:classify", {"context": 1, "examples": [{}]}, 400, "got JSON Number"),
        (
            "POST",
            "/v1/models/clf:classify",
            {"examples": [{"x": X[0]}]},
            400,
            "No classification inputs found",
        ),
    ],
)
def test_errors(api: RestApi, method: str, path: str, body: Any, status: int, fragment: str) -> None:
    got_status, got = call(api, method, path, body)
    assert (got_status, list(got)) == (status, ["error"]), got
    assert fragment in got["error"]
    for value in ("1.5", "0.5", "-1.0"):  # no values echoed
        assert value not in got["error"]


def test_unexpected_error_is_generic(api: RestApi, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any) -> Any:
        raise RuntimeError("value 3.25 leaked")

    monkeypatch.setattr(api, "_dispatch", explode)
    assert call(api, "GET", "/v1/models/clf") == (500, {"error": "internal error"})
