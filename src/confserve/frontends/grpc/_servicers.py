"""TF Serving's PredictionService and ModelService: convert nothing (the DataPlane takes the protos),
call the DataPlane, map errors. Any logic beyond that belongs in the DataPlane."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from confserve.errors import ConfserveError
from confserve.frontends.grpc._status import GRPC_CODES
from confserve.serving import DataPlane, log_unexpected

__all__ = ["ModelServicer", "PredictionServicer"]

_log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _abort(context: Any, error: BaseException) -> NoReturn:
    if isinstance(error, ConfserveError):
        context.abort(GRPC_CODES[error.status], str(error))
    log_unexpected(_log, "gRPC request", error)
    context.abort(grpc.StatusCode.INTERNAL, "internal error")
    raise AssertionError("unreachable")  # pragma: no cover  (context.abort raises)


def _call(method: Callable[[Req], Resp], request: Req, context: Any) -> Resp:
    try:
        return method(request)
    except Exception as exc:
        _abort(context, exc)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    def Predict(self, request: Any, context: Any) -> Any:
        return _call(self._dataplane.predict, request, context)

    def Classify(self, request: Any, context: Any) -> Any:
        return _call(self._dataplane.classify, request, context)

    def Regress(self, request: Any, context: Any) -> Any:
        return _call(self._dataplane.regress, request, context)

    def MultiInference(self, request: Any, context: Any) -> Any:
        return _call(self._dataplane.multi_inference, request, context)

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        return _call(self._dataplane.get_model_metadata, request, context)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    """GetModelStatus, and HandleReloadConfigRequest, which the DataPlane refuses with PERMISSION_DENIED:
    the served model set is part of the attested configuration, not something a network peer may swap."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    def GetModelStatus(self, request: Any, context: Any) -> Any:
        return _call(self._dataplane.get_model_status, request, context)

    def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:
        return _call(self._dataplane.reload_config, request, context)
