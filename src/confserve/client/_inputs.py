"""Turning user input into the tensors a signature expects: .npy files, JSON, images, or random data.

Every reader checks what it reads against the signature (names, dtypes, ranks, fixed dimensions) and
says exactly what does not fit, before anything is sent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from confserve.client._errors import ClientError
from confserve.client._predict import Signature
from confserve.files import FileTooLargeError, read_input

__all__ = ["check_inputs", "inputs_from_image", "inputs_from_json", "inputs_from_npy", "random_inputs"]

_MAX_INPUT_FILE_BYTES: Final = 512 * 1024 * 1024  # larger than any sane request; the server caps at 64 MiB


def _only_input(signature: Signature) -> str:
    if len(signature.inputs) != 1:
        raise ClientError(
            f"signature {signature.name!r} has inputs {', '.join(signature.inputs)}: name them (NAME=FILE)"
        )
    return next(iter(signature.inputs))


def check_inputs(signature: Signature, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
    """Cast to the signature's dtypes and check names, ranks and fixed dimensions."""
    unknown = set(inputs) - set(signature.inputs)
    if unknown:
        raise ClientError(f"signature {signature.name!r} has no input {sorted(unknown)[0]!r}")
    missing = set(signature.inputs) - set(inputs)
    if missing:
        raise ClientError(f"input {sorted(missing)[0]!r} of signature {signature.name!r} is missing")
    out = {}
    for alias, array in inputs.items():
        spec = signature.inputs[alias]
        if spec.shape is not None:
            if array.ndim != len(spec.shape):
                want = f"rank {len(spec.shape)} {_shape_text(spec.shape)}"
                raise ClientError(
                    f"input {alias!r} has shape {list(array.shape)}; the signature wants {want}"
                )
            if any(w >= 0 and g != w for g, w in zip(array.shape, spec.shape, strict=True)):
                want = _shape_text(spec.shape)
                raise ClientError(
                    f"input {alias!r} has shape {list(array.shape)}; the signature wants {want}"
                )
        try:
            out[alias] = array.astype(spec.numpy_dtype(), copy=False)
        except (TypeError, ValueError):
            raise ClientError(f"input {alias!r} cannot be converted to {spec.dtype}") from None
    return out


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join("N" if d < 0 else str(d) for d in shape) + "]"


def _read(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        return read_input(p, max_bytes=_MAX_INPUT_FILE_BYTES)
    except FileTooLargeError:
        raise ClientError(f"{p} is larger than {_MAX_INPUT_FILE_BYTES} bytes") from None
    except OSError as e:
        raise ClientError(f"cannot read {p}: {e.strerror}") from None


def inputs_from_npy(signature: Signature, files: dict[str | None, str]) -> dict[str, npt.NDArray[Any]]:
    """`{alias or None: path}`: .npy arrays (pickles refused)."""
    import io  # noqa: PLC0415

    out = {}
    for alias, path in files.items():
        name = alias or _only_input(signature)
        try:
            out[name] = np.load(io.BytesIO(_read(path)), allow_pickle=False)
        except ValueError as e:
            raise ClientError(f"{path} is not a .npy array without pickled objects: {e}") from None
    return check_inputs(signature, out)


def inputs_from_json(signature: Signature, path: str | os.PathLike[str]) -> dict[str, npt.NDArray[Any]]:
    """A TF Serving REST body ({"instances": [...]} or {"inputs": ...}) or a plain {name: nested list}."""
    try:
        body = json.loads(_read(path))
    except ValueError as e:
        raise ClientError(f"{path} is not JSON: {e}") from None
    if isinstance(body, dict) and "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise ClientError("'instances' must be a non-empty list")
        if all(isinstance(r, dict) for r in rows):
            columns = {k: [r.get(k) for r in rows] for k in rows[0]}
        else:
            columns = {_only_input(signature): rows}
    elif isinstance(body, dict) and "inputs" in body:
        columns = (
            body["inputs"] if isinstance(body["inputs"], dict) else {_only_input(signature): body["inputs"]}
        )
    elif isinstance(body, dict):
        columns = body
    else:
        columns = {_only_input(signature): body}
    out = {}
    for alias, value in columns.items():
        spec = signature.inputs.get(alias)
        if spec is None:
            raise ClientError(f"signature {signature.name!r} has no input {alias!r}")
        try:
            out[alias] = np.array(value, dtype=spec.numpy_dtype())
        except (TypeError, ValueError):
            raise ClientError(f"input {alias!r} in {path} is not a regular array of {spec.dtype}") from None
    return check_inputs(signature, out)


def inputs_from_image(
    signature: Signature, path: str | os.PathLike[str], *, scale: float = 1 / 255, invert: bool = False
) -> dict[str, npt.NDArray[Any]]:
    """Decode an image, convert it to the input's channels and size ([N,H,W,C]), scale its values."""
    import io  # noqa: PLC0415

    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    alias = _only_input(signature)
    shape = signature.inputs[alias].shape
    if shape is None or len(shape) != 4 or shape[1] < 1 or shape[2] < 1 or shape[3] not in (1, 3):
        raise ClientError(f"input {alias!r} is not an image batch [N,H,W,1|3] of fixed size")
    try:
        with Image.open(io.BytesIO(_read(path))) as image:
            image.load()
            converted = image.convert("L" if shape[3] == 1 else "RGB").resize((shape[2], shape[1]))
    except (UnidentifiedImageError, OSError) as e:
        raise ClientError(f"{path} is not an image Pillow can decode: {e}") from None
    pixels = np.asarray(converted, dtype=np.float32).reshape(shape[1], shape[2], shape[3])
    if invert:
        pixels = 255.0 - pixels
    return check_inputs(signature, {alias: (pixels * scale)[None, ...]})


def random_inputs(
    signature: Signature, *, batch: int = 1, seed: int | None = None
) -> dict[str, npt.NDArray[Any]]:
    """Random data of each input's shape (unknown dimensions become `batch`)."""
    rng = np.random.default_rng(seed)
    out = {}
    for alias, spec in signature.inputs.items():
        if spec.shape is None:
            raise ClientError(f"input {alias!r} has an unknown rank; give its data instead of --random")
        shape = tuple(batch if d < 0 else d for d in spec.shape)
        dtype = spec.numpy_dtype()
        if spec.dtype == "string":
            out[alias] = np.array([b"x"] * int(np.prod(shape)), dtype=object).reshape(shape)
        elif dtype.kind in "iu":
            out[alias] = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            out[alias] = rng.integers(0, 2, size=shape).astype(bool)
        else:  # floats (bfloat16 included) and complex numbers
            out[alias] = rng.random(shape, dtype=np.float64).astype(dtype)
    return out
