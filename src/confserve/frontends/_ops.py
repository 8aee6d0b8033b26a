"""confserve's own endpoints beside TF Serving's API: liveness, readiness and attestation evidence.

| transport | request                               | answer                                             |
|-----------|---------------------------------------|----------------------------------------------------|
| REST      | GET  /v1/confserve/health             | 200 while the process serves (liveness)            |
| REST      | GET  /v1/confserve/ready              | 200 once every configured model is AVAILABLE, 503  |
| REST      | POST /v1/confserve/evidence {"nonce"} | evidence JSON (docs/attestation.md)                |
| gRPC      | /confserve.Attestation/GetEvidence    | the same JSON bytes in, the same JSON bytes out    |
| gRPC      | grpc.health.v1.Health                 | SERVING once ready (the standard health service)   |
| REST      | GET  <monitoring path>                | Prometheus text (only with --monitoring_config_file) |

The server opens its ports only after attestation, key release and model loading (see
`confserve.replica._enclave`), so "reachable and ready" means attested, keyed and loaded. Paths under
/v1/confserve/ never collide with TF Serving's, which are all under /v1/models/.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Final

from confserve.attestation import AttestationError, parse_evidence_request
from confserve.frontends.rest import RestResponse, error_response
from confserve.serving import DEFAULT_METRICS_PATH, METRICS_CONTENT_TYPE, DataPlane, ServingMetrics

__all__ = ["EVIDENCE_GRPC_METHOD", "EvidenceProvider", "OpsEndpoints"]

_log = logging.getLogger(__name__)

EvidenceProvider = Callable[[bytes], bytes]  # nonce -> evidence JSON bytes (bound to this server's TLS key)
EVIDENCE_GRPC_SERVICE: Final = "confserve.Attestation"
EVIDENCE_GRPC_METHOD: Final = f"/{EVIDENCE_GRPC_SERVICE}/GetEvidence"
_PREFIX: Final = "/v1/confserve/"


class OpsEndpoints:
    def __init__(
        self,
        dataplane: DataPlane,
        evidence: EvidenceProvider | None = None,
        *,
        metrics: ServingMetrics | None = None,
        metrics_path: str = DEFAULT_METRICS_PATH,
    ) -> None:
        self._dataplane = dataplane
        self._evidence = evidence
        self._metrics = metrics
        self._metrics_path = metrics_path

    def evidence_json(self, request_body: bytes) -> tuple[int, bytes]:
        """(HTTP-like status, body) for an evidence request; shared by REST and gRPC."""
        if self._evidence is None:
            return 404, json.dumps(
                {"error": "this server has no attestation (not started in an enclave)"}
            ).encode()
        try:
            nonce = parse_evidence_request(request_body)
        except AttestationError as exc:
            return 400, json.dumps({"error": str(exc)}).encode()
        try:
            return 200, self._evidence(nonce)
        except AttestationError as exc:
            _log.error("cannot produce evidence: %s", exc)
            return 503, json.dumps({"error": "evidence unavailable"}).encode()

    def handle(self, method: str, path: str, body: bytes) -> RestResponse | None:
        """The response for one of our paths, or None when the path is TF Serving's."""
        if self._metrics is not None and path == self._metrics_path and method == "GET":
            return RestResponse(200, self._metrics.exposition(), content_type=METRICS_CONTENT_TYPE)
        if not path.startswith(_PREFIX):
            return None
        what = path[len(_PREFIX) :]
        if what == "health" and method == "GET":
            return RestResponse(200, b'{"status": "alive"}')
        if what == "ready" and method == "GET":
            ready = self._dataplane.is_ready()
            return RestResponse(200 if ready else 503, json.dumps({"ready": ready}).encode())
        if what == "evidence" and method == "POST":
            status, payload = self.evidence_json(body)
            return RestResponse(status, payload)
        return error_response(404, f"no confserve endpoint {method} {path[:100]}")
