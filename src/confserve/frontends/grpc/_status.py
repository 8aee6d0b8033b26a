"""The one table from confserve's transport-neutral `Status` to gRPC status codes."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from confserve.errors import Status

__all__ = ["GRPC_CODES"]

GRPC_CODES: Mapping[Status, grpc.StatusCode] = {
    Status.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Status.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Status.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Status.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Status.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Status.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Status.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Status.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Status.INTERNAL: grpc.StatusCode.INTERNAL,
}
