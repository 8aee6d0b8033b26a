"""The root of confserve's errors and the transport-neutral status codes they carry.

Standard library only: every layer may import this module. Front ends map `Status` to gRPC codes and
HTTP statuses in exactly one table each. Messages are for the peer: short, and never containing a secret,
a key or plaintext data.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["ConfserveError", "Status"]


class Status(enum.Enum):
    """Transport-neutral outcome classes (the canonical gRPC status space, by name)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


class ConfserveError(Exception):
    """Base of every error confserve raises on purpose.

    A subclass names its status in its header, `class NotFoundError(ServingError, status=Status.NOT_FOUND)`;
    one that names none keeps its parent's.
    """

    status: Status = Status.INTERNAL

    def __init_subclass__(cls, *, status: Status | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
