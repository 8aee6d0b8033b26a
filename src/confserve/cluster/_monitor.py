"""The I/O half of the live view: ask every component of a local cluster what it has to say.

One `scrape` makes, per replica that runs, `GET /v1/confserve/ready` (through `LocalCluster.status`),
then its Prometheus metrics and `GET /v1/models/NAME`, over the client bundle's TLS, straight to the
replica's REST port; the key service's `/metrics` over plain HTTP on loopback; and the new lines of
nginx's access log. Nothing here decides what the answers mean (`confserve.cluster._dashboard` does):
a request that fails becomes a short reason, so a component that does not answer shows as such.
"""

from __future__ import annotations

import calendar
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from confserve.cluster._dashboard import (
    NOT_ANSWERING,
    ClusterScrape,
    ReplicaScrape,
    Restarts,
    count_upstreams,
)
from confserve.cluster._local import LocalCluster
from confserve.cluster._workspace import Workspace

__all__ = ["Monitor", "UpstreamCounter", "nginx_connections", "scrape"]

# A replica's exposition is a few kB per model (33 latency buckets per label set); 4 MiB bounds what a
# misbehaving component can make us hold, far above any real one.
_MAX_ANSWER_BYTES: Final = 4 << 20
_TIMEOUT_SECONDS: Final = 2.0  # loopback: an answer takes milliseconds, a stopped process never answers


def _access_log(ws: Workspace) -> Path:
    return ws.root / "nginx" / "nginx-access.log"


class UpstreamCounter:
    """Connections nginx passed to each upstream, read incrementally from its access log (only the
    lines added since the last read; from the start again if the log was truncated or replaced)."""

    def __init__(self, log: Path) -> None:
        self._log = log
        self._offset = 0
        self._inode = 0
        self._counts: dict[str, int] = {}

    def read(self) -> dict[str, int]:
        try:
            with self._log.open("rb") as f:
                stat = os.fstat(f.fileno())
                if stat.st_ino != self._inode or stat.st_size < self._offset:
                    self._inode, self._offset, self._counts = stat.st_ino, 0, {}
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return dict(self._counts)
        complete = data[: data.rfind(b"\n") + 1]  # a line nginx is still writing is read next time
        self._offset += len(complete)
        for upstream, n in count_upstreams(complete.decode(errors="replace")).items():
            self._counts[upstream] = self._counts.get(upstream, 0) + n
        return dict(self._counts)


def nginx_connections(ws: Workspace) -> dict[str, int]:
    """Connections nginx passed to each upstream address (from its access log)."""
    return UpstreamCounter(_access_log(ws)).read()


def _why(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(getattr(reason, "strerror", None) or getattr(reason, "reason", None) or reason)


def _get(url: str, context: ssl.SSLContext | None) -> tuple[str | None, str]:
    """(body, "") or (None, why not)."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=_TIMEOUT_SECONDS) as response:  # noqa: S310 - loopback
            body = response.read(_MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        return None, f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return None, _why(exc.reason)
    except (OSError, ValueError) as exc:  # timeouts, resets, TLS errors
        return None, _why(exc)
    if len(body) > _MAX_ANSWER_BYTES:
        return None, "answer too large"
    try:
        return body.decode("utf-8"), ""
    except UnicodeDecodeError:
        return None, "answer is not UTF-8"


class Monitor:
    """Scrapes one cluster again and again (the access log is read incrementally between scrapes)."""

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], str] = lambda: time.strftime("%H:%M:%S"),
    ) -> None:
        self._cluster = cluster
        self._clock = clock
        self._wall_clock = wall_clock
        self._upstreams = UpstreamCounter(_access_log(cluster.ws))

    def scrape(self, status: dict[str, Any] | None = None) -> ClusterScrape:
        """One scrape; `status` is `LocalCluster.status()` when the caller has just taken it."""
        status = status if status is not None else self._cluster.status()
        context = self._cluster.client_context()
        connections = self._upstreams.read()
        replicas = [self._replica(r, status["model"], context, connections) for r in status["replicas"]]
        prov = status["secret_provisioning"]
        answers = prov["alive"] and not str(prov.get("reason", "")).startswith(NOT_ANSWERING)
        key_text, key_problem = _get(prov["metrics"], None) if answers else (None, "")
        balancer = status["load_balancer"]
        supervisor = status.get("supervisor", "")
        return ClusterScrape(
            at_seconds=self._clock(),
            clock=self._wall_clock(),
            model=status["model"],
            replicas=replicas,
            key_service_alive=prov["alive"],
            key_service_metrics=key_text,
            key_service_problem=key_problem,
            balancer_alive=balancer["alive"],
            balancer_connections=sum(connections.values()),
            key_service_condition=prov.get("state"),
            key_service_reason=prov.get("reason", ""),
            key_service_restarts=restarts(prov),
            balancer_condition=balancer.get("state"),
            balancer_reason=balancer.get("reason", ""),
            balancer_restarts=restarts(balancer),
            supervisor=_supervisor_text(supervisor) if supervisor != "" else "",
        )

    @staticmethod
    def _replica(
        r: dict[str, Any], model: str, context: ssl.SSLContext, connections: dict[str, int]
    ) -> ReplicaScrape:
        conns = sum(connections.get(f"127.0.0.1:{r[port]}", 0) for port in ("grpc_port", "rest_port"))
        metrics = model_status = None
        problems = []
        if r["state"] in ("ready", "not ready") and not r["reason"].startswith(NOT_ANSWERING):  # it answers
            metrics, problem = _get(r["metrics"], context)
            if problem:
                problems.append(f"metrics: {problem}")
            model_status, problem = _get(f"https://127.0.0.1:{r['rest_port']}/v1/models/{model}", context)
            if problem and metrics is not None:  # one reason is enough when the replica is unreachable
                problems.append(f"model status: {problem}")
        return ReplicaScrape(
            index=r["index"],
            condition=r["state"],
            reason=r["reason"],
            metrics=metrics,
            model_status=model_status,
            problem="; ".join(problems),
            connections=conns,
            restarts=restarts(r),
        )


def restarts(component: dict[str, Any]) -> Restarts:
    """What supervision did to a component, from its entry in `LocalCluster.status()`."""
    last = component.get("last_restart")
    return Restarts(
        count=int(component.get("restarts", 0)),
        last_at=time.strftime("%H:%M:%S", time.localtime(_unix(last))) if last else "",
        last_reason=component.get("last_restart_reason", ""),
        restart_in_seconds=component.get("restart_in_seconds"),
        waiting_reason=component.get("restart_reason", ""),
    )


def _unix(iso: str) -> float:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def _supervisor_text(supervisor: dict[str, Any] | None) -> str:
    if supervisor is None or not supervisor.get("alive"):
        return "none: nothing restarts a failed component (confserve up repairs the cluster)"
    return f"{supervisor['mode']}, pid {supervisor['pid']}: restarts failed components"


def scrape(cluster: LocalCluster) -> ClusterScrape:
    """One scrape of `cluster` (for `confserve status` without --watch)."""
    return Monitor(cluster).scrape()
