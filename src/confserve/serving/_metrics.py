"""TF Serving's Prometheus metrics, in a private registry per server.

| metric (TF Serving's name, `/` -> `:`)          | labels                      | recorded                  |
|-------------------------------------------------|-----------------------------|---------------------------|
| :tensorflow:serving:request_count               | model_name, status          | per inference request     |
| :tensorflow:serving:request_latency (histogram) | model_name, API, entrypoint | microseconds, per request |

The DataPlane records both, in one place for gRPC and REST (entrypoint GRPC / REST, API Predict /
Classify / Regress / MultiInference, status OK or the canonical code name, as TF Serving's util.cc).

Why the counter is a custom collector: prometheus_client always writes counters as `<name>_total` in the
text format, while TF Serving's sample is `:tensorflow:serving:request_count` without a suffix and the
dashboards built for TF Serving query that name. So the count is exposed with TF Serving's exact sample
name (typed `untyped`; PromQL's rate() does not look at the type).

Labels carry only model names the server was configured with (an unknown name is reported as "", so a
client cannot grow the registry without bound) and fixed strings; never request data.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "DEFAULT_METRICS_PATH", "ServingMetrics"]

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's default PrometheusConfig.path
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text exposition format
_PREFIX = ":tensorflow:serving:"
# TF Serving's request_latency buckets (util.cc): microseconds, exponential from 10 by 1.8, 33 buckets.
_LATENCY_BUCKETS_MICROS = tuple(10 * 1.8**i for i in range(33))


class _RequestCount(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def inc(self, model_name: str, status: str) -> None:
        with self._lock:
            key = (model_name, status)
            self._counts[key] = self._counts.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        name = _PREFIX + "request_count"
        metric = Metric(name, "The total number of requests.", "unknown")
        with self._lock:
            counts = sorted(self._counts.items())
        for (model_name, status), value in counts:
            metric.add_sample(name, {"model_name": model_name, "status": status}, value)
        yield metric


class ServingMetrics:
    """The registry one server exposes; `record` is called once per finished inference request."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._count = _RequestCount()
        self.registry.register(self._count)
        self._latency = Histogram(
            _PREFIX + "request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            buckets=_LATENCY_BUCKETS_MICROS,
            registry=self.registry,
        )

    def record(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        self._count.inc(model_name, status)
        self._latency.labels(model_name, api, entrypoint).observe(seconds * 1e6)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
