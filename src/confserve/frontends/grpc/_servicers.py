"""TF Serving's PredictionService and ModelService: convert nothing (the DataPlane takes the protos),
call the DataPlane, map errors. Any logic beyond that belongs in the DataPlane."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from confserve.errors import ConfserveError
from confserve.frontends.grpc._status import GRPC_CODES
from confserve.serving import DataPlane, log_unexpected

__all__ = ["ModelServicer", "PredictionServicer"]

_log = logging.getLogger(__name__)


def _abort(context: Any, error: BaseException) -> NoReturn:
    if isinstance(error, ConfserveError):
        context.abort(GRPC_CODES[error.status], str(error))
    log_unexpected(_log, "gRPC request", error)
    context.abort(grpc.StatusCode.INTERNAL, "internal error")
    raise AssertionError("unreachable")  # pragma: no cover  (context.abort raises)


def _forward(name: str) -> Callable[[Any, Any, Any], Any]:
    """A servicer method that hands the request to the DataPlane's `name` and maps its errors."""

    def method(self: _DataPlaneServicer, request: Any, context: Any) -> Any:
        try:
            return getattr(self._dataplane, name)(request)
        except Exception as exc:
            _abort(context, exc)

    method.__name__ = name
    return method


class _DataPlaneServicer:
    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane


class PredictionServicer(_DataPlaneServicer, prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    Predict = _forward("predict")
    Classify = _forward("classify")
    Regress = _forward("regress")
    MultiInference = _forward("multi_inference")
    GetModelMetadata = _forward("get_model_metadata")


class ModelServicer(_DataPlaneServicer, model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    """GetModelStatus, and HandleReloadConfigRequest, which the DataPlane refuses with PERMISSION_DENIED:
    the served model set is part of the attested configuration, not something a network peer may swap."""

    GetModelStatus = _forward("get_model_status")
    HandleReloadConfigRequest = _forward("reload_config")
