"""TensorProto <-> numpy for the DataPlane: confserve.tensor_proto's conversion, with errors that name
the input alias and carry the serving package's statuses.

The conversion checks what TF Serving leaves to TensorFlow up front (dtype, a fully defined shape, the
element limit, tensor_content length, value counts and ranges); every message names the input alias,
the dtype or the shape, never a value. Request arrays read from tensor_content are read-only views of
the request's bytes: a model only reads its inputs.
"""

from __future__ import annotations

from typing import Any

import numpy.typing as npt

from confserve.serving._errors import InvalidInputError, ResourceExhaustedError
from confserve.tensor_proto import (
    DEFAULT_MAX_TENSOR_ELEMENTS,
    TensorProtoError,
    TensorTooLargeError,
    dtype_name,
    to_array,
    to_proto,
)

__all__ = [
    "DEFAULT_MAX_TENSOR_ELEMENTS",
    "check_compatible",
    "dtype_name",
    "from_proto",
    "shape_of",
    "to_proto",
]


def shape_of(proto_shape: Any) -> list[int] | None:
    """Dims of a TensorShapeProto (-1 = unknown), or None for unknown rank."""
    if proto_shape.unknown_rank:
        return None
    return [d.size for d in proto_shape.dim]


def from_proto(
    alias: str, tensor: Any, *, max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS
) -> npt.NDArray[Any]:
    """Validate a request TensorProto and convert it to numpy."""
    try:
        return to_array(tensor, max_elements=max_elements, writable=False)
    except TensorTooLargeError as e:
        raise ResourceExhaustedError(f"input '{alias}': {e}") from None
    except TensorProtoError as e:
        raise InvalidInputError(f"input '{alias}': {e}") from None


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
