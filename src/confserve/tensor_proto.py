"""numpy arrays <-> TensorFlow `TensorProto`s, without TensorFlow.

One implementation for the client, the REST front end and the model server. Writing, it produces what
`tf.make_tensor_proto` produces for a numpy array, byte for byte: arrays of more than one element of the
dtypes marked `content` below go into `tensor_content` as raw little-endian bytes, everything else into
the dtype's typed `*_val` field. Reading, it accepts both forms, as TensorFlow does
(tensorflow/core/framework/tensor.cc, Tensor::FromProto; `tf.make_ndarray`): `tensor_content` must hold
exactly the tensor's bytes; a `*_val` field may hold fewer values than the shape has elements, and the
last value then fills the rest (one value and a large shape is a "broadcast"); an empty field means
zeros. The property tests in tests/unit/test_tensor_proto.py compare both directions with
TensorFlow's functions for every dtype below.

Everything a peer sends is checked before numpy allocates: a known dtype, a fully defined shape of at
most `MAX_RANK` dimensions, at most `max_elements` elements (a tiny proto with one value and a huge shape
would otherwise allocate gigabytes), the exact `tensor_content` length, no more values than elements,
values in range of the dtype. Messages name dtypes and shapes, never values.

The bfloat16 numpy type comes from `ml_dtypes` (what TensorFlow itself uses), imported only when a
bfloat16 tensor is met.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from confserve import tfs_protos
from confserve.errors import ConfserveError, Status

__all__ = [
    "DEFAULT_MAX_TENSOR_ELEMENTS",
    "DTYPES",
    "MAX_RANK",
    "STRING_ELEMENT_BYTES",
    "DType",
    "TensorProtoError",
    "TensorTooLargeError",
    "decoded_nbytes",
    "dtype_name",
    "numpy_dtype",
    "to_array",
    "to_proto",
]

# 2**28 elements = 1 GiB of float32: far above any request that fits gRPC's message limit, low enough
# that a broadcast fill cannot exhaust an enclave's memory.
DEFAULT_MAX_TENSOR_ELEMENTS: Final = 1 << 28
MAX_RANK: Final = 64  # numpy's limit on dimensions (NPY_MAXDIMS in numpy 2)
# Memory per string element beyond its bytes, for `decoded_nbytes`: numpy's object pointer (8), the Python
# bytes object's header (33) and TensorFlow's tstring (24), rounded up.
STRING_ELEMENT_BYTES: Final = 64
_MAX_CONTENT_BYTES: Final = 1 << 31  # a protobuf message is at most 2 GiB; TensorFlow refuses as much
# numpy refuses a shape whose non-zero dims times the item size pass 2**63 - 1, even with a zero dim
# (TensorFlow too: its running product of the dims must not overflow); 16 bytes is the largest item.
_INT64_MAX: Final = (1 << 63) - 1
_MAX_ITEM_BYTES: Final = 16

Kind = Literal["float", "int", "uint", "bool", "complex", "string"]


class TensorProtoError(ConfserveError):
    """A TensorProto that cannot be read, or an array that cannot be written as one."""

    status = Status.INVALID_ARGUMENT


class TensorTooLargeError(TensorProtoError):
    """A TensorProto whose shape has more elements than the caller allows."""

    status = Status.RESOURCE_EXHAUSTED


@dataclass(frozen=True, slots=True)
class DType:
    """One row of the table below."""

    enum: int  # the DataType number (tensorflow/core/framework/types.proto)
    name: str  # TensorFlow's DataTypeString: "float", "int32", "string", ...
    numpy: str  # numpy's dtype name ("object" for strings)
    field: str  # the TensorProto field of typed values
    kind: Kind
    content: bool  # tf.make_tensor_proto writes arrays of more than one element to tensor_content

    @property
    def enum_name(self) -> str:
        """The enum value's name, as TF Serving's REST metadata spells it ("DT_FLOAT")."""
        return "DT_" + self.name.upper()

    def numpy_dtype(self) -> np.dtype[Any]:
        if self.numpy == "bfloat16":
            import ml_dtypes  # noqa: PLC0415  (only for bfloat16 tensors)

            bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
            return bfloat16
        return np.dtype(self.numpy)


# The dtypes TF Serving's API carries and confserve serves. Sources: types.proto (numbers, names),
# tensor.proto (which field holds which dtype: half_val holds the 16 bits of a half or bfloat16 value;
# int_val every integer type of 32 bits or less; complex values as (real, imaginary) pairs),
# tensor_util.py `_TENSOR_CONTENT_TYPES` (the `content` column).
# fmt: off
_TABLE: Final = (
    #     enum  name          numpy         field           kind       content
    DType(1,    "float",      "float32",    "float_val",    "float",   True),
    DType(2,    "double",     "float64",    "double_val",   "float",   True),
    DType(3,    "int32",      "int32",      "int_val",      "int",     True),
    DType(4,    "uint8",      "uint8",      "int_val",      "uint",    True),
    DType(5,    "int16",      "int16",      "int_val",      "int",     True),
    DType(6,    "int8",       "int8",       "int_val",      "int",     True),
    DType(7,    "string",     "object",     "string_val",   "string",  False),
    DType(8,    "complex64",  "complex64",  "scomplex_val", "complex", False),
    DType(9,    "int64",      "int64",      "int64_val",    "int",     True),
    DType(10,   "bool",       "bool",       "bool_val",     "bool",    False),
    DType(14,   "bfloat16",   "bfloat16",   "half_val",     "float",   True),
    DType(17,   "uint16",     "uint16",     "int_val",      "uint",    False),
    DType(18,   "complex128", "complex128", "dcomplex_val", "complex", False),
    DType(19,   "half",       "float16",    "half_val",     "float",   True),
    DType(22,   "uint32",     "uint32",     "uint32_val",   "uint",    True),
    DType(23,   "uint64",     "uint64",     "uint64_val",   "uint",    True),
)
# fmt: on
DTYPES: Final[Mapping[int, DType]] = MappingProxyType({row.enum: row for row in _TABLE})
_BY_NUMPY: Final = {row.numpy: row for row in _TABLE if row.kind != "string" and row.numpy != "bfloat16"}
_STRING: Final = DTYPES[7]
# Native-byte-order numpy dtypes -> rows, for `_row_for`'s fast path.
_BY_DTYPE: Final = {np.dtype(name): row for name, row in _BY_NUMPY.items()}
# numpy types of the repeated fields' elements (their wire types), for reading them in one step.
_FIELD_DTYPE: Final = {
    "float_val": np.float32,
    "double_val": np.float64,
    "int_val": np.int32,
    "int64_val": np.int64,
    "uint32_val": np.uint32,
    "uint64_val": np.uint64,
    "bool_val": np.bool_,
    "half_val": np.int32,
    "scomplex_val": np.float32,
    "dcomplex_val": np.float64,
}


def dtype_name(dtype_enum: int) -> str:
    """TensorFlow's DataTypeString ('float', 'int32', 'string', ...), as used in TensorFlow's messages."""
    row = DTYPES.get(dtype_enum)
    if row is not None:
        return row.name
    try:
        return str(tfs_protos.types_pb2.DataType.Name(dtype_enum)).removeprefix("DT_").lower()
    except ValueError:
        return f"DataType({dtype_enum})"


def numpy_dtype(dtype_enum: int) -> np.dtype[Any]:
    """The numpy dtype of a DataType (object for strings); TensorProtoError if it is not supported."""
    row = DTYPES.get(dtype_enum)
    if row is None:
        raise TensorProtoError(f"unsupported dtype {dtype_name(dtype_enum)}")
    return row.numpy_dtype()


def _row_for(dtype: np.dtype[Any]) -> DType:
    row = _BY_DTYPE.get(dtype)  # the common case in one lookup (dtype.name costs microseconds)
    if row is not None:
        return row
    if dtype.kind in "OSU":
        return _STRING
    row = _BY_NUMPY.get(dtype.name)
    if row is not None:
        return row
    ml_dtypes = sys.modules.get("ml_dtypes")  # a bfloat16 array means ml_dtypes is loaded
    if ml_dtypes is not None and dtype == np.dtype(ml_dtypes.bfloat16):
        return DTYPES[14]
    raise TensorProtoError(f"numpy dtype {dtype} has no TensorFlow counterpart")


# -- numpy -> TensorProto -------------------------------------------------------------------------------


def to_proto(array: npt.ArrayLike) -> Any:
    """A TensorProto of `array`, as `tf.make_tensor_proto(array)` makes it for a numpy array.

    Python lists are converted by numpy's rules (float64, int64), not TensorFlow's (float32, int32):
    pass arrays of the dtype you mean.
    """
    array = np.asarray(array)
    row = _row_for(array.dtype)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    proto = tfs_protos.tensor_pb2.TensorProto(dtype=row.enum)
    shape = proto.tensor_shape
    shape.SetInParent()  # present even for a scalar, as TensorFlow writes it
    for size in array.shape:
        shape.dim.add(size=size)
    if row.content and array.size > 1:
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        if data.nbytes >= _MAX_CONTENT_BYTES:
            raise TensorProtoError(f"a {row.name} tensor of shape {list(array.shape)} exceeds 2 GiB")
        proto.tensor_content = data.tobytes()
    elif row.kind == "string":
        proto.string_val.extend(_as_bytes(value) for value in array.ravel().tolist())
    else:
        getattr(proto, row.field).extend(_typed_values(array, row).tolist())
    return proto


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TensorProtoError(f"a string tensor holds bytes or str, not {type(value).__name__}")


def _typed_values(array: npt.NDArray[Any], row: DType) -> npt.NDArray[Any]:
    """The values as the typed field stores them."""
    flat = array.ravel()
    if row.field == "half_val":
        return flat.view(np.uint16)  # the 16 bits of each half or bfloat16 value
    if row.kind == "complex":
        return np.ascontiguousarray(flat).view(flat.real.dtype)  # real, imaginary, real, ...
    return flat


# -- TensorProto -> numpy -------------------------------------------------------------------------------


def to_array(
    proto: Any,
    *,
    max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
    writable: bool = True,
    reserve: Callable[[int], None] | None = None,
) -> npt.NDArray[Any]:
    """Check a TensorProto and convert it to numpy (see the module docstring for the checks).

    With `writable=False` an array read from `tensor_content` is a read-only view of the proto's bytes
    (no copy): enough for a model's inputs, which are only read. `reserve`, when given, is called with the
    tensor's decoded size in bytes (`decoded_nbytes`) after the checks and before anything is allocated;
    it may raise to refuse the tensor.
    """
    row = DTYPES.get(proto.dtype)
    if row is None:
        raise TensorProtoError(f"unsupported dtype {dtype_name(proto.dtype)}")
    dims = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        raise TensorProtoError("tensor shape must be fully defined")
    if len(dims) > MAX_RANK:
        raise TensorProtoError(f"rank {len(dims)} is above the limit of {MAX_RANK}")
    count = math.prod(dims)
    if count > max_elements:
        raise TensorTooLargeError(f"{count} elements exceed the limit of {max_elements}")
    if math.prod(d for d in dims if d) * _MAX_ITEM_BYTES > _INT64_MAX:  # a zero dim hides the overflow
        raise TensorProtoError(f"tensor shape {dims} is too large")  # (numpy and TensorFlow refuse it too)
    values = getattr(proto, row.field)
    content = proto.tensor_content
    if content:
        if row.kind == "string":
            raise TensorProtoError("string tensors cannot use tensor_content")
        if len(values):
            raise TensorProtoError(f"tensor has both tensor_content and {row.field}")
        if reserve is not None:
            reserve(count * row.numpy_dtype().itemsize)
        return _from_content(content, row, dims, count, writable)
    per_element = 2 if row.kind == "complex" else 1
    if len(values) > count * per_element:
        raise TensorProtoError(f"more values than its shape {dims} holds")
    if reserve is not None:
        reserve(_values_nbytes(row, values, count))
    if row.kind == "string":
        return _fill(np.array(list(values), dtype=object), count, b"").reshape(dims)
    return _fill(_from_values(values, row), count, 0).reshape(dims)


def decoded_nbytes(proto: Any) -> int:
    """The bytes `to_array` would allocate for a TensorProto, fill included, without allocating them:
    elements x item size, or for strings the bytes of every element (a filled element repeats the last
    value) plus `STRING_ELEMENT_BYTES` each. The proto must pass `to_array`'s checks for the figure to
    mean anything; an unknown dtype or shape counts 0."""
    row = DTYPES.get(proto.dtype)
    dims = [d.size for d in proto.tensor_shape.dim]
    if row is None or proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        return 0
    count = int(math.prod(dims))
    if proto.tensor_content:
        return count * row.numpy_dtype().itemsize
    return _values_nbytes(row, getattr(proto, row.field), count)


def _values_nbytes(row: DType, values: Any, count: int) -> int:
    if row.kind != "string":
        return count * row.numpy_dtype().itemsize
    total = count * STRING_ELEMENT_BYTES
    if len(values):
        total += sum(map(len, values)) + (count - len(values)) * len(values[-1])
    return total


def _from_content(
    content: bytes, row: DType, dims: list[int], count: int, writable: bool
) -> npt.NDArray[Any]:
    dtype = row.numpy_dtype()
    if len(content) != count * dtype.itemsize:
        raise TensorProtoError("tensor content size does not match its shape")
    array = np.frombuffer(content, dtype=dtype.newbyteorder("<"))
    if row.kind == "bool":
        array = array.view(np.uint8) != 0  # any non-zero byte is true, as in C++
    elif array.dtype != dtype:  # pragma: no cover - a big-endian machine
        array = array.astype(dtype)
    elif writable:
        array = array.copy()
    return array.reshape(dims)


def _from_values(values: Any, row: DType) -> npt.NDArray[Any]:
    raw: npt.NDArray[Any] = np.asarray(values, dtype=_FIELD_DTYPE[row.field])
    dtype = row.numpy_dtype()
    if row.field == "half_val":
        _check_range(raw, np.dtype(np.uint16), row)
        return raw.astype(np.uint16).view(dtype)
    if row.kind == "complex":
        if raw.size % 2:
            raise TensorProtoError(f"{row.field} holds (real, imaginary) pairs, not an odd count")
        return raw.view(dtype)
    if row.field == "int_val" and row.enum != 3:
        _check_range(raw, dtype, row)  # int_val is int32: narrower types must fit
    return raw.astype(dtype, copy=False)


def _check_range(raw: npt.NDArray[Any], dtype: np.dtype[Any], row: DType) -> None:
    info = np.iinfo(dtype)
    if raw.size and (raw.min() < info.min or raw.max() > info.max):
        raise TensorProtoError(f"a value in {row.field} is out of range for {row.name}")


def _fill(values: npt.NDArray[Any], count: int, empty: Any) -> npt.NDArray[Any]:
    """`count` elements: the values, then the last value repeated (zeros, or b"", if none)."""
    if values.size == count:
        return values
    out = np.empty(count, dtype=values.dtype)
    out[: values.size] = values
    out[values.size :] = values[-1] if values.size else empty
    return out
