"""TF Serving's REST JSON formats <-> TF Serving protos (g3doc/api_rest.md). No I/O.

Input values are converted with the dtype the signature declares, strictly: a JSON string is never taken
as a number, a float never as an integer, and integers must fit their dtype. `{"b64": "..."}` carries bytes.
Output tensors whose name ends in `_bytes` are returned as `{"b64": ...}`. NaN and Infinity are accepted
and produced, as TF Serving does. Error messages name inputs and features, never their values.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import json_format

from confserve.serving import InvalidInputError, ServingError
from confserve.tensor_proto import DTYPES, TensorProtoError, dtype_name, to_array, to_proto
from confserve.tfs_protos import example_pb2, input_pb2, predict_pb2

__all__ = [
    "classify_response_json",
    "dumps",
    "examples_input",
    "loads",
    "predict_request_from_json",
    "predict_response_json",
    "proto_json",
    "regress_response_json",
]

_DT_STRING = 7
_B64 = "b64"
# Deeper nesting than this is not a tensor anyone sends; the bound keeps the recursion small.
_MAX_RANK = 64


def loads(body: bytes) -> dict[str, Any]:
    """Parse a request body: a JSON object (NaN and Infinity allowed, as in TF Serving)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        position = f" at char {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidInputError(f"JSON Parse error: invalid JSON{position}") from None
    if not isinstance(value, dict):
        raise InvalidInputError("JSON Parse error: the request body must be a JSON object")
    return value


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=True).encode()


def proto_json(message: Any) -> dict[str, Any]:
    """A proto as TF Serving prints it: proto field names, default values included."""
    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


# -- Predict ------------------------------------------------------------------------------------------------


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {_B64}


def predict_request_from_json(
    body: Mapping[str, Any], signature: Any
) -> tuple[predict_pb2.PredictRequest, bool]:
    """A PredictRequest (inputs only; the caller sets model_spec) and whether the row format was used."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        if has_inputs:
            raise InvalidInputError(
                "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists"
            )
        raise InvalidInputError("Missing 'inputs' or 'instances' key")
    columns = (
        _instances(body["instances"], signature) if has_instances else _columns(body["inputs"], signature)
    )
    request = predict_pb2.PredictRequest()
    for alias, value in columns.items():
        info = signature.inputs.get(alias)
        if info is None:
            names = ",".join(sorted(signature.inputs))
            raise InvalidInputError(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{names}}}."
            )
        request.inputs[alias].CopyFrom(to_proto(_to_array(alias, value, info.dtype)))
    return request, has_instances


def _single_input(signature: Any) -> str:
    if len(signature.inputs) != 1:
        raise InvalidInputError("the signature has several inputs: name each input in a JSON object")
    (alias,) = signature.inputs
    return str(alias)


def _instances(instances: Any, signature: Any) -> dict[str, Any]:
    if not isinstance(instances, list) or not instances:
        raise InvalidInputError("'instances' must be a non-empty list")
    named = [isinstance(i, dict) and not _is_b64(i) for i in instances]
    if not any(named):
        return {_single_input(signature): instances}
    if not all(named):
        raise InvalidInputError("'instances' mixes named objects and plain values")
    keys = set(instances[0])
    if any(set(i) != keys for i in instances):
        raise InvalidInputError("every element of 'instances' must name the same inputs")
    return {key: [i[key] for i in instances] for key in sorted(keys)}


def _columns(inputs: Any, signature: Any) -> dict[str, Any]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return dict(inputs)
    return {_single_input(signature): inputs}


def _to_array(alias: str, value: Any, dtype_enum: int) -> npt.NDArray[Any]:
    row = DTYPES.get(dtype_enum)
    if row is None or row.kind == "complex":
        name = dtype_name(dtype_enum)
        if name.startswith("DataType("):
            raise InvalidInputError(f"input '{alias}': unsupported dtype")
        raise InvalidInputError(f"input '{alias}': dtype {name} cannot be given as JSON")
    if row.kind == "string":
        leaves: list[bytes] = []
        shape = _string_leaves(alias, value, leaves, 0)
        return np.array(leaves, dtype=object).reshape(shape)
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError):
        # numpy also refuses more than 64 dimensions here
        raise InvalidInputError(
            f"input '{alias}': nested lists must be rectangular, of rank at most {_MAX_RANK}"
        ) from None
    dtype = row.numpy_dtype()
    kind: str = array.dtype.kind
    if array.size == 0:
        kind = "empty"
    if row.kind == "bool":
        ok = kind in ("b", "empty")
    elif row.kind in ("int", "uint"):
        ok = kind in ("i", "u", "empty")
        info = np.iinfo(dtype)
        if ok and array.size and (array.min() < info.min or array.max() > info.max):
            raise InvalidInputError(f"input '{alias}': value out of range for {row.name}")
    else:
        ok = kind in ("f", "i", "u", "empty")
    if not ok or (kind in ("f", "i", "u") and _has_bool(value)):
        raise InvalidInputError(f"input '{alias}': expected {row.name} values")
    return array.astype(dtype)


def _has_bool(value: Any) -> bool:
    """numpy turns true/false into 1/0 next to numbers; JSON booleans are not numbers for TF Serving."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool):
            return True
    return False


def _string_leaves(alias: str, value: Any, out: list[bytes], depth: int) -> list[int]:
    if depth > _MAX_RANK:
        raise InvalidInputError(f"input '{alias}': rank above {_MAX_RANK}")
    if isinstance(value, list):
        shapes = [_string_leaves(alias, item, out, depth + 1) for item in value]
        if any(s != shapes[0] for s in shapes[1:]):
            raise InvalidInputError(f"input '{alias}': nested lists must be rectangular")
        return [len(value), *(shapes[0] if shapes else [])]
    out.append(_bytes_value(f"input '{alias}'", value))
    return []


def _bytes_value(what: str, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if _is_b64(value) and isinstance(value[_B64], str):
        try:
            return base64.b64decode(value[_B64], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInputError(f"{what}: invalid base64 in 'b64' value") from None
    raise InvalidInputError(f'{what}: expected string or {{"b64": ...}} values')


def predict_response_json(response: predict_pb2.PredictResponse, row_format: bool) -> dict[str, Any]:
    try:
        arrays = {key: to_array(response.outputs[key]) for key in sorted(response.outputs)}
    except TensorProtoError as e:  # the model's own outputs: not the caller's fault
        raise ServingError(f"an output tensor cannot be read: {e}") from None
    if not row_format:
        values = {key: _json_value(key, array) for key, array in arrays.items()}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    batch: int | None = None
    for key, array in arrays.items():
        if array.ndim == 0:
            raise InvalidInputError(f"Tensor name: {key} has no batch dimension; use the 'inputs' format")
        if batch is not None and array.shape[0] != batch:
            # TF Serving's text (json_tensor.cc).
            raise InvalidInputError(
                f"Tensor name: {key} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
            )
        batch = array.shape[0]
    values = {key: _json_value(key, array) for key, array in arrays.items()}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{key: values[key][row] for key in values} for row in range(batch or 0)]}


def _json_value(name: str, array: npt.NDArray[Any]) -> Any:
    if array.dtype == np.object_:
        as_b64 = name.endswith("_bytes")
        flat = [_json_bytes(v, as_b64) for v in array.ravel()]
        return _nest(flat, list(array.shape))
    kind = array.dtype.kind
    if kind in ("i", "u", "b"):
        return array.tolist()
    if kind == "c":
        raise InvalidInputError(f"output '{name}': complex values cannot be returned as JSON")
    # Floats: print each as its shortest decimal in the tensor's own precision (float32 0.1 -> 0.1, not
    # 0.10000000149011612); the value parses back to the identical float32.
    flat_floats = [_short_float(v) for v in array.ravel()]
    return _nest(flat_floats, list(array.shape))


def _short_float(value: Any) -> float:
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        return number
    return float(str(value))


def _json_bytes(value: Any, as_b64: bool) -> Any:
    raw = value if isinstance(value, bytes) else str(value).encode()
    if not as_b64:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass  # not text: fall back to b64 rather than emit invalid JSON
    return {_B64: base64.b64encode(raw).decode("ascii")}


def _nest(flat: list[Any], shape: list[int]) -> Any:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


# -- Classify / Regress -------------------------------------------------------------------------------------


def examples_input(body: Mapping[str, Any]) -> input_pb2.Input:
    """The Input proto for a classify/regress body: {"context": {...}?, "examples": [{...}, ...]}."""
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples or not all(isinstance(e, dict) for e in examples):
        raise InvalidInputError("'examples' must be a non-empty list of JSON objects")
    model_input = input_pb2.Input()
    context = body.get("context")
    if context is not None:
        if not isinstance(context, dict):
            raise InvalidInputError("'context' must be a JSON object")
        target = model_input.example_list_with_context
        _fill_example(target.context, context)
    else:
        target = model_input.example_list
    for example in examples:
        _fill_example(target.examples.add(), example)
    return model_input


def _fill_example(example: example_pb2.Example, features: Mapping[str, Any]) -> None:
    for name, value in features.items():
        values = value if isinstance(value, list) else [value]
        feature = example.features.feature[name]
        what = f"feature '{name}'"
        if not values:
            raise InvalidInputError(f"{what}: an empty list has no type")
        if all(isinstance(v, str) or _is_b64(v) for v in values):
            feature.bytes_list.value.extend(_bytes_value(what, v) for v in values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            if any(not -(1 << 63) <= v < (1 << 63) for v in values):
                raise InvalidInputError(f"{what}: value out of range for int64")
            feature.int64_list.value.extend(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            feature.float_list.value.extend(float(v) for v in values)
        else:
            raise InvalidInputError(f"{what}: values must all be numbers or all strings")


def classify_response_json(response: Any) -> dict[str, Any]:
    return {
        "result": [
            [[c.label, _short_float(np.float32(c.score))] for c in classification.classes]
            for classification in response.result.classifications
        ]
    }


def regress_response_json(response: Any) -> dict[str, Any]:
    return {"result": [_short_float(np.float32(r.value)) for r in response.result.regressions]}
