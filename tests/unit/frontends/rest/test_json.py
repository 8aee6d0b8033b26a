"""JSON <-> proto conversions of the REST front end, without a model."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from confserve.frontends.rest import _json as rest_json
from confserve.frontends.rest._json import (
    dumps,
    examples_input,
    format_decimal,
    loads,
    predict_request_from_json,
    predict_response_json,
)
from confserve.serving import InvalidInputError


def signature(**inputs: int) -> Any:
    sig = meta_graph_pb2.SignatureDef()
    for key, dtype in inputs.items():
        sig.inputs[key].dtype = dtype
    return sig


def convert(value: Any, dtype: int) -> Any:
    request, _ = predict_request_from_json({"inputs": value}, signature(x=dtype))
    return tf.make_ndarray(request.inputs["x"])


def response(**arrays: Any) -> Any:
    message = predict_pb2.PredictResponse()
    for key, value in arrays.items():
        message.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    return message


def test_typed_inputs() -> None:
    assert convert([[True, False]], 10).tolist() == [[True, False]]
    assert convert([1, 2], 9).dtype == np.int64
    assert convert([255], 4).tolist() == [255]
    assert convert([], 1).shape == (0,)
    assert convert(3, 2).tolist() == 3.0
    assert convert([[]], 7).shape == (1, 0)
    assert convert({"b64": "AAE="}, 7).tolist() == b"\x00\x01"


@pytest.mark.parametrize(
    ("value", "dtype", "match"),
    [
        ([1, 0], 10, "JSON Type: Number is not of expected type: bool"),
        ([256], 4, "out of range for uint8"),
        ([-1], 4, "out of range for uint8"),
        ([1.0], 8, "complex64 cannot be given as JSON"),
        ([1], 20, "cannot be given as JSON"),
        ([1], 999, "unsupported dtype"),
        ([[1, 2], [3]], 1, "rectangular"),
        ([{"b64": 1}], 7, "JSON Type: Object is not of expected type: string"),
        (["x"], 1, "JSON Type: String is not of expected type: float"),
        ([None], 1, "JSON Type: Null is not of expected type: float"),
        ([1.5], 3, "JSON Type: Number is not of expected type: int32"),
    ],
)
def test_rejected_inputs(value: Any, dtype: int, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        convert(value, dtype)


@pytest.mark.parametrize(("leaf", "dtype", "match"), [("a", 7, "rank above 64"), (1.0, 1, "rank at most 64")])
def test_deep_nesting_is_refused(leaf: Any, dtype: int, match: str) -> None:
    value: Any = leaf
    for _ in range(70):
        value = [value]
    with pytest.raises(InvalidInputError, match=match):
        convert(value, dtype)


def test_loads_errors() -> None:
    """rapidjson's texts where TF Serving's tests check them (http_rest_api_handler_test.cc)."""
    with pytest.raises(InvalidInputError, match=r"JSON Parse error: Invalid value at offset: 0"):
        loads(b"nope")
    with pytest.raises(InvalidInputError, match="JSON Parse error: The document is empty"):
        loads(b" \n")
    with pytest.raises(InvalidInputError, match="JSON Parse error"):
        loads(b"[" * 100000)
    with pytest.raises(InvalidInputError, match="Is not object"):
        loads(b"[1]")
    assert loads(b'{"a": NaN}')["a"] != loads(b'{"a": NaN}')["a"]


def rendered(value: Any) -> Any:
    return json.loads(dumps(value))


def test_response_encodings() -> None:
    outputs = rendered(
        predict_response_json(
            response(
                f=np.array([0.1, math.nan, math.inf], np.float32),
                b=np.array([True, False]),
                s=np.array([b"ok", b"\xff"], dtype=object),
            ),
            row_format=False,
        )
    )["outputs"]
    assert outputs["f"][0] == 0.1  # shortest float32 text, not 0.10000000149011612
    assert math.isnan(outputs["f"][1])
    assert outputs["f"][2] == math.inf
    assert outputs["b"] == [True, False]
    assert outputs["s"] == ["ok", {"b64": "/w=="}]  # not UTF-8: falls back to b64
    assert dumps({"v": math.nan}) == b'{"v":NaN}'
    scalar = dumps(predict_response_json(response(y=np.float32(2.5)), row_format=False))
    assert scalar == b'{"outputs":2.5}'
    matrix = predict_response_json(response(y=np.arange(6, dtype=np.int32).reshape(2, 3)), row_format=True)
    assert dumps(matrix) == b'{"predictions":[[0,1,2],[3,4,5]]}'
    empty = predict_response_json(response(y=np.zeros((2, 0), np.float32)), row_format=True)
    assert dumps(empty) == b'{"predictions":[[],[]]}'
    rows = predict_response_json(
        response(a=np.array([b"x", b"y"], dtype=object), b=np.array([[1.0], [2.0]], np.float32)),
        row_format=True,
    )
    assert dumps(rows) == b'{"predictions":[{"a":"x","b":[1.0]},{"a":"y","b":[2.0]}]}'


@pytest.mark.parametrize(
    ("value", "dtype", "text"),
    [
        # json_tensor.cc WriteDecimal and its comment: six significant digits (%g), full precision when that
        # does not read back, and ".0" for whole numbers without an exponent.
        (9000000.0, np.float32, "9e+06"),
        (0.00003, np.float32, "3e-05"),
        (3.0, np.float32, "3.0"),
        (0.2, np.float32, "0.2"),
        (1234567.0, np.float32, "1234567.0"),
        (0.1, np.float64, "0.1"),
        (1 / 3, np.float64, "0.33333333333333331"),
        (1 / 3, np.float32, "0.333333343"),
        (-0.0, np.float32, "-0.0"),
        (math.nan, np.float32, "NaN"),
        (-math.inf, np.float64, "-Infinity"),
    ],
)
def test_float_formatting_follows_tf_serving(value: float, dtype: Any, text: str) -> None:
    assert format_decimal(value, np.dtype(dtype)) == text
    tensor = dumps(predict_response_json(response(y=np.array([value], dtype)), row_format=False))
    assert tensor == b'{"outputs":[' + text.encode() + b"]}"


def test_row_format_response_errors() -> None:
    with pytest.raises(InvalidInputError, match="Tensor name: y has no shape information"):
        predict_response_json(response(y=np.float32(1.0)), row_format=True)
    with pytest.raises(InvalidInputError, match="Tensor name: b has inconsistent batch size: 3 expecting: 2"):
        predict_response_json(response(a=np.zeros(2), b=np.zeros(3)), row_format=True)
    with pytest.raises(InvalidInputError, match="complex values"):
        predict_response_json(response(c=np.zeros(2, np.complex64)), row_format=False)


def test_examples_features() -> None:
    """json_tensor_test.cc RequestNoContext / RequestWithContextAndSignature: the first value fixes the
    kind; booleans are int64 1/0; an empty list is an empty feature."""
    model_input = examples_input(
        {
            "examples": [
                {
                    "s": "text",
                    "b": {"b64": "AA=="},
                    "i": [1, 2],
                    "f": [1.0, 2.5],
                    "intboolmix": [1, True, False],
                    "bools": [True],
                    "e": [],
                    "big": 1 << 70,
                }
            ]
        }
    )
    feature = model_input.example_list.examples[0].features.feature
    assert feature["s"].bytes_list.value == [b"text"]
    assert feature["b"].bytes_list.value == [b"\x00"]
    assert feature["i"].int64_list.value == [1, 2]
    assert feature["f"].float_list.value == [1.0, 2.5]
    assert feature["intboolmix"].int64_list.value == [1, 1, 0]
    assert feature["bools"].int64_list.value == [1]
    assert feature["e"].WhichOneof("kind") is None
    assert feature["big"].float_list.value == [float(np.float32(1 << 70))]


@pytest.mark.parametrize(
    ("features", "match"),
    [
        # json_tensor_test.cc ClassifyRegressRequestTest.JsonErrors
        ({"names": [10, None]}, "Feature: names has element with unexpected JSON type: Null"),
        ({"names": [10, 10.0]}, "Unexpected element type in feature: names expecting type: int64"),
        ({"names": [10.0, 10]}, "Unexpected element type in feature: names expecting type: float"),
        ({"names": [10, {"test": 10}]}, "names has element with unexpected JSON type: Object"),
        ({"names": [[10], 20]}, "names has element with unexpected JSON type: Array"),
        ({"names": [20, 18446744073709551603]}, "Only int64_t is supported"),
        ({"names": ["a", 1]}, "expecting type: bytes"),
        ({"names": [True, "a"]}, "expecting type: int64"),
        ({"names": [{"b64": "!!"}]}, "Feature: names: Unable to base64 decode"),
    ],
)
def test_examples_feature_errors(features: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(match)):
        examples_input({"examples": [features]})


def _edge_floats(dtype: Any) -> Any:
    info = np.finfo(dtype)
    specials = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        3.0,
        0.1,
        0.2,
        1 / 3,
        9e6,
        1e16,
        123456.5,
        1234567.0,
        math.nan,
        math.inf,
    ]
    specials += [
        -math.inf,
        float(info.max),
        float(-info.max),
        float(info.tiny),
        float(info.smallest_subnormal),
    ]
    specials += [
        float(np.nextafter(info.max, 0, dtype=dtype)),
        3.402825e38,
        1e-45,
        5e-324,
        1.7976931348623157e308,
    ]
    with np.errstate(over="ignore"):
        edge = np.array(specials, dtype=np.float64).astype(dtype)
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 1 << (8 * np.dtype(dtype).itemsize), 4000, dtype=np.uint64)
    raw = bits.astype(np.uint32 if dtype == np.float32 else np.uint64).view(dtype)  # any bit pattern
    scaled = (rng.random(4000) * 10.0 ** rng.integers(-12, 12, 4000)).astype(dtype)
    return np.concatenate([edge, raw, scaled, np.round(scaled, 3)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_outputs_are_written_exactly_as_the_array_path_writes_them(
    dtype: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_decimal` (one value at a time, for outputs of a few values) and the numpy path for large
    outputs agree on every value: specials, range limits, subnormals, random bit patterns."""
    values = _edge_floats(dtype)
    few = [t for start in range(0, values.size, 8) for t in rest_json._decimals(values[start : start + 8])]
    monkeypatch.setattr(rest_json, "_FEW_VALUES", 0)
    assert few == rest_json._decimals(values)
    for text, value in zip(few, values.tolist(), strict=True):  # and each text reads back as its value
        if math.isfinite(value):
            assert np.array(float(text), dtype=np.float64).astype(dtype) == value
