"""The gRPC server: PredictionService, ModelService and the standard health service over TLS."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from confserve.frontends._tls import Plaintext, TlsConfig, server_tls
from confserve.frontends.grpc._servicers import ModelServicer, PredictionServicer
from confserve.serving import DataPlane

__all__ = ["GrpcServer", "GrpcSettings", "parse_channel_arguments"]

# Arguments confserve sets itself from its own flags; --grpc_channel_arguments may not override them.
_OWN_ARGUMENTS = frozenset(
    {"grpc.max_receive_message_length", "grpc.max_send_message_length", "grpc.so_reuseport"}
)

# The evidence RPC speaks JSON bytes (confserve.attestation._evidence), so it needs no generated code.
_EVIDENCE_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.UNIMPLEMENTED}


def _evidence_handler(evidence: Callable[[bytes], tuple[int, bytes]]) -> grpc.GenericRpcHandler:
    def get_evidence(request: bytes, context: grpc.ServicerContext) -> bytes:
        status, body = evidence(request)
        if status != 200:
            context.abort(
                _EVIDENCE_CODES.get(status, grpc.StatusCode.UNAVAILABLE), body.decode(errors="replace")
            )
        return body

    return grpc.method_handlers_generic_handler(
        "confserve.Attestation", {"GetEvidence": grpc.unary_unary_rpc_method_handler(get_evidence)}
    )


def parse_channel_arguments(text: str) -> tuple[tuple[str, str | int], ...]:
    """TF Serving's --grpc_channel_arguments: comma-separated key=value pairs, a value that is an integer
    passed as one (as TF Serving's server does). Keys confserve sets from its own flags are refused."""
    arguments: list[tuple[str, str | int]] = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item.strip()!r}")
        if key in _OWN_ARGUMENTS:
            raise ValueError(f"--grpc_channel_arguments may not set {key} (use --grpc_max_message_size)")
        try:
            arguments.append((key, int(value)))
        except ValueError:
            arguments.append((key, value))
    return tuple(arguments)


_log = logging.getLogger(__name__)
_SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


@dataclass(frozen=True)
class GrpcSettings:
    """`address` is host:port (port 0 picks a free port)."""

    address: str = "127.0.0.1:8500"  # TF Serving's default gRPC port
    # TF Serving sizes its pool by --grpc_max_threads (default 4 x cores); 16 suits a small enclave.
    max_workers: int = 16
    # TF Serving allows INT32_MAX. 64 MiB holds a batch of 64 224x224x3 float32 images (37 MiB) with room
    # to spare while bounding what one request can make the enclave allocate.
    max_message_bytes: int = 64 * 1024 * 1024
    enable_health_service: bool = True
    # TF Serving's --grpc_channel_arguments, parsed (`parse_channel_arguments`): passed to the server.
    channel_arguments: tuple[tuple[str, str | int], ...] = ()


class GrpcServer:
    """Builds and runs the gRPC server; with `PLAINTEXT` for `tls` it serves without TLS."""

    def __init__(
        self,
        dataplane: DataPlane,
        tls: TlsConfig | Plaintext,
        settings: GrpcSettings | None = None,
        *,
        evidence: Callable[[bytes], tuple[int, bytes]] | None = None,
    ) -> None:
        tls_config = server_tls(tls, "gRPC")
        self._settings = settings or GrpcSettings()
        self._dataplane = dataplane
        options: list[tuple[str, str | int]] = [
            *self._settings.channel_arguments,
            ("grpc.max_receive_message_length", self._settings.max_message_bytes),
            ("grpc.max_send_message_length", self._settings.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
        ]
        self._pool = futures.ThreadPoolExecutor(
            max_workers=self._settings.max_workers, thread_name_prefix="grpc"
        )
        self._server = grpc.server(self._pool, options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(dataplane), self._server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(dataplane), self._server)
        if evidence is not None:
            self._server.add_generic_rpc_handlers((_evidence_handler(evidence),))
        self._health: health.HealthServicer | None = None
        if self._settings.enable_health_service:
            self._health = health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if tls_config is None:
            self.port: int = self._server.add_insecure_port(self._settings.address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(tls_config.private_key_pem, tls_config.cert_chain_pem)],
                root_certificates=tls_config.client_ca_pem,
                require_client_auth=tls_config.require_client_auth,
            )
            self.port = self._server.add_secure_port(self._settings.address, credentials)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC address {self._settings.address}")
        self.refresh_health()

    def refresh_health(self) -> None:
        """Publish SERVING on the health service once every configured model has a version available."""
        if self._health is None:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self._dataplane.is_ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *_SERVICES):
            self._health.set(service, status)

    def start(self) -> None:
        self._server.start()
        _log.info("gRPC server listening on port %d", self.port)

    def begin_stop(self, grace_seconds: float | None = None) -> threading.Event:
        """Refuse new RPCs now (health turns NOT_SERVING); the event is set once in-flight RPCs have
        finished or `grace_seconds` has passed (then they are cancelled)."""
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        done: threading.Event = self._server.stop(grace_seconds)
        return done

    def stop(self, grace_seconds: float | None = None) -> None:
        self.begin_stop(grace_seconds).wait()
        self._pool.shutdown(wait=False, cancel_futures=True)
