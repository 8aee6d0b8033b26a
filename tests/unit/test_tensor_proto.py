"""confserve.tensor_proto against TensorFlow's own conversions, for every dtype and many shapes, and the
TensorProtos it must refuse. (The tests import TensorFlow; the module under test does not.)"""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from confserve import tensor_proto
from confserve.errors import Status
from confserve.tensor_proto import (
    DTYPES,
    MAX_RANK,
    TensorProtoError,
    TensorTooLargeError,
    dtype_name,
    numpy_dtype,
    to_array,
    to_proto,
)

NUMERIC = [row for row in DTYPES.values() if row.kind != "string"]
ALL = list(DTYPES.values())
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def test_the_table_matches_tensorflow() -> None:
    from tensorflow.core.framework import types_pb2
    from tensorflow.python.framework import tensor_util

    for row in ALL:
        assert types_pb2.DataType.Name(row.enum) == row.enum_name
        tf_dtype = tf.dtypes.as_dtype(row.enum)
        expected = np.dtype(object) if row.kind == "string" else np.dtype(tf_dtype.as_numpy_dtype)
        assert numpy_dtype(row.enum) == expected
        assert row.content == (tf_dtype in tensor_util._TENSOR_CONTENT_TYPES)
        assert (row.kind == "float") == tf_dtype.is_floating
        assert (row.kind in ("int", "uint")) == tf_dtype.is_integer
        assert (row.kind == "uint") == (tf_dtype.is_integer and tf_dtype.is_unsigned)


@st.composite
def arrays(draw: st.DrawFn, rows: list[Any] = ALL) -> np.ndarray[Any, Any]:
    row = draw(st.sampled_from(rows))
    shape = draw(shapes)
    if row.kind == "string":
        elements = st.one_of(st.binary(max_size=6), st.text(max_size=4).map(str.encode))
        values = draw(st.lists(elements, min_size=math.prod(shape), max_size=math.prod(shape)))
        return np.array(values, dtype=object).reshape(shape)
    if row.name == "bfloat16":  # hypothesis has no bfloat16: draw float32 and round
        return draw(hnp.arrays(np.float32, shape)).astype(ml_dtypes.bfloat16)
    return draw(hnp.arrays(row.numpy_dtype(), shape))


def serialized(proto: Any) -> bytes:
    return bytes(proto.SerializeToString(deterministic=True))


def same_array(mine: np.ndarray[Any, Any], theirs: np.ndarray[Any, Any]) -> None:
    assert mine.dtype == theirs.dtype
    assert mine.shape == theirs.shape
    if mine.dtype == object:
        assert mine.tolist() == theirs.tolist()
    else:
        assert mine.tobytes() == theirs.tobytes()  # bit for bit: NaN payloads and -0.0 included


@settings(max_examples=200, deadline=None)
@given(arrays())
def test_to_proto_is_tf_make_tensor_proto(array: np.ndarray[Any, Any]) -> None:
    assert serialized(to_proto(array)) == serialized(tf.make_tensor_proto(array))


@settings(max_examples=200, deadline=None)
@given(arrays())
def test_to_array_reads_what_tensorflow_writes(array: np.ndarray[Any, Any]) -> None:
    proto = tf.make_tensor_proto(array)
    same_array(to_array(proto), tf.make_ndarray(proto))
    same_array(to_array(proto, writable=False), array)


def typed_values_form(array: np.ndarray[Any, Any]) -> Any:
    """The array in its dtype's *_val field (test-side encoding, as tensor.proto describes it)."""
    row = DTYPES[tf.dtypes.as_dtype(array.dtype).as_datatype_enum]
    proto = tf.make_tensor_proto(array)
    proto.ClearField("tensor_content")
    getattr(proto, row.field)[:] = []
    flat = array.ravel()
    if row.field == "half_val":
        values = flat.view(np.uint16).tolist()
    elif row.kind == "complex":
        values = np.ascontiguousarray(flat).view(flat.real.dtype).tolist()
    else:
        values = flat.tolist()
    getattr(proto, row.field).extend(values)
    return proto


@settings(max_examples=200, deadline=None)
@given(arrays(NUMERIC))
def test_every_dtype_in_typed_fields(array: np.ndarray[Any, Any]) -> None:
    proto = typed_values_form(array)
    assert not proto.tensor_content
    same_array(to_array(proto), tf.make_ndarray(proto))


@settings(max_examples=200, deadline=None)
@given(arrays(NUMERIC))
def test_every_dtype_in_tensor_content(array: np.ndarray[Any, Any]) -> None:
    proto = tf.make_tensor_proto(array)
    getattr(proto, DTYPES[proto.dtype].field)[:] = []
    proto.tensor_content = array.tobytes()
    if array.size:
        same_array(to_array(proto), tf.make_ndarray(proto))
    else:  # empty content means "no content": zeros of the shape
        assert to_array(proto).shape == array.shape


@settings(max_examples=200, deadline=None)
@given(arrays(), shapes, st.integers(1, 3))
def test_fewer_values_than_elements_repeat_the_last(
    array: np.ndarray[Any, Any], shape: tuple[int, ...], count: int
) -> None:
    values = array.ravel()[:count]
    assume(values.size and math.prod(shape) >= values.size)
    # Given a larger shape, TensorFlow writes the values to *_val: its broadcast form.
    proto = tf.make_tensor_proto(values, shape=list(shape))
    same_array(to_array(proto), tf.make_ndarray(proto))


def test_single_value_broadcast_and_empty_fields() -> None:
    proto = tf.make_tensor_proto(np.float32(2.5), shape=[2, 3])
    assert list(proto.float_val) == [2.5]
    np.testing.assert_array_equal(to_array(proto), np.full((2, 3), 2.5, np.float32))
    empty = tf.make_tensor_proto(np.zeros((2, 2), np.int32))
    empty.ClearField("tensor_content")
    np.testing.assert_array_equal(to_array(empty), np.zeros((2, 2), np.int32))
    strings = tf.make_tensor_proto(np.array([b"a"], dtype=object))
    strings.ClearField("string_val")
    strings.tensor_shape.dim[0].size = 2
    assert to_array(strings).tolist() == [b"", b""]  # bytes, not TensorFlow's str ''
    half = tf.make_tensor_proto(np.float16(1.5), shape=[3])
    assert list(half.half_val) == [np.float16(1.5).view(np.uint16)]
    np.testing.assert_array_equal(to_array(half), np.full(3, 1.5, np.float16))


def test_outputs_are_writable_unless_asked_otherwise() -> None:
    proto = to_proto(np.arange(4, dtype=np.float32))
    assert to_array(proto).flags.writeable
    view = to_array(proto, writable=False)
    assert not view.flags.writeable
    np.testing.assert_array_equal(view, np.arange(4, dtype=np.float32))


def test_byte_order_and_layout_do_not_change_the_proto() -> None:
    native = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert serialized(to_proto(native.astype(">f4"))) == serialized(to_proto(native))
    assert serialized(to_proto(np.asfortranarray(native))) == serialized(to_proto(native))
    half = np.array([1.5, -2.0], np.float16)
    assert serialized(to_proto(half[:1].astype(">f2"))) == serialized(to_proto(half[:1]))
    assert serialized(to_proto(native.T)) == serialized(tf.make_tensor_proto(native.T))


def test_text_is_utf8() -> None:
    for array in (np.array(["é", "x"]), np.array(["é", b"x"], dtype=object)):
        assert serialized(to_proto(array)) == serialized(tf.make_tensor_proto(array))
        assert to_array(to_proto(array)).tolist() == [b"\xc3\xa9", b"x"]


def test_content_over_the_protobuf_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensor_proto, "_MAX_CONTENT_BYTES", 16)  # rather than allocate 2 GiB
    assert to_proto(np.zeros(3, np.float32)).tensor_content
    with pytest.raises(TensorProtoError, match=r"a float tensor of shape \[4\] exceeds 2 GiB"):
        to_proto(np.zeros(4, np.float32))


def test_bool_content_bytes_other_than_one_are_true() -> None:
    proto = tf.make_tensor_proto(np.array([True, False, True]))
    proto.ClearField("bool_val")
    proto.tensor_content = b"\x02\x00\xff"
    result = to_array(proto)
    assert result.tolist() == [True, False, True]
    assert result.view(np.uint8).tolist() == [1, 0, 1]


def raw(dtype: int, dims: list[int], **fields: Any) -> Any:
    proto = tf.make_tensor_proto(np.zeros(1, np.float32))
    proto.ClearField("float_val")
    proto.dtype = dtype
    proto.tensor_shape.ClearField("dim")
    for size in dims:
        proto.tensor_shape.dim.add().size = size
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(proto, key).extend(value)
        else:
            setattr(proto, key, value)
    return proto


SECRET = 1234.5  # a value that must never appear in an error message


@pytest.mark.parametrize(
    ("proto", "match"),
    [
        (raw(1, [2, 2], tensor_content=b"\0" * 15), "content size does not match its shape"),
        (raw(1, [2, 2], tensor_content=b"\0" * 17), "content size does not match its shape"),
        (
            raw(1, [2], tensor_content=np.float32([SECRET, 1]).tobytes(), float_val=[SECRET]),
            "both tensor_content",
        ),
        (raw(7, [1], tensor_content=b"abcd"), "string tensors cannot use tensor_content"),
        (raw(0, [1], float_val=[SECRET]), "unsupported dtype invalid"),
        (raw(20, [1]), "unsupported dtype resource"),
        (raw(21, [1]), "unsupported dtype variant"),
        (raw(101, [1], float_val=[SECRET]), "unsupported dtype float_ref"),
        (raw(11, [1], int_val=[1]), "unsupported dtype qint8"),
        (raw(999, [1]), r"unsupported dtype DataType\(999\)"),
        (raw(1, [2], float_val=[SECRET] * 3), r"more values than its shape \[2\] holds"),
        (raw(8, [1], scomplex_val=[SECRET, 1.0, 2.0, 3.0]), r"more values than its shape \[1\] holds"),
        (raw(8, [2], scomplex_val=[SECRET, 1.0, 2.0]), "pairs"),
        (raw(1, [-1, 2], float_val=[SECRET]), "must be fully defined"),
        (raw(6, [1], int_val=[128]), "out of range for int8"),
        (raw(4, [1], int_val=[-1]), "out of range for uint8"),
        (raw(5, [1], int_val=[1 << 15]), "out of range for int16"),
        (raw(17, [1], int_val=[1 << 16]), "out of range for uint16"),
        (raw(19, [1], half_val=[1 << 16]), "out of range for half"),
        (raw(14, [1], half_val=[-1]), "out of range for bfloat16"),
        (raw(1, [1] * (MAX_RANK + 1), float_val=[SECRET]), "rank 65 is above the limit of 64"),
    ],
)
def test_malformed_protos_are_refused(proto: Any, match: str) -> None:
    with pytest.raises(TensorProtoError, match=match) as info:
        to_array(proto)
    assert info.value.status is Status.INVALID_ARGUMENT
    assert "1234" not in str(info.value)


def test_unknown_rank_is_refused() -> None:
    proto = raw(1, [], float_val=[1.0])
    proto.tensor_shape.unknown_rank = True
    with pytest.raises(TensorProtoError, match="must be fully defined"):
        to_array(proto)


def test_element_limit() -> None:
    huge = raw(1, [1 << 20, 1 << 20], float_val=[1.0])  # a few bytes asking for 4 TiB
    with pytest.raises(
        TensorTooLargeError, match=r"1099511627776 elements exceed the limit of 268435456"
    ) as info:
        to_array(huge)
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    small = raw(1, [3, 4], float_val=[1.0])
    with pytest.raises(TensorTooLargeError):
        to_array(small, max_elements=11)
    assert to_array(small, max_elements=12).shape == (3, 4)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "no TensorFlow counterpart"),
        (np.zeros(2, dtype=np.longdouble), "no TensorFlow counterpart"),
        (np.zeros(2, dtype=[("a", np.int8)]), "no TensorFlow counterpart"),
        (np.array([1, 2], dtype=object), "holds bytes or str, not int"),
        (np.array([b"a", None], dtype=object), "holds bytes or str, not NoneType"),
    ],
)
def test_arrays_without_a_tensor_form_are_refused(array: np.ndarray[Any, Any], match: str) -> None:
    with pytest.raises(TensorProtoError, match=match):
        to_proto(array)


def test_names_and_numpy_dtypes() -> None:
    assert dtype_name(1) == "float"
    assert dtype_name(20) == "resource"
    assert dtype_name(999) == "DataType(999)"
    assert numpy_dtype(14) == np.dtype(ml_dtypes.bfloat16)
    assert numpy_dtype(7) == np.dtype(object)
    with pytest.raises(TensorProtoError, match="unsupported dtype resource"):
        numpy_dtype(20)
