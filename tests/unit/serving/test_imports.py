"""Layering: the serving core imports no transport framework, and TensorFlow only when models run."""

from __future__ import annotations

import subprocess
import sys

import pytest


def modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return {name.split(".")[0] for name in result.stdout.split()}


def test_serving_package_import_is_light() -> None:
    # The config protos (tensorflow_serving.config) are plain protobuf; TensorFlow itself stays out.
    loaded = modules_after("import confserve.serving")
    assert not loaded & {"tensorflow", "grpc", "aiohttp"}


@pytest.mark.parametrize("module", ["confserve.serving._dataplane", "confserve.serving._savedmodel"])
def test_serving_core_imports_no_transport(module: str) -> None:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = set(result.stdout.split())
    assert not {"grpc", "aiohttp", "confserve.frontends"} & loaded


def test_lazy_exports_resolve() -> None:
    from confserve import serving

    assert serving.DataPlane.__name__ == "DataPlane"
    with pytest.raises(AttributeError):
        _ = serving.NoSuchThing  # type: ignore[attr-defined]
