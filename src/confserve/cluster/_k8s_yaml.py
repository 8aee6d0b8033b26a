"""YAML for the Kubernetes files: block style, keys in insertion order, strings quoted unless plainly
safe (YAML 1.1's booleans, null and float specials never appear as plain scalars). Standard library
only; `to_yaml` is all the renderers use."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Final

from confserve.cluster._k8s_common import K8sError

__all__ = ["to_yaml"]


_PLAIN: Final = re.compile(r"[A-Za-z_/.][A-Za-z0-9_./@=-]*")
# YAML 1.1 booleans and null, and the float specials (.inf, .nan), which a plain scalar would turn into.
_RESERVED: Final = frozenset(
    {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~", ".inf", ".nan"}
)


def _scalar(value: object) -> str:
    if value is None or isinstance(value, bool | int):
        return json.dumps(value)  # null, true, false and integers are written alike in JSON and YAML
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return json.dumps(value)  # a JSON string is a YAML double-quoted scalar
    raise K8sError(f"cannot write {type(value).__name__} as YAML")


def _block(value: object, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            head = f"{pad}{_scalar(str(key))}:"
            if isinstance(item, Mapping | list) and item:
                lines.append(head)
                lines += _block(item, indent + 2)
            else:
                lines.append(f"{head} {_empty_or_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping) and item:
                inner = _block(item, indent + 2)
                lines.append(f"{pad}- {inner[0][indent + 2 :]}")
                lines += inner[1:]
            elif isinstance(item, Mapping | list) and item:
                raise K8sError("nested lists are not used in these files")
            else:
                lines.append(f"{pad}- {_empty_or_scalar(item)}")
    else:
        lines.append(pad + _scalar(value))
    return lines


def _empty_or_scalar(value: object) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(*documents: object, comment: str | None = None) -> str:
    """YAML text of `documents` (a multi-document stream when there are several)."""
    out: list[str] = []
    if comment:
        out += [f"# {line}".rstrip() for line in comment.splitlines()]
    for i, document in enumerate(documents):
        if i:
            out.append("---")
        out += _block(document, 0)
    return "\n".join(out) + "\n"
