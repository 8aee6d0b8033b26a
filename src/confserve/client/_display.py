"""Readable and machine-readable renderings of a prediction."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["as_json", "describe"]


def _looks_like_scores(array: npt.NDArray[Any]) -> bool:
    return array.ndim == 2 and array.shape[1] >= 2 and np.issubdtype(array.dtype, np.floating)


def describe(outputs: dict[str, npt.NDArray[Any]], *, top_k: int = 5) -> list[str]:
    """Per output: its shape and dtype; for [N, C] float scores, the top-k classes of each row."""
    lines = []
    for name, array in outputs.items():
        lines.append(f"{name}: {array.dtype} {list(array.shape)}")
        if _looks_like_scores(array):
            for row, scores in enumerate(array):
                best = np.argsort(-scores)[:top_k]
                ranked = ", ".join(f"{int(c)} ({float(scores[c]):.4f})" for c in best)
                lines.append(f"  [{row}] top-{len(best)}: {ranked}")
        elif array.size <= 32:
            lines.append(f"  {_plain(array)}")
        else:
            lines.append(f"  ({array.size} values; use --json to see them)")
    return lines


def _plain(array: npt.NDArray[Any]) -> Any:
    if array.dtype == object:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.ravel().tolist()]
    return array.tolist()


def as_json(outputs: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
    def value(array: npt.NDArray[Any]) -> Any:
        if array.dtype == object:
            return [
                {"b64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v
                for v in array.ravel().tolist()
            ]
        return array.tolist()

    return {
        name: {"dtype": str(array.dtype), "shape": list(array.shape), "value": value(array)}
        for name, array in outputs.items()
    }
