"""confserve.tfs_protos: TF Serving's generated protos without the TensorFlow runtime, and a real
TensorFlow afterwards. Each case runs in a fresh interpreter, since what matters is what gets imported."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from confserve import tfs_protos


def run(code: str) -> dict[str, Any]:
    """Run `code` in a fresh interpreter; it leaves its findings in the dict `out`, printed as JSON."""
    program = "import json, sys\nout = {}\n" + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    findings: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return findings


def test_every_module_loads_without_the_runtime() -> None:
    out = run(
        """
        from confserve import tfs_protos
        for name in tfs_protos.__all__:
            getattr(tfs_protos, name)
        out["tensorflow"] = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.python"))
        out["request"] = tfs_protos.predict_pb2.PredictRequest.DESCRIPTOR.full_name
        out["same"] = tfs_protos.predict_pb2 is sys.modules["tensorflow_serving.apis.predict_pb2"]
        out["loaded"] = sorted(m.__name__ for m in map(tfs_protos.__getattr__, tfs_protos.__all__))
        """
    )
    assert out["tensorflow"] == []
    assert out["request"] == "tensorflow.serving.PredictRequest"
    assert out["same"] is True
    assert len(out["loaded"]) == len(tfs_protos.__all__) == 20


def test_tensorflow_loads_for_real_afterwards() -> None:
    out = run(
        """
        from confserve.tfs_protos import predict_pb2, tensor_pb2
        request = predict_pb2.PredictRequest()
        x = request.inputs["x"]
        x.dtype = 1
        x.tensor_shape.dim.add().size = 3
        x.float_val.extend([1.5, 2.5])
        out["before"] = "tensorflow.python" in sys.modules
        import tensorflow as tf
        out["after"] = "tensorflow.python" in sys.modules
        out["array"] = tf.make_ndarray(request.inputs["x"]).tolist()
        made = tf.make_tensor_proto([[1, 2], [3, 4]])
        out["one_class"] = type(made) is tensor_pb2.TensorProto
        request.inputs["y"].CopyFrom(made)
        out["y"] = tf.make_ndarray(request.inputs["y"]).tolist()
        out["sum"] = float(tf.reduce_sum(tf.constant([1.0, 2.0])))
        """
    )
    assert out["before"] is False
    assert out["after"] is True
    assert out["array"] == [1.5, 2.5, 2.5]
    assert out["one_class"] is True
    assert out["y"] == [[1, 2], [3, 4]]
    assert out["sum"] == 3.0


def test_with_tensorflow_loaded_first_the_same_modules_are_used() -> None:
    out = run(
        """
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2 as direct
        from confserve.tfs_protos import predict_pb2
        out["same"] = predict_pb2 is direct
        out["class"] = type(tf.make_tensor_proto(1.0)).__module__
        """
    )
    assert out == {"same": True, "class": "tensorflow.core.framework.tensor_pb2"}


def test_unknown_names_and_a_missing_tensorflow_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope_pb2'"):
        _ = tfs_protos.nope_pb2  # type: ignore[attr-defined]
    monkeypatch.setattr(tfs_protos.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(ImportError, match=r"need the installed 'tensorflow' package's tensorflow.core"):
        tfs_protos._register_tensorflow_package("tensorflow.core")


FAKE_TREE = {  # a package whose __init__.py is "the runtime", and generated-style modules below it
    "fakeflow/__init__.py": "raise RuntimeError('the runtime must not load')\n",
    "fakeflow/core/__init__.py": "",
    "fakeflow/core/framework/__init__.py": "",
    "fakeflow/core/framework/b_pb2.py": "VALUE = 'b'\n",
    "fakeflow/core/framework/a_pb2.py": "from fakeflow.core.framework import b_pb2 as b\nVALUE = 'a' + b.VALUE\n",
    "fakeflow/core/framework/d_pb2.py": (
        "from fakeflow.compiler.xla import c_pb2 as c\nfrom fakeflow.compiler.xla.c_pb2 import *\nVALUE = c.VALUE\n"
    ),
    "fakeflow/compiler/__init__.py": "",
    "fakeflow/compiler/xla/__init__.py": "",
    "fakeflow/compiler/xla/c_pb2.py": "VALUE = 'c'\n",
    "fakeflow_serving/__init__.py": "",
    "fakeflow_serving/apis/__init__.py": "",
    "fakeflow_serving/apis/p_pb2.py": (
        "from google.protobuf import descriptor as _descriptor\n"
        "from fakeflow.core.framework import a_pb2 as a\n"
        "from fakeflow.core.framework import d_pb2 as d\n"
        "VALUE = a.VALUE + d.VALUE\n"
    ),
}


def _forget_fake() -> None:
    for name in [m for m in sys.modules if m.startswith("fakeflow")]:
        del sys.modules[name]


def test_the_loading_order_keeps_the_top_package_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for relative, text in FAKE_TREE.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        with pytest.raises(RuntimeError, match="the runtime must not load"):  # what a plain import does
            importlib.import_module("fakeflow_serving.apis.p_pb2")
        _forget_fake()
        monkeypatch.setattr(tfs_protos, "_TOP", "fakeflow")
        module = tfs_protos._import_proto("fakeflow_serving.apis.p_pb2")
        assert module.VALUE == "abc"
        assert "fakeflow" not in sys.modules
        assert {"fakeflow.core", "fakeflow.compiler", "fakeflow.compiler.xla.c_pb2"} <= set(sys.modules)
        assert tfs_protos._import_proto("fakeflow_serving.apis.p_pb2") is module
    finally:
        _forget_fake()
