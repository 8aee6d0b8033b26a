"""A TF Serving client (gRPC or REST, one-way or mutual TLS) and its input and output helpers."""

from confserve.client._errors import ClientError, RemoteError
from confserve.client._predict import PredictClient, Signature, TensorSpec
from confserve.client._tls import ClientTls

__all__ = ["ClientError", "ClientTls", "PredictClient", "RemoteError", "Signature", "TensorSpec"]
