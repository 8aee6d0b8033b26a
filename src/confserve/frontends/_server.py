"""The whole model server: one model store and DataPlane, served by gRPC and (optionally) REST.

Start-up order follows TF Serving: the configured models are polled and loaded once before the ports open,
so the first request already finds them; then a background thread keeps polling the base paths every
`file_system_poll_wait_seconds` and refreshes the gRPC health status after each poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confserve.frontends._ops import EvidenceProvider, OpsEndpoints
from confserve.frontends._tls import Plaintext, TlsConfig
from confserve.frontends.grpc import GrpcServer, GrpcSettings
from confserve.frontends.rest import RestServer, RestSettings
from confserve.serving import (
    DEFAULT_METRICS_PATH,
    DEFAULT_SAVED_MODEL_TAGS,
    DataPlane,
    DataPlaneSettings,
    FileOpener,
    Loader,
    ManagerSettings,
    ModelConfig,
    ModelManager,
    ModelStore,
    SavedModelLoader,
    ServingMetrics,
    WarmupLoader,
    default_memory_limits,
    log_unexpected,
    set_tensorflow_threads,
)
from confserve.serving.batching import BatchingLoader, BatchingSettings

__all__ = ["ModelServer", "ServerSettings"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    rest: RestSettings | None = field(default_factory=RestSettings)  # None: no REST port (TF Serving: 0)
    # TF Serving's --file_system_poll_wait_seconds default (1); a negative value polls only at start-up.
    file_system_poll_wait_seconds: float = 1.0
    # TF Serving's --model_config_file_poll_wait_seconds: 0 reads the model config once, at start-up.
    model_config_poll_wait_seconds: float = 0.0
    manager: ManagerSettings = field(default_factory=ManagerSettings)
    # Inference requests running at once across gRPC and REST; beyond it RESOURCE_EXHAUSTED / 429. None:
    # bounded only by the worker pools (GrpcSettings.max_workers + RestSettings.num_threads), as TF Serving.
    max_concurrent_requests: int | None = None
    # Memory requests may hold (serving/_memory.py): decoded inputs per request, and all requests in flight
    # together; beyond them INVALID_ARGUMENT / 400 and RESOURCE_EXHAUSTED / 429. 0: the default derived
    # from the replica's memory and the message size (`default_memory_limits`; docs/deployment.md).
    max_request_memory_bytes: int = 0
    max_inflight_memory_bytes: int = 0
    # How long SIGTERM waits for in-flight requests before closing the ports. Kubernetes' default
    # terminationGracePeriodSeconds is 30, so a few seconds leaves room for the rest of the shutdown.
    shutdown_grace_seconds: float = 5.0
    # TF Serving's --tensorflow_{intra,inter}_op_parallelism; 0 lets TensorFlow choose (its default).
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    # Path of the Prometheus metrics on the REST port (TF Serving's PrometheusConfig); None: no metrics.
    metrics_path: str | None = None
    # TF Serving's --enable_model_warmup: replay assets.extra/tf_serving_warmup_requests before serving.
    enable_model_warmup: bool = False
    # TF Serving's --enable_batching with --batching_parameters_file; None: every request runs alone.
    batching: BatchingSettings | None = None
    # TF Serving's --saved_model_tags: the MetaGraphDef served from each SavedModel.
    saved_model_tags: tuple[str, ...] = DEFAULT_SAVED_MODEL_TAGS
    # TF Serving's --enable_signature_method_name_check (off: TF2 exports label every signature "predict").
    enable_signature_method_name_check: bool = False
    # TF Serving's --enable_serialization_as_tensor_content: Predict outputs in tensor_content.
    serialize_outputs_as_tensor_content: bool = False


class ModelServer:
    """Owns the store, its polling thread and both front ends."""

    dataplane: DataPlane

    def __init__(
        self,
        models: Sequence[ModelConfig],
        opener: FileOpener,
        tls: TlsConfig | Plaintext,
        settings: ServerSettings | None = None,
        *,
        evidence: EvidenceProvider | None = None,
        loader: Loader[Any] | None = None,
        config_source: Callable[[], Sequence[ModelConfig]] | None = None,
    ) -> None:
        self.settings = settings or ServerSettings()
        set_tensorflow_threads(
            self.settings.tensorflow_intra_op_parallelism, self.settings.tensorflow_inter_op_parallelism
        )
        loader = loader or SavedModelLoader(
            opener,
            tags=self.settings.saved_model_tags,
            intra_op_parallelism=self.settings.tensorflow_intra_op_parallelism,
            inter_op_parallelism=self.settings.tensorflow_inter_op_parallelism,
        )
        batching = self.settings.batching
        if batching is not None:
            # Adaptive closing: a batch runs at once when every request in flight has joined one.
            in_flight = (lambda: self.dataplane.admission.in_flight) if batching.adaptive else None
            loader = BatchingLoader(loader, batching, in_flight=in_flight)
        if self.settings.enable_model_warmup:
            loader = WarmupLoader(loader, opener)
        manager: ModelManager[Any] = ModelManager(loader, settings=self.settings.manager)
        self.store = ModelStore(models, opener, manager)
        self.metrics = None if self.settings.metrics_path is None else ServingMetrics()
        self.memory_limits = default_memory_limits(
            self.settings.grpc.max_message_bytes,
            per_request_bytes=self.settings.max_request_memory_bytes,
            in_flight_bytes=self.settings.max_inflight_memory_bytes,
        )
        dataplane_settings = DataPlaneSettings(
            max_concurrent_requests=self.settings.max_concurrent_requests,
            memory_limits=self.memory_limits,
            method_name_check=self.settings.enable_signature_method_name_check,
            output_tensor_content=self.settings.serialize_outputs_as_tensor_content,
        )
        self.dataplane = DataPlane(manager, dataplane_settings, metrics=self.metrics)
        self.ops = OpsEndpoints(
            self.dataplane,
            evidence,
            metrics=self.metrics,
            metrics_path=self.settings.metrics_path or DEFAULT_METRICS_PATH,
        )
        self.grpc = GrpcServer(
            self.dataplane,
            tls,
            self.settings.grpc,
            evidence=self.ops.evidence_json,
        )
        self.rest = (
            None
            if self.settings.rest is None
            else RestServer(self.dataplane, tls, self.settings.rest, ops=self.ops)
        )
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        # --model_config_file_poll_wait_seconds: re-read the model config (None: read once, at start-up).
        self._config_source = config_source
        self._config_poller: threading.Thread | None = None
        self._models = tuple(models)

    def start(self) -> None:
        self.store.poll_once()
        self.grpc.refresh_health()
        self.grpc.start()
        if self.rest is not None:
            self.rest.start()
        if self.settings.file_system_poll_wait_seconds >= 0:
            self._poller = threading.Thread(target=self._poll_forever, name="model-poller", daemon=True)
            self._poller.start()
        if self._config_source is not None and self.settings.model_config_poll_wait_seconds > 0:
            self._config_poller = threading.Thread(
                target=self._watch_config, name="config-poller", daemon=True
            )
            self._config_poller.start()

    def _watch_config(self) -> None:
        assert self._config_source is not None
        current = self._models
        while not self._stop.wait(self.settings.model_config_poll_wait_seconds):
            try:
                models = tuple(self._config_source())
            except Exception as exc:  # a bad new config keeps the old one serving
                log_unexpected(_log, "model config reload", exc)
                continue
            if models != current:
                _log.info("model config changed: now serving %s", ", ".join(m.name for m in models))
                self.store.set_models(models)
                current = models

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.settings.file_system_poll_wait_seconds):
            try:
                self.store.poll_once()
            except Exception as exc:
                log_unexpected(_log, "model store poll", exc)
            self.grpc.refresh_health()

    def stop(self, grace_seconds: float | None = None) -> None:
        """Drain: both front ends refuse new requests at once, in-flight ones get up to `grace_seconds`
        (default `settings.shutdown_grace_seconds`) to finish, then the ports close."""
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        grpc_done = self.grpc.begin_stop(grace)
        self._stop.set()
        if self.rest is not None:
            self.rest.stop(grace)
        if self._poller is not None:
            self._poller.join()
        grpc_done.wait()
        self.grpc.stop(0)
