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


class ServingError(ConfserveError, status=Status.INTERNAL):
    """Root of the serving package's errors."""

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(ServingError, status=Status.INVALID_ARGUMENT):
    """A ModelServerConfig (or part of it) is malformed or unsupported."""


class NotFoundError(ServingError, status=Status.NOT_FOUND):
    """Unknown model, version or signature."""


class InvalidInputError(ServingError, status=Status.INVALID_ARGUMENT):
    """The request does not match the model's signature (alias, dtype, shape, format)."""


class ModelUnavailableError(ServingError, status=Status.FAILED_PRECONDITION):
    """The model or version is known but not in the AVAILABLE state."""


class FailedPreconditionError(ServingError, status=Status.FAILED_PRECONDITION):
    """The request names something the servable cannot do in its state (TF Serving: Predict with an
    unknown signature)."""


class UnimplementedError(ServingError, status=Status.UNIMPLEMENTED):
    """A request TF Serving's API defines but does not implement (MultiInference with a predict task)."""


class ResourceExhaustedError(ServingError, status=Status.RESOURCE_EXHAUSTED):
    """A request exceeds a configured size limit, or the replica's capacity for requests in flight."""


class RequestTooLargeError(InvalidInputError):
    """One request needs more memory than the per-request limit allows: it will never fit, so it is an
    invalid argument rather than a reason to retry."""


class PermissionDeniedError(ServingError, status=Status.PERMISSION_DENIED):
    """The operation is disabled by the server's configuration."""


class LoadError(ServingError, status=Status.INTERNAL):
    """A model version could not be loaded. The message is safe to show in GetModelStatus."""


def log_unexpected(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log an unexpected exception by type and stack only: its message may quote tensor values (e.g. a
    TensorFlow assertion) or secrets, so it never reaches the log."""
    stack = "".join(traceback.format_tb(exc.__traceback__))
    logger.error("%s: unexpected %s\n%s", what, exc.__class__.__name__, stack.rstrip())
