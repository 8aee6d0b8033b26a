"""Network front ends (gRPC and REST). Each only converts formats, calls the shared DataPlane and maps
`confserve.errors.Status` to its transport's codes in exactly one table."""

from confserve.frontends._server import ModelServer, ServerSettings
from confserve.frontends._tls import PLAINTEXT, Plaintext, TlsConfig

__all__ = ["PLAINTEXT", "ModelServer", "Plaintext", "ServerSettings", "TlsConfig"]
