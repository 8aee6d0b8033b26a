"""Lazy package exports: a package whose modules are costly to import (cryptography's X.509 layer,
dcap-qvl, pyOpenSSL, numpy, TensorFlow's protos) names them in its `__init__.py` without importing
them.

The package lists `name -> defining module` and sets `__getattr__ = lazy_exports(__name__, table)`;
Python calls it for a name the module does not have yet (PEP 562), so `from confserve.attestation
import verify` imports `confserve.attestation._verify` at that moment and not before. The value is then
stored on the package, so later lookups are plain attribute reads. `TYPE_CHECKING` imports in the same
`__init__.py` give mypy the names and their types. Standard library only.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """The module `__getattr__` of `package`: `where` maps each lazily exported name to the name of its
    module inside the package (e.g. "_verify")."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    return __getattr__
