"""TF Serving's REST API as a function: (method, path, body) -> (HTTP status, JSON body). No I/O.

The HTTP server only moves bytes in and out of `RestApi.handle`; this module converts JSON to the same
request protos the gRPC front end receives, calls the shared DataPlane, and maps errors with the one
Status -> HTTP table. Errors are returned as {"error": "..."} like TF Serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    regression_pb2,
)

from confserve.errors import ConfserveError
from confserve.frontends.rest._json import (
    classify_response_json,
    dumps,
    examples_input,
    loads,
    predict_inputs_from_json,
    predict_outputs_json,
    proto_json,
    regress_response_json,
)
from confserve.frontends.rest._routes import Route, parse_route
from confserve.frontends.rest._status import HTTP_STATUS
from confserve.serving import REST, DataPlane, InvalidInputError, RequestMemory, log_unexpected

__all__ = ["RestApi", "RestResponse"]

_log = logging.getLogger(__name__)
_MAX_PATH_IN_ERROR = 200


@dataclass(frozen=True)
class RestResponse:
    status: int
    body: bytes
    content_type: str = "application/json"


def error_response(status: int, message: str) -> RestResponse:
    return RestResponse(status, dumps({"error": message}))


class ExtraEndpoints(Protocol):
    """Endpoints served beside TF Serving's (confserve's /v1/confserve/...): None means "not mine"."""

    def handle(self, method: str, path: str, body: bytes) -> RestResponse | None: ...


class RestApi:
    """TF Serving's REST API; `ops` (confserve's /v1/confserve/ endpoints) is asked first when given."""

    def __init__(self, dataplane: DataPlane, ops: ExtraEndpoints | None = None) -> None:
        self._dataplane = dataplane
        self._ops = ops

    def handle(
        self, method: str, path: str, body: bytes, memory: RequestMemory | None = None
    ) -> RestResponse:
        """The answer to one request; `memory` is the request's account (already charged for the body),
        charged further for what parsing builds and then for the decoded tensors."""
        if self._ops is not None and (own := self._ops.handle(method, path, body)) is not None:
            return own
        try:
            route = parse_route(method, path)
            if route is None:
                raise InvalidInputError(f"Malformed request: {method} {path[:_MAX_PATH_IN_ERROR]}")
            return RestResponse(200, dumps(self._dispatch(route, body, memory)))
        except ConfserveError as exc:
            return error_response(HTTP_STATUS[exc.status], str(exc))
        except Exception as exc:
            log_unexpected(_log, "REST request", exc)
            return error_response(500, "internal error")

    def _dispatch(self, route: Route, body: bytes, memory: RequestMemory | None) -> dict[str, Any]:
        if route.verb == "status":
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.CopyFrom(_spec(route))
            return proto_json(self._dataplane.get_model_status(request))
        if route.verb == "metadata":
            return self._metadata(route)
        payload = loads(body, memory, arrays=route.verb == "predict")
        signature_name = payload.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise InvalidInputError("'signature_name' key must be a string value.")  # TF Serving's text
        spec = _spec(route, signature_name)
        if route.verb == "predict":
            booleans = b"true" in body or b"false" in body  # else no JSON boolean to look for
            return self._predict(spec, payload, memory, booleans)
        if route.verb == "classify":
            classify = classification_pb2.ClassificationRequest(
                model_spec=spec, input=examples_input(payload)
            )
            return classify_response_json(self._dataplane.classify(classify, entrypoint=REST, memory=memory))
        regress = regression_pb2.RegressionRequest(model_spec=spec, input=examples_input(payload))
        return regress_response_json(self._dataplane.regress(regress, entrypoint=REST, memory=memory))

    def _predict(
        self,
        spec: model_pb2.ModelSpec,
        payload: dict[str, Any],
        memory: RequestMemory | None,
        booleans: bool,
    ) -> dict[str, Any]:
        row_format = False

        def decode(signature: Any) -> dict[str, Any]:  # JSON numbers take the signature's dtypes
            nonlocal row_format
            inputs, row_format = predict_inputs_from_json(payload, signature, may_hold_booleans=booleans)
            return inputs

        # Numpy in and out: no TensorProto is built for a REST request.
        outputs = self._dataplane.predict_arrays(spec, decode, entrypoint=REST, memory=memory)
        return predict_outputs_json(outputs, row_format)

    def _metadata(self, route: Route) -> dict[str, Any]:
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.CopyFrom(_spec(route))
        request.metadata_field.append("signature_def")
        response = self._dataplane.get_model_metadata(request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {
            "model_spec": proto_json(response.model_spec),
            "metadata": {"signature_def": proto_json(signature_map)},
        }


def _spec(route: Route, signature_name: str = "") -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=route.model, signature_name=signature_name)
    if route.version is not None:
        spec.version.value = route.version
    elif route.label is not None:
        spec.version_label = route.label
    return spec
