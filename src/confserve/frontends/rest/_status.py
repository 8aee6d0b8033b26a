"""The one table from confserve's transport-neutral `Status` to HTTP status codes.

The mapping is the canonical one documented in google/rpc/code.proto (also used by grpc-gateway), and the
one TF Serving's HTTP server uses (model_servers/http_server.cc, ToHTTPStatusCode): FAILED_PRECONDITION is
400 there too.
"""

from __future__ import annotations

from collections.abc import Mapping

from confserve.errors import Status

__all__ = ["HTTP_STATUS"]

HTTP_STATUS: Mapping[Status, int] = {
    Status.INVALID_ARGUMENT: 400,
    Status.FAILED_PRECONDITION: 400,
    Status.UNAUTHENTICATED: 401,
    Status.PERMISSION_DENIED: 403,
    Status.NOT_FOUND: 404,
    Status.RESOURCE_EXHAUSTED: 429,
    Status.INTERNAL: 500,
    Status.UNAVAILABLE: 503,
    Status.UNIMPLEMENTED: 501,
    Status.DEADLINE_EXCEEDED: 504,
}
