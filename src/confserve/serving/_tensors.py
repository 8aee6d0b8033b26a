"""TensorProto <-> numpy, with the checks TF Serving leaves to TensorFlow done up front.

Every check produces a message that names the input alias, the dtype or the shape, never a value.
Size limits stop a tiny proto (one value and a huge shape, which TensorFlow broadcasts) from allocating
gigabytes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from confserve.serving._errors import InvalidInputError, ResourceExhaustedError

__all__ = ["DEFAULT_MAX_TENSOR_ELEMENTS", "check_compatible", "dtype_name", "from_proto", "to_proto"]

# 2**28 elements = 1 GiB of float32: far above any request that fits gRPC's message limit, low enough
# that a broadcast fill cannot exhaust an enclave's memory.
DEFAULT_MAX_TENSOR_ELEMENTS = 1 << 28

# tensorflow/core/framework/types.proto: values of the `*_val` field per dtype (DataType enum number).
_VAL_FIELD: dict[int, str] = {
    1: "float_val",  # DT_FLOAT
    2: "double_val",  # DT_DOUBLE
    3: "int_val",  # DT_INT32
    4: "int_val",  # DT_UINT8
    5: "int_val",  # DT_INT16
    6: "int_val",  # DT_INT8
    7: "string_val",  # DT_STRING
    8: "scomplex_val",  # DT_COMPLEX64
    9: "int64_val",  # DT_INT64
    10: "bool_val",  # DT_BOOL
    14: "half_val",  # DT_BFLOAT16
    17: "int_val",  # DT_UINT16
    18: "dcomplex_val",  # DT_COMPLEX128
    19: "half_val",  # DT_HALF
    22: "uint32_val",  # DT_UINT32
    23: "uint64_val",  # DT_UINT64
}
_DT_STRING = 7


def _tf() -> Any:
    import tensorflow as tf  # noqa: PLC0415  (lazy)

    return tf


def dtype_name(dtype_enum: int) -> str:
    """TensorFlow's DataTypeString ('float', 'int32', 'string', ...), as used in TensorFlow's messages."""
    from tensorflow.core.framework import types_pb2  # noqa: PLC0415

    try:
        return str(types_pb2.DataType.Name(dtype_enum)).removeprefix("DT_").lower()
    except ValueError:
        return f"DataType({dtype_enum})"


def shape_of(proto_shape: Any) -> list[int] | None:
    """Dims of a TensorShapeProto (-1 = unknown), or None for unknown rank."""
    if proto_shape.unknown_rank:
        return None
    return [d.size for d in proto_shape.dim]


def from_proto(
    alias: str, tensor: Any, *, max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS
) -> npt.NDArray[Any]:
    """Validate a request TensorProto and convert it to numpy."""
    field = _VAL_FIELD.get(tensor.dtype)
    if field is None:
        raise InvalidInputError(f"input '{alias}': unsupported dtype {dtype_name(tensor.dtype)}")
    dims = [d.size for d in tensor.tensor_shape.dim]
    if tensor.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        raise InvalidInputError(f"input '{alias}': tensor shape must be fully defined")
    count = math.prod(dims)
    if count > max_elements:
        raise ResourceExhaustedError(f"input '{alias}': {count} elements exceed the limit of {max_elements}")
    values = getattr(tensor, field)
    # complex dtypes store two numbers per element.
    per_element = 2 if field in ("scomplex_val", "dcomplex_val") else 1
    if tensor.tensor_content:
        if tensor.dtype == _DT_STRING:
            raise InvalidInputError(f"input '{alias}': string tensors cannot use tensor_content")
        itemsize = _tf().dtypes.as_dtype(tensor.dtype).size
        if len(tensor.tensor_content) != count * itemsize or len(values):
            raise InvalidInputError(f"input '{alias}': tensor content size does not match its shape")
    elif len(values) > count * per_element:
        raise InvalidInputError(f"input '{alias}': more values than its shape {dims} holds")
    try:
        return np.asarray(_tf().make_ndarray(tensor))
    except (TypeError, ValueError):
        raise InvalidInputError(f"input '{alias}': malformed tensor") from None


def to_proto(array: npt.NDArray[Any]) -> Any:
    """A TensorProto for a result array (numeric data in tensor_content, as tf.make_tensor_proto does)."""
    return _tf().make_tensor_proto(array)


def check_compatible(alias: str, index: int, tensor: Any, tensor_info: Any) -> None:
    """Check a request TensorProto's dtype and shape against a SignatureDef TensorInfo.

    TF Serving leaves this to TensorFlow; checking first gives a clear INVALID_ARGUMENT before any work.
    """
    if tensor.dtype != tensor_info.dtype:
        # TensorFlow's own wording for a feed of the wrong type, with the alias added.
        raise InvalidInputError(
            f"input '{alias}': Expects arg[{index}] to be {dtype_name(tensor_info.dtype)} "
            f"but {dtype_name(tensor.dtype)} is provided"
        )
    expected = shape_of(tensor_info.tensor_shape)
    if expected is None or tensor.tensor_shape.unknown_rank:
        return
    shape = [d.size for d in tensor.tensor_shape.dim]
    if len(shape) != len(expected) or any(e not in (-1, s) for e, s in zip(expected, shape, strict=True)):
        raise InvalidInputError(
            f"input '{alias}': shape {shape} is not compatible with the signature shape {expected}"
        )
