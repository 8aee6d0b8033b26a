from __future__ import annotations

import pytest

from confserve.errors import Status
from confserve.frontends.rest import HTTP_STATUS, Route, parse_route
from confserve.serving import InvalidInputError


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v1/models/clf", Route("status", "clf")),
        ("get", "/V1/Models/clf/versions/3", Route("status", "clf", version=3)),
        ("GET", "/v1/models/clf/labels/stable", Route("status", "clf", label="stable")),
        ("GET", "/v1/models/clf/metadata", Route("metadata", "clf")),
        ("GET", "/v1/models/clf/versions/2/metadata", Route("metadata", "clf", version=2)),
        ("POST", "/v1/models/clf:predict", Route("predict", "clf")),
        ("POST", "/v1/models/clf/versions/1:classify", Route("classify", "clf", version=1)),
        ("POST", "/v1/models/clf/labels/canary:REGRESS", Route("regress", "clf", label="canary")),
        ("GET", "/v1/models/clf:predict", None),
        ("POST", "/v1/models/clf", None),
        ("POST", "/v1/models/clf:explain", None),
        ("POST", "/v1/models/clf/versions/x:predict", None),
        ("GET", "/v2/models/clf", None),
        ("DELETE", "/v1/models/clf", None),
        ("GET", "/v1/models/a/b", None),
    ],
)
def test_parse_route(method: str, path: str, expected: Route | None) -> None:
    assert parse_route(method, path) == expected


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [  # http_rest_api_handler_test.cc UnsupportedApiCalls
        ("GET", "/v1/models", "Missing model name in request."),
        ("POST", "/v1/models/clf/versions/99999999999999999999:predict", "Failed to convert version"),
    ],
)
def test_parse_route_errors(method: str, path: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_route(method, path)


def test_http_table_covers_every_status() -> None:
    assert set(HTTP_STATUS) == set(Status)
    assert HTTP_STATUS[Status.NOT_FOUND] == 404
    assert HTTP_STATUS[Status.INVALID_ARGUMENT] == 400
