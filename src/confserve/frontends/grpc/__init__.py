"""TF Serving's gRPC API (PredictionService, ModelService) over the shared DataPlane."""

from confserve.frontends.grpc._server import GrpcServer, GrpcSettings, parse_channel_arguments
from confserve.frontends.grpc._servicers import ModelServicer, PredictionServicer
from confserve.frontends.grpc._status import GRPC_CODES

__all__ = [
    "GRPC_CODES",
    "GrpcServer",
    "GrpcSettings",
    "ModelServicer",
    "PredictionServicer",
    "parse_channel_arguments",
]
