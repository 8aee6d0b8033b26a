"""Client errors: one class, with a message that says what to fix."""

from __future__ import annotations

from confserve.errors import ConfserveError, Status

__all__ = ["ClientError", "RemoteError"]


class ClientError(ConfserveError):
    """The client could not do what was asked (bad input, unreadable bundle, connection failure)."""

    status = Status.INVALID_ARGUMENT


class RemoteError(ClientError):
    """The server answered with an error (gRPC status or HTTP error body)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"server error {code}: {message}")
        self.code = code
        self.remote_message = message
