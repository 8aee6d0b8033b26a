"""TF Serving's REST API over the shared DataPlane."""

from confserve.frontends.rest._api import RestApi, RestResponse, error_response
from confserve.frontends.rest._routes import Route, parse_route
from confserve.frontends.rest._server import RestServer, RestSettings, server_ssl_context
from confserve.frontends.rest._status import HTTP_STATUS

__all__ = [
    "HTTP_STATUS",
    "RestApi",
    "RestResponse",
    "RestServer",
    "RestSettings",
    "Route",
    "error_response",
    "parse_route",
    "server_ssl_context",
]
