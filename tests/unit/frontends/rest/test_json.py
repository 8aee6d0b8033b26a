"""JSON <-> proto conversions of the REST front end, without a model."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from confserve.frontends.rest._json import (
    dumps,
    examples_input,
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
        ([1, 0], 10, "expected bool values"),
        ([256], 4, "out of range for uint8"),
        ([-1], 4, "out of range for uint8"),
        ([1.0], 8, "complex64 cannot be given as JSON"),
        ([1], 20, "cannot be given as JSON"),
        ([1], 999, "unsupported dtype"),
        ([[1, 2], [3]], 1, "rectangular"),
        ([{"b64": 1}], 7, "expected string"),
        (["x"], 1, "expected float values"),
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
    with pytest.raises(InvalidInputError, match=r"invalid JSON at char 0"):
        loads(b"nope")
    with pytest.raises(InvalidInputError, match="invalid JSON"):
        loads(b"[" * 100000)
    assert loads(b'{"a": NaN}')["a"] != loads(b'{"a": NaN}')["a"]


def test_response_encodings() -> None:
    outputs = predict_response_json(
        response(
            f=np.array([0.1, math.nan, math.inf], np.float32),
            b=np.array([True, False]),
            s=np.array([b"ok", b"\xff"], dtype=object),
        ),
        row_format=False,
    )["outputs"]
    assert outputs["f"][0] == 0.1  # shortest float32 text, not 0.10000000149011612
    assert math.isnan(outputs["f"][1])
    assert outputs["f"][2] == math.inf
    assert outputs["b"] == [True, False]
    assert outputs["s"] == ["ok", {"b64": "/w=="}]  # not UTF-8: falls back to b64
    assert dumps({"v": math.nan}) == b'{"v":NaN}'
    scalar = predict_response_json(response(y=np.float32(2.5)), row_format=False)
    assert scalar == {"outputs": 2.5}
    matrix = predict_response_json(response(y=np.arange(6, dtype=np.int32).reshape(2, 3)), row_format=True)
    assert matrix == {"predictions": [[0, 1, 2], [3, 4, 5]]}


def test_row_format_response_errors() -> None:
    with pytest.raises(InvalidInputError, match="no batch dimension"):
        predict_response_json(response(y=np.float32(1.0)), row_format=True)
    with pytest.raises(InvalidInputError, match="Tensor name: b has inconsistent batch size: 3 expecting: 2"):
        predict_response_json(response(a=np.zeros(2), b=np.zeros(3)), row_format=True)
    with pytest.raises(InvalidInputError, match="complex values"):
        predict_response_json(response(c=np.zeros(2, np.complex64)), row_format=False)


def test_examples_features() -> None:
    model_input = examples_input(
        {"examples": [{"s": "text", "b": {"b64": "AA=="}, "i": [1, 2], "f": [1, 2.5]}]}
    )
    feature = model_input.example_list.examples[0].features.feature
    assert feature["s"].bytes_list.value == [b"text"]
    assert feature["b"].bytes_list.value == [b"\x00"]
    assert feature["i"].int64_list.value == [1, 2]
    assert feature["f"].float_list.value == [1.0, 2.5]
    with pytest.raises(InvalidInputError, match="feature 'x'"):
        examples_input({"examples": [{"x": [True]}]})
