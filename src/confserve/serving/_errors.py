"""Errors of the model store and DataPlane, each carrying a transport-neutral `Status`.

Messages go to the peer as they are: they name models, versions, signatures and tensor aliases, never
tensor values or model bytes. Where TF Serving has a fixed message for the same condition we use its text.
"""

from __future__ import annotations

import logging
import traceback

from confserve.errors import ConfserveError, Status

__all__ = [
    "ConfigError",
    "FailedPreconditionError",
    "InvalidInputError",
    "LoadError",
    "ModelUnavailableError",
    "NotFoundError",
    "PermissionDeniedError",
    "RequestTooLargeError",
    "ResourceExhaustedError",
    "ServingError",
    "UnimplementedError",
    "log_unexpected",
]


class ServingError(ConfserveError):
    """Root of the serving package's errors."""

    status = Status.INTERNAL

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(ServingError):
    """A ModelServerConfig (or part of it) is malformed or unsupported."""

    status = Status.INVALID_ARGUMENT


class NotFoundError(ServingError):
    """Unknown model, version or signature."""

    status = Status.NOT_FOUND


class InvalidInputError(ServingError):
    """The request does not match the model's signature (alias, dtype, shape, format)."""

    status = Status.INVALID_ARGUMENT


class ModelUnavailableError(ServingError):
    """The model or version is known but not in the AVAILABLE state."""

    status = Status.FAILED_PRECONDITION


class FailedPreconditionError(ServingError):
    """The request names something the servable cannot do in its state (TF Serving: Predict with an
    unknown signature)."""

    status = Status.FAILED_PRECONDITION


class UnimplementedError(ServingError):
    """A request TF Serving's API defines but does not implement (MultiInference with a predict task)."""

    status = Status.UNIMPLEMENTED


class ResourceExhaustedError(ServingError):
    """A request exceeds a configured size limit, or the replica's capacity for requests in flight."""

    status = Status.RESOURCE_EXHAUSTED


class RequestTooLargeError(InvalidInputError):
    """One request needs more memory than the per-request limit allows: it will never fit, so it is an
    invalid argument rather than a reason to retry."""


class PermissionDeniedError(ServingError):
    """The operation is disabled by the server's configuration."""

    status = Status.PERMISSION_DENIED


class LoadError(ServingError):
    """A model version could not be loaded. The message is safe to show in GetModelStatus."""

    status = Status.INTERNAL


def log_unexpected(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log an unexpected exception by type and stack only: its message may quote tensor values (e.g. a
    TensorFlow assertion) or secrets, so it never reaches the log."""
    stack = "".join(traceback.format_tb(exc.__traceback__))
    logger.error("%s: unexpected %s\n%s", what, exc.__class__.__name__, stack.rstrip())
