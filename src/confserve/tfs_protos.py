"""TF Serving's generated protos, without starting the TensorFlow runtime.

Theory of operation. The `tensorflow-serving-api` package's modules (`predict_pb2`, ...) import the
TensorFlow protos they build on (`TensorProto`, `SignatureDef`, `Example`) from the `tensorflow` wheel,
as `from tensorflow.core.framework import tensor_pb2`. Those proto modules are plain generated Python,
but two rules of Python's import system would run `tensorflow/__init__.py` (the whole runtime: seconds
of start-up, C++ log lines on stderr) on the way:

1. a dotted module is imported after its parent package, so `tensorflow.core` needs `tensorflow`;
2. `from package import module`, when `module` is not yet an attribute of `package`, imports it with
   the `__import__` builtin, which also imports the top-level package of the name.

This module sidesteps both without faking anything. (1) Python only requires the *immediate* parent of
a module to be loaded, so the `tensorflow.<name>` sub-packages the protos live in (`core`, `compiler`;
empty `__init__.py` files) are imported by their full names straight from the installed wheel with the
standard path finder. (2) Before a proto module runs, the proto modules its `from ... import ...` lines
name are loaded first (read from its source), depth first, with `importlib.import_module`, which imports
only what it is asked; once loaded, a module is an attribute of its package and the `from` line finds
it without `__import__` doing any more work. No module object stands in for `tensorflow`, so a later
`import tensorflow` (a model server loading a model) runs TensorFlow's own `__init__.py`, which finds
the same proto modules already loaded: one descriptor pool and one class per message, shared. When
TensorFlow is already loaded, plain imports are used. See docs/client.md ("TensorFlow-free client").

Use: `from confserve.tfs_protos import predict_pb2`. A module is imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ below imports each on first use
    from tensorflow.core.example import example_pb2, feature_pb2
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        input_pb2,
        model_management_pb2,
        model_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_log_pb2,
        prediction_service_pb2_grpc,
        regression_pb2,
    )
    from tensorflow_serving.config import model_server_config_pb2

__all__ = [
    "classification_pb2",
    "example_pb2",
    "feature_pb2",
    "get_model_metadata_pb2",
    "get_model_status_pb2",
    "inference_pb2",
    "input_pb2",
    "meta_graph_pb2",
    "model_management_pb2",
    "model_pb2",
    "model_server_config_pb2",
    "model_service_pb2_grpc",
    "predict_pb2",
    "prediction_log_pb2",
    "prediction_service_pb2_grpc",
    "regression_pb2",
    "saved_model_pb2",
    "tensor_pb2",
    "tensor_shape_pb2",
    "types_pb2",
]

_MODULES: Final[dict[str, str]] = {
    "types_pb2": "tensorflow.core.framework.types_pb2",
    "tensor_pb2": "tensorflow.core.framework.tensor_pb2",
    "tensor_shape_pb2": "tensorflow.core.framework.tensor_shape_pb2",
    "example_pb2": "tensorflow.core.example.example_pb2",
    "feature_pb2": "tensorflow.core.example.feature_pb2",
    "meta_graph_pb2": "tensorflow.core.protobuf.meta_graph_pb2",
    "saved_model_pb2": "tensorflow.core.protobuf.saved_model_pb2",
    "classification_pb2": "tensorflow_serving.apis.classification_pb2",
    "get_model_metadata_pb2": "tensorflow_serving.apis.get_model_metadata_pb2",
    "get_model_status_pb2": "tensorflow_serving.apis.get_model_status_pb2",
    "inference_pb2": "tensorflow_serving.apis.inference_pb2",
    "input_pb2": "tensorflow_serving.apis.input_pb2",
    "model_management_pb2": "tensorflow_serving.apis.model_management_pb2",
    "model_pb2": "tensorflow_serving.apis.model_pb2",
    "predict_pb2": "tensorflow_serving.apis.predict_pb2",
    "prediction_log_pb2": "tensorflow_serving.apis.prediction_log_pb2",
    "regression_pb2": "tensorflow_serving.apis.regression_pb2",
    "model_service_pb2_grpc": "tensorflow_serving.apis.model_service_pb2_grpc",
    "prediction_service_pb2_grpc": "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "model_server_config_pb2": "tensorflow_serving.config.model_server_config_pb2",
}

_TOP = "tensorflow"  # the package whose __init__.py must not run (a test points it at a fake one)
# `from tensorflow.core.framework import tensor_pb2 as ...`: how a generated module imports another.
_FROM_IMPORT: Final = re.compile(r"^from\s+([\w.]+)\s+import\s+(\w+)", re.MULTILINE)

_lock = threading.Lock()


def _register_tensorflow_package(name: str) -> None:
    """Import `tensorflow.<x>` (a package whose `__init__.py` is empty) without importing `tensorflow`."""
    top = importlib.util.find_spec(_TOP)  # a top-level lookup runs no package code
    locations = top.submodule_search_locations if top is not None else None
    spec = importlib.machinery.PathFinder.find_spec(name, list(locations)) if locations else None
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(
            f"TF Serving's protos need the installed '{_TOP}' package's {name} (its generated proto "
            "modules are used; its runtime is not loaded)"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _import_proto(name: str) -> ModuleType:
    """Import generated module `name`, having first imported the proto modules it imports."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    if _TOP not in sys.modules:
        parts = name.split(".")
        package = ".".join(parts[:2])
        if parts[0] == _TOP and len(parts) > 2 and package not in sys.modules:
            _register_tensorflow_package(package)
        # Parents first, with import_module: importlib.util.find_spec would import a missing parent
        # with __import__, which imports the top-level package as well (rule 2 above).
        importlib.import_module(name.rpartition(".")[0])
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as source:
                for match in _FROM_IMPORT.finditer(source.read()):
                    if match[1].startswith(_TOP):  # tensorflow.* and tensorflow_serving.*
                        _import_proto(f"{match[1]}.{match[2]}")
    return importlib.import_module(name)


def _load(name: str) -> ModuleType:
    with _lock:
        return _import_proto(name)


def __getattr__(name: str) -> Any:
    path = _MODULES.get(name)
    if path is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _load(path)
    globals()[name] = module  # later lookups are plain attribute reads
    return module
