"""A servable that blocks inside `run` until the test opens its gate: concurrency without sleeps."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from confserve.serving import AspiredVersions, DataPlane, DataPlaneSettings, ModelManager

GATE_TIMEOUT_SECONDS = 30.0  # only a safety net: a broken test fails instead of hanging


def signature() -> Any:
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    sig.inputs["x"].dtype = 1  # DT_FLOAT
    sig.inputs["x"].tensor_shape.unknown_rank = True
    sig.outputs["y"].dtype = 1
    sig.outputs["y"].tensor_shape.unknown_rank = True
    return sig


class GatedServable:
    """`run` echoes x as y; while the gate is closed it blocks (and `entered` is released once per call)."""

    def __init__(self, *, open_gate: bool = False) -> None:
        self.signature_defs = {"serving_default": signature()}
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.calls = 0
        self._lock = threading.Lock()

    def run(
        self, signature_name: str, inputs: Mapping[str, Any], output_keys: Sequence[str]
    ) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
        self.entered.release()
        if not self.gate.wait(GATE_TIMEOUT_SECONDS):
            raise AssertionError("gate never opened")
        return {"y": np.asarray(inputs["x"], dtype=np.float32)}

    def wait_entered(self, count: int = 1) -> None:
        for _ in range(count):
            assert self.entered.acquire(timeout=GATE_TIMEOUT_SECONDS), "request never reached the servable"


class GatedLoader:
    def __init__(self, servable: GatedServable) -> None:
        self.servable = servable

    def load(self, model: str, version: int, path: str) -> GatedServable:
        return self.servable

    def unload(self, servable: GatedServable) -> None:
        pass


def gated_dataplane(
    servable: GatedServable, *, metrics: Any = None, clock: Any = None, **settings: Any
) -> DataPlane:
    """A DataPlane serving `servable` as model "m" version 1; `settings` are DataPlaneSettings fields."""
    manager: ModelManager[GatedServable] = ModelManager(GatedLoader(servable))
    manager.set_aspired_versions(AspiredVersions("m", {1: "/m/1"}))
    manager.reconcile()
    timing = {} if clock is None else {"clock": clock}
    return DataPlane(manager, DataPlaneSettings(**settings), metrics=metrics, **timing)


def gated_model_dir(root: Path) -> Path:
    """A base path with version 1 that the file system source accepts (content is never read)."""
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "1" / "saved_model.pb").write_bytes(b"")
    return root / "m"
