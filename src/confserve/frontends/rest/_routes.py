"""TF Serving's REST paths (http_rest_api_handler.cc), parsed without any HTTP library."""

from __future__ import annotations

import re
from dataclasses import dataclass

from confserve.serving import InvalidInputError

__all__ = ["Route", "parse_route"]

# The two regular expressions of http_rest_api_handler.cc, case-insensitive like the original.
_PREDICTION = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_MAX_VERSION = (1 << 63) - 1


@dataclass(frozen=True)
class Route:
    """`verb` is predict, classify, regress, status or metadata."""

    verb: str
    model: str
    version: int | None = None
    label: str | None = None


def parse_route(method: str, path: str) -> Route | None:
    """The API call a request names, or None if it names none (TF Serving: 'Malformed request').

    As TF Serving's handler: a status request without a model name, and a version number that does not
    fit 64 bits, are INVALID_ARGUMENT with their own texts."""
    method = method.upper()
    if method == "POST" and (match := _PREDICTION.fullmatch(path)):
        model, version, label, verb = match.groups()
        return _route(verb.lower(), model, version, label)
    if method == "GET" and (match := _STATUS.fullmatch(path)):
        model, version, label, metadata = match.groups()
        if not model:
            raise InvalidInputError("Missing model name in request.")
        return _route("metadata" if metadata else "status", model, version, label)
    return None


def _route(verb: str, model: str, version: str | None, label: str | None) -> Route | None:
    number = None if version is None else int(version)
    if number is not None and number > _MAX_VERSION:
        raise InvalidInputError(f"Failed to convert version: {version} to numeric.")
    return Route(verb=verb, model=model, version=number, label=label)
