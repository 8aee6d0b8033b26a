"""TF Serving's REST JSON formats <-> TF Serving protos (g3doc/api_rest.md). No I/O.

Input values are converted with the dtype the signature declares, strictly: a JSON string is never taken
as a number, a float never as an integer, and integers must fit their dtype. `{"b64": "..."}` carries bytes.
Output tensors whose name ends in `_bytes` are returned as `{"b64": ...}`. NaN and Infinity are accepted
and produced, as TF Serving does. Error messages name inputs and features, never their values (TF Serving
quotes the offending JSON value; we do not, as it may be confidential data).

tf.Example features in classify/regress bodies are typed as TF Serving's json_tensor.cc types them: the
first element fixes the feature's kind and every later one must match it; a JSON string or b64 object is
bytes, a JSON number with a fraction or exponent is float, one without is int64, and true/false are int64
1/0. An empty list is an empty feature.

Numbers are written as TF Serving writes them (json_tensor.cc, WriteDecimal): a float is printed with six
significant digits in printf's %g form (so 9000000 becomes 9e+06); when that does not read back as the
same value, with the type's full round-trip precision (9 digits for float32, 17 for float64); and a
result with neither '.' nor an exponent gets '.0' appended (3 -> 3.0). NaN and Infinity are written as
such. `dumps` writes these pre-rendered numbers (`RawJson`) verbatim.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from google.protobuf import json_format

from confserve.frontends.rest._body import parse_json_body
from confserve.serving import InvalidInputError, RequestMemory, ServingError
from confserve.tensor_proto import DTYPES, TensorProtoError, dtype_name, to_array, to_proto
from confserve.tfs_protos import example_pb2, input_pb2, predict_pb2

__all__ = [
    "RawJson",
    "classify_response_json",
    "dumps",
    "examples_input",
    "format_decimal",
    "loads",
    "predict_inputs_from_json",
    "predict_outputs_json",
    "predict_request_from_json",
    "predict_response_json",
    "proto_json",
    "regress_response_json",
]

_B64 = "b64"
# Deeper nesting than this is not a tensor anyone sends; the bound keeps the recursion small.
_MAX_RANK = 64
# json.loads lets a lone UTF-16 surrogate through (a "\ud800" escape, or its UTF-8-like bytes ED A0..BF
# xx): no protobuf string or UTF-8 encoder takes one, so a body that may hold one is checked after parsing.
_MAYBE_SURROGATE: Final = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_UINT64_MAX: Final = (1 << 64) - 1
# printf precision that round-trips every value (std::numeric_limits<T>::max_digits10).
_MAX_DIGITS10: Final = {np.dtype(np.float32): 9, np.dtype(np.float64): 17}
# Up to this many values numpy's per-call overhead outweighs its per-value speed (`_decimal`).
_FEW_VALUES: Final = 32
_FLOAT32: Final = struct.Struct("=f")


class RawJson(str):
    """A fragment of JSON text that `dumps` writes as it is (pre-rendered numbers and tensors)."""

    __slots__ = ()


def loads(body: bytes, memory: RequestMemory | None = None, *, arrays: bool = False) -> dict[str, Any]:
    """Parse a request body: a JSON object (NaN and Infinity allowed, as in TF Serving). What the parse
    builds is charged to `memory` first; with `arrays` (a predict body) large numeric arrays come back as
    numpy arrays (`_body`)."""
    if not body.strip():
        raise InvalidInputError("JSON Parse error: The document is empty")  # TF Serving's text
    charge = _no_charge if memory is None else memory.charge
    try:
        value = parse_json_body(body, charge, arrays=arrays)
    except json.JSONDecodeError as exc:
        reason = "Invalid value" if exc.msg == "Expecting value" else exc.msg
        raise InvalidInputError(f"JSON Parse error: {reason} at offset: {exc.pos}") from None
    except (ValueError, RecursionError):
        raise InvalidInputError("JSON Parse error: invalid JSON") from None
    # Rare: only a body with a \u escape or the byte ED can spell a surrogate; then every string is checked.
    if (b"\\u" in body or b"\xed" in body) and _MAYBE_SURROGATE.search(body):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError("JSON Parse error: Invalid encoding in string.") from None
    if not isinstance(value, dict):
        raise InvalidInputError("JSON Value: the request body Is not object")  # TF Serving: "Is not object"
    return value


def _no_charge(nbytes: int, what: str) -> None:
    pass


def dumps(value: Any) -> bytes:
    """JSON text of `value` (dicts, lists, strings, numbers, booleans, None and `RawJson` fragments)."""
    out: list[str] = []
    _write(value, out)
    return "".join(out).encode()


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, RawJson):
        out.append(value)
    elif isinstance(value, str):
        out.append(json.dumps(value))
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(json.dumps(str(key)))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif isinstance(value, float):
        out.append(format_decimal(value, np.dtype(np.float64)))
    else:  # int, bool, None
        out.append(json.dumps(value))


def format_decimal(value: float, dtype: np.dtype[Any]) -> str:
    """One float as TF Serving writes it (see the module docstring); `dtype` is float32 or float64."""
    return _decimals(np.asarray([value], dtype=dtype))[0]


def _decimals(flat: npt.NDArray[Any]) -> list[str]:
    """TF Serving's text of each value of a 1-D float32 or float64 array."""
    precise = _MAX_DIGITS10[flat.dtype]
    if flat.size <= _FEW_VALUES:
        single = flat.dtype == np.float32
        return [_decimal(value, single, precise) for value in flat.tolist()]
    values = flat.tolist()  # Python floats: exact for both widths
    texts = [f"{v:g}" for v in values]
    readback = np.array([float(t) for t in texts], dtype=np.float64).astype(flat.dtype)
    finite = np.isfinite(flat)
    for index in np.flatnonzero(finite & (readback != flat)).tolist():
        texts[index] = f"{values[index]:.{precise}g}"
    for index, text in enumerate(texts):
        if not finite[index]:
            value = values[index]
            texts[index] = "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
        elif "." not in text and "e" not in text:
            texts[index] = text + ".0"
    return texts


def _decimal(value: float, single: bool, precise: int) -> str:
    """`_decimals` for one value, without numpy (a small output, such as a model's scores, is written
    several times faster this way); `single`: the value is a float32; `precise`: its `_MAX_DIGITS10`."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    text = f"{value:g}"
    readback = float(text)
    if single:  # rounded to float32 as numpy rounds; never out of its range: the largest float32,
        # 3.40282347e+38, reads 3.40282e+38 in six digits, so no text rounds up past it
        (readback,) = _FLOAT32.unpack(_FLOAT32.pack(readback))
    if readback != value:
        text = f"{value:.{precise}g}"
    return text if "." in text or "e" in text else text + ".0"


def proto_json(message: Any) -> dict[str, Any]:
    """A proto as TF Serving prints it: proto field names, default values included."""
    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


# -- Predict ------------------------------------------------------------------------------------------------


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {_B64}


def _json_type(value: Any) -> str:
    """rapidjson's name of a JSON value's type, as TF Serving's messages use it."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def predict_request_from_json(
    body: Mapping[str, Any], signature: Any
) -> tuple[predict_pb2.PredictRequest, bool]:
    """A PredictRequest (inputs only; the caller sets model_spec) and whether the row format was used."""
    arrays, row_format = predict_inputs_from_json(body, signature)
    request = predict_pb2.PredictRequest()
    for alias, array in arrays.items():
        request.inputs[alias].CopyFrom(to_proto(array))
    return request, row_format


def predict_inputs_from_json(
    body: Mapping[str, Any], signature: Any, *, may_hold_booleans: bool = True
) -> tuple[dict[str, npt.NDArray[Any]], bool]:
    """The input arrays of a predict body, each of its SignatureDef dtype, and whether the row format was
    used. `may_hold_booleans=False` (the body has no `true`/`false` token) skips looking for JSON booleans
    among numbers."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        if has_inputs:
            raise InvalidInputError(
                "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"
            )
        raise InvalidInputError("Missing 'inputs' or 'instances' key")
    columns = (
        _instances(body["instances"], signature) if has_instances else _columns(body["inputs"], signature)
    )
    arrays: dict[str, npt.NDArray[Any]] = {}
    for alias, value in columns.items():
        info = signature.inputs.get(alias)
        if info is None:
            names = ",".join(sorted(signature.inputs))
            raise InvalidInputError(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{names}}}."
            )
        arrays[alias] = _to_array(alias, value, info.dtype, may_hold_booleans)
    return arrays, has_instances


def _single_input(signature: Any, key: str) -> str:
    if len(signature.inputs) != 1:
        # TF Serving's text (json_tensor.cc).
        raise InvalidInputError(
            f"{key} is a plain value/list, but expecting an object as multiple input tensors required "
            "as per tensorinfo_map"
        )
    (alias,) = signature.inputs
    return str(alias)


def _instances(instances: Any, signature: Any) -> dict[str, Any]:
    if isinstance(instances, np.ndarray):  # a numeric array parsed whole (`_body`): never empty
        return {_single_input(signature, "instances"): instances}
    if not isinstance(instances, list):
        raise InvalidInputError("Expecting 'instances' to be an list/array")
    if not instances:
        raise InvalidInputError("No values in 'instances' array")
    named = [isinstance(i, dict) and not _is_b64(i) for i in instances]
    if not any(named):
        return {_single_input(signature, "instances"): instances}
    if not all(named):
        raise InvalidInputError("'instances' mixes named objects and plain values")
    keys = set(instances[0])
    if any(set(i) != keys for i in instances):
        raise InvalidInputError("every element of 'instances' must name the same inputs")
    return {key: [i[key] for i in instances] for key in sorted(keys)}


def _columns(inputs: Any, signature: Any) -> dict[str, Any]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return dict(inputs)
    return {_single_input(signature, "inputs"): inputs}


def _to_array(alias: str, value: Any, dtype_enum: int, may_hold_booleans: bool = True) -> npt.NDArray[Any]:
    row = DTYPES.get(dtype_enum)
    if row is None or row.kind == "complex":
        name = dtype_name(dtype_enum)
        if name.startswith("DataType("):
            raise InvalidInputError(f"input '{alias}': unsupported dtype")
        raise InvalidInputError(f"input '{alias}': dtype {name} cannot be given as JSON")
    if row.kind == "string":
        leaves: list[bytes] = []
        shape = _string_leaves(alias, value, leaves, 0)
        array = np.empty(len(leaves), dtype=object)
        array[:] = leaves
        return array.reshape(shape)
    try:
        array = value if isinstance(value, np.ndarray) else np.array(value)
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
    if not ok or (kind in ("f", "i", "u") and may_hold_booleans and _has_bool(value)):
        found = _first_mismatch(value, row.kind)
        # TF Serving's wording (json_tensor.cc, TypeError), without the value itself.
        raise InvalidInputError(f"input '{alias}': JSON Type: {found} is not of expected type: {row.name}")
    return array.astype(dtype, copy=False)


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


def _first_mismatch(value: Any, kind: str) -> str:
    """The JSON type of the first leaf a tensor of this kind cannot hold."""
    stack = [value]
    while stack:
        item = stack.pop(0)
        if isinstance(item, list):
            stack[:0] = item
            continue
        if kind == "bool":
            fits = isinstance(item, bool)
        elif kind in ("int", "uint"):
            fits = isinstance(item, int) and not isinstance(item, bool)
        else:
            fits = isinstance(item, (int, float)) and not isinstance(item, bool)
        if not fits:
            return _json_type(item)
    return "Array"


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
            raise InvalidInputError(f"{what}: Unable to base64 decode") from None
    raise InvalidInputError(f"{what}: JSON Type: {_json_type(value)} is not of expected type: string")


def predict_response_json(response: predict_pb2.PredictResponse, row_format: bool) -> dict[str, Any]:
    """The body of a predict answer: {"predictions": ...} for row requests, {"outputs": ...} for columnar
    ones; tensors are rendered to JSON text (`RawJson`) as TF Serving writes them."""
    try:
        arrays = {key: to_array(response.outputs[key]) for key in sorted(response.outputs)}
    except TensorProtoError as e:  # the model's own outputs: not the caller's fault
        raise ServingError(f"an output tensor cannot be read: {e}") from None
    return predict_outputs_json(arrays, row_format)


def predict_outputs_json(arrays: Mapping[str, npt.NDArray[Any]], row_format: bool) -> dict[str, Any]:
    """`predict_response_json` for outputs already in numpy (`arrays` in the order to write them)."""
    arrays = {key: np.asarray(array) for key, array in arrays.items()}
    if not row_format:
        values = {key: _json_value(key, array) for key, array in arrays.items()}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    batch: int | None = None
    for key, array in arrays.items():
        if array.ndim == 0:
            # TF Serving's text (json_tensor.cc), with a hint.
            raise InvalidInputError(
                f"Tensor name: {key} has no shape information (a scalar output needs the 'inputs' format)"
            )
        if batch is not None and array.shape[0] != batch:
            # TF Serving's text (json_tensor.cc).
            raise InvalidInputError(
                f"Tensor name: {key} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
            )
        batch = array.shape[0]
    if len(arrays) == 1:
        ((key, array),) = arrays.items()
        return {"predictions": _json_value(key, array)}
    rows = {key: _row_values(key, array) for key, array in arrays.items()}
    return {"predictions": [{key: rows[key][row] for key in rows} for row in range(batch or 0)]}


def _row_values(name: str, array: npt.NDArray[Any]) -> list[RawJson]:
    """The JSON text of each row (dimension 0) of an array."""
    return [_json_value(name, array[row, ...]) for row in range(array.shape[0])]


def _json_value(name: str, array: npt.NDArray[Any]) -> RawJson:
    """The JSON text of a whole tensor, nested by its shape."""
    kind = array.dtype.kind
    flat = array.ravel()
    if array.dtype == np.object_:
        as_b64 = name.endswith("_bytes")
        tokens = [json.dumps(_json_bytes(v, as_b64)) for v in flat.tolist()]
    elif kind == "b":
        tokens = ["true" if v else "false" for v in flat.tolist()]
    elif kind in ("i", "u"):
        tokens = [str(v) for v in flat.tolist()]
    elif kind == "c":
        raise InvalidInputError(f"output '{name}': complex values cannot be returned as JSON")
    else:
        # float32 and float64 as TF Serving writes them; half and bfloat16 through float32 (exact).
        width = flat.dtype if flat.dtype in _MAX_DIGITS10 else np.dtype(np.float32)
        tokens = _decimals(flat.astype(width, copy=False))
    return RawJson(_nest(tokens, list(array.shape)))


def _json_bytes(value: Any, as_b64: bool) -> Any:
    raw = value if isinstance(value, bytes) else str(value).encode()
    if not as_b64:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass  # not text: fall back to b64 rather than emit invalid JSON
    return {_B64: base64.b64encode(raw).decode("ascii")}


def _nest(tokens: list[str], shape: list[int]) -> str:
    if not shape:
        return tokens[0]
    if len(shape) == 1:
        return "[" + ",".join(tokens) + "]"
    step = len(tokens) // shape[0] if shape[0] else 0
    return "[" + ",".join(_nest(tokens[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])) + "]"


# -- Classify / Regress -------------------------------------------------------------------------------------


def examples_input(body: Mapping[str, Any]) -> input_pb2.Input:
    """The Input proto for a classify/regress body: {"context": {...}?, "examples": [{...}, ...]}.
    Texts follow TF Serving's (json_tensor.cc, FillClassifyRegressRequestFromJson)."""
    model_input = input_pb2.Input()
    context = body.get("context")
    if context is not None:
        target = model_input.example_list_with_context
        _fill_example(target.context, context)
    else:
        target = model_input.example_list
    if "examples" not in body:
        raise InvalidInputError("When method is classify, key 'examples' is expected and was not found")
    examples = body["examples"]
    if not isinstance(examples, list):
        raise InvalidInputError("Expecting 'examples' value to be an list/array")
    if not examples:
        raise InvalidInputError("'examples' value is an empty array")
    for example in examples:
        _fill_example(target.examples.add(), example)
    return model_input


def _fill_example(example: example_pb2.Example, features: Any) -> None:
    if not isinstance(features, dict):
        raise InvalidInputError(f"Example must be JSON object but got JSON {_json_type(features)}")
    for name, value in features.items():
        feature = example.features.feature[name]  # an empty list leaves an empty feature, as in TF Serving
        for item in value if isinstance(value, list) else [value]:
            _add_feature_value(str(name), item, feature)


def _add_feature_value(name: str, item: Any, feature: example_pb2.Feature) -> None:
    """AddValueToFeature: append one JSON value to a feature whose kind the first value fixed."""
    if item is None or isinstance(item, list) or (isinstance(item, dict) and not _is_b64(item)):
        raise InvalidInputError(f"Feature: {name} has element with unexpected JSON type: {_json_type(item)}")
    if isinstance(item, bool):
        _kind(name, feature, "int64_list").value.append(1 if item else 0)
    elif isinstance(item, (str, dict)):
        _kind(name, feature, "bytes_list").value.append(_bytes_value(f"Feature: {name}", item))
    elif isinstance(item, int) and _INT64_MIN <= item <= _UINT64_MAX:
        if item > _INT64_MAX:
            raise InvalidInputError(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        _kind(name, feature, "int64_list").value.append(item)
    else:  # a float, or an integer beyond 64 bits (which a JSON parser reads as a double)
        _kind(name, feature, "float_list").value.append(_float32(float(item)))


_KIND_NAMES: Final = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def _kind(name: str, feature: example_pb2.Feature, kind: str) -> Any:
    current = feature.WhichOneof("kind")
    if current is not None and current != kind:
        raise InvalidInputError(
            f"Unexpected element type in feature: {name} expecting type: {_KIND_NAMES[current]}"
        )
    return getattr(feature, kind)


def _float32(value: float) -> float:
    """A JSON number as a float feature holds it (out-of-range values become infinities, not errors)."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def classify_response_json(response: Any) -> dict[str, Any]:
    """{"results": [[[label, score], ...], ...]} (TF Serving's MakeJsonFromClassificationResult)."""
    results = []
    for classification in response.result.classifications:
        scores = np.array([c.score for c in classification.classes], dtype=np.float32)
        texts = _decimals(scores) if scores.size else []
        results.append(
            [[c.label, RawJson(text)] for c, text in zip(classification.classes, texts, strict=True)]
        )
    return {"results": results}


def regress_response_json(response: Any) -> dict[str, Any]:
    """{"results": [value, ...]} (TF Serving's MakeJsonFromRegressionResult)."""
    values = np.array([r.value for r in response.result.regressions], dtype=np.float32)
    return {"results": [RawJson(text) for text in (_decimals(values) if values.size else [])]}
