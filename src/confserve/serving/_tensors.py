"""TensorProto <-> numpy for the DataPlane: confserve.tensor_proto's conversion, with errors that name
the input alias and carry the serving package's statuses.

Reading a request, the conversion checks what must hold before anything is allocated (a known dtype, a
fully defined shape, the element limit, tensor_content length, value counts and ranges); every message
names the input alias, the dtype or the shape, never a value. Request arrays read from tensor_content are
read-only views of the request's bytes: a model only reads its inputs. Whether the shape suits the model
is left to the model's graph, as in TF Serving; the dtype is checked here (`check_dtype`), with
TensorFlow's own wording.

Writing a response, `response_proto` follows TF Serving: by default every value goes into the dtype's
typed `*_val` field (TensorFlow's Tensor::AsProtoField, what TF Serving's Predict returns, and what
clients reading `outputs[...].float_val` expect); with `as_content` (TF Serving's
--enable_serialization_as_tensor_content) numeric tensors go into `tensor_content` as tf.make_tensor_proto
writes them.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from confserve import tfs_protos
from confserve.serving._errors import InvalidInputError, ResourceExhaustedError, ServingError
from confserve.serving._memory import RequestMemory
from confserve.tensor_proto import (
    DEFAULT_MAX_TENSOR_ELEMENTS,
    DTYPES,
    STRING_ELEMENT_BYTES,
    TensorProtoError,
    TensorTooLargeError,
    dtype_name,
    to_array,
    to_proto,
)

__all__ = [
    "DEFAULT_MAX_TENSOR_ELEMENTS",
    "STRING_ELEMENT_BYTES",
    "check_array_dtype",
    "check_dtype",
    "data_type_name",
    "dtype_name",
    "from_proto",
    "response_proto",
    "shape_of",
    "tensor_shape_string",
]

# Typed fields of fixed-width little-endian values: (DataType, field number) by numpy dtype
# (tensorflow/core/framework/tensor.proto: float_val = 5, double_val = 6), written as one packed field
# straight from the array's bytes (protobuf's wire format: tag, length, data), which is what `extend`
# would produce, much faster.
_PACKED_NUMBERS: Final = {np.dtype(np.float32): (1, 5), np.dtype(np.float64): (2, 6)}
_LENGTH_DELIMITED: Final = 2  # the wire type of a packed repeated field


def shape_of(proto_shape: Any) -> list[int] | None:
    """Dims of a TensorShapeProto (-1 = unknown), or None for unknown rank."""
    if proto_shape.unknown_rank:
        return None
    return [d.size for d in proto_shape.dim]


def tensor_shape_string(array: npt.NDArray[Any]) -> str:
    """A shape as TensorFlow's TensorShape::DebugString writes it: [2,3]."""
    return "[" + ",".join(str(size) for size in array.shape) + "]"


def from_proto(
    alias: str,
    tensor: Any,
    *,
    max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
    memory: RequestMemory | None = None,
) -> npt.NDArray[Any]:
    """Validate a request TensorProto and convert it to numpy; its decoded size is charged to `memory`
    before anything is allocated."""
    what = f"input '{alias}'"
    reserve = None if memory is None else (lambda nbytes: memory.charge(nbytes, what))
    try:
        return to_array(tensor, max_elements=max_elements, writable=False, reserve=reserve)
    except TensorTooLargeError as e:
        raise ResourceExhaustedError(f"input '{alias}': {e}") from None
    except TensorProtoError as e:
        raise InvalidInputError(f"input '{alias}': {e}") from None


def check_dtype(alias: str, index: int, tensor: Any, tensor_info: Any) -> None:
    """A request TensorProto's dtype must be the SignatureDef's: TensorFlow's own refusal, with the alias
    added (TF Serving feeds the tensor and lets TensorFlow say it). The shape is not checked."""
    if tensor.dtype != tensor_info.dtype:
        raise InvalidInputError(
            f"input '{alias}': Expects arg[{index}] to be {dtype_name(tensor_info.dtype)} "
            f"but {dtype_name(tensor.dtype)} is provided"
        )


def check_array_dtype(alias: str, index: int, array: npt.NDArray[Any], tensor_info: Any) -> None:
    """`check_dtype` for an input already decoded to numpy (REST): its dtype must be the SignatureDef's."""
    expected = DTYPES.get(tensor_info.dtype)
    if expected is None or array.dtype != expected.numpy_dtype():
        raise InvalidInputError(
            f"input '{alias}': Expects arg[{index}] to be {dtype_name(tensor_info.dtype)} "
            f"but {_tf_dtype_name(array)} is provided"
        )


def _tf_dtype_name(array: npt.NDArray[Any]) -> str:
    name = data_type_name(array)
    return name[3:].lower() if name.startswith("DT_") else name


def data_type_name(array: npt.NDArray[Any]) -> str:
    """The DataType enum name of an array's dtype ("DT_INT64"), as TF Serving's messages print it."""
    try:
        proto = to_proto(np.empty(0, dtype=array.dtype))
    except TensorProtoError:
        return str(array.dtype)
    return "DT_" + dtype_name(proto.dtype).upper()


def response_proto(array: npt.NDArray[Any], *, as_content: bool = False) -> Any:
    """A model output as TF Serving returns it: typed values by default, tensor_content on request."""
    array = np.asarray(array)
    number = _PACKED_NUMBERS.get(array.dtype)
    if number is not None and not as_content and array.size > 1:
        # float and double: the shape, then one packed field written straight from the array's bytes.
        proto = tfs_protos.tensor_pb2.TensorProto(dtype=number[0])
        shape = proto.tensor_shape
        shape.SetInParent()
        for size in array.shape:
            shape.dim.add(size=size)
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        proto.MergeFromString(_varint((number[1] << 3) | _LENGTH_DELIMITED) + _varint(len(data)) + data)
        return proto
    try:
        proto = to_proto(array)
    except TensorProtoError as e:  # the model's own output: not the caller's fault
        raise ServingError(f"an output tensor cannot be returned: {e}") from None
    if as_content or not proto.tensor_content:
        return proto
    proto.ClearField("tensor_content")
    row = DTYPES[proto.dtype]
    flat = array.ravel()
    if row.field == "half_val":
        proto.half_val.extend(flat.view(np.uint16).tolist())  # the 16 bits of each value
    else:
        getattr(proto, row.field).extend(flat.tolist())
    return proto


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
