"""The view's health of the key service and nginx, and what supervision did, from `status` entries."""

from __future__ import annotations

import time
from typing import Any

import pytest

from confserve.cluster import _monitor
from confserve.cluster._dashboard import ClusterScrape, Dashboard, ReplicaScrape, Restarts, render_text


def scrape(**overrides: Any) -> ClusterScrape:
    values: dict[str, Any] = {
        "at_seconds": 1.0,
        "clock": "12:00:00",
        "model": "digits",
        "replicas": [],
        "key_service_alive": True,
        "key_service_metrics": None,
        "key_service_problem": "",
        "balancer_alive": True,
        "balancer_connections": 3,
    }
    values.update(overrides)
    return ClusterScrape(**values)


def header(**overrides: Any) -> str:
    return render_text(Dashboard().update(scrape(**overrides))).splitlines()[0]


def test_restarts_describe_themselves() -> None:
    assert Restarts().describe() == ""
    assert Restarts(2, "18:24:44", "exited").describe() == "restarted 2x, last 18:24:44 (exited)"
    assert (
        Restarts(1, "18:24:44", "exited", 4.2).describe()
        == "restarted 1x, last 18:24:44 (exited); restart in 4 s"
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"key_service_condition": "ready"}, "key service ok: metrics unavailable"),
        (
            {"key_service_condition": "dead", "key_service_alive": False, "key_service_reason": "exited",
             "key_service_restarts": Restarts(1, "12:00:00", "exited", 2.0)},
            "key service DOWN (exited); restarted 1x, last 12:00:00 (exited); restart in 2 s",
        ),
        (
            {"key_service_condition": "not ready", "key_service_reason": "not answering: its process is stopped"},
            "key service not ready (not answering: its process is stopped): metrics unavailable",
        ),
        ({"key_service_condition": "starting"}, "key service starting: metrics unavailable"),
    ],
)  # fmt: skip
def test_key_service_health(overrides: dict[str, Any], expected: str) -> None:
    assert f"| {expected} |" in header(**overrides)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"balancer_condition": "ready"}, "nginx ok: 3 connections"),
        (
            {"balancer_condition": "ready", "balancer_reason": "its master process is stopped (SIGSTOP)"},
            "nginx ok: 3 connections (its master process is stopped (SIGSTOP))",
        ),
        (
            {"balancer_condition": "dead", "balancer_alive": False, "balancer_reason": "exited",
             "balancer_restarts": Restarts(3, "11:00:00", "exited")},
            "nginx DOWN (exited); restarted 3x, last 11:00:00 (exited)",
        ),
    ],
)  # fmt: skip
def test_nginx_health(overrides: dict[str, Any], expected: str) -> None:
    assert header(**overrides).endswith(f"| {expected}")


def test_replica_restarts_and_the_supervisor_in_the_view() -> None:
    replicas = [
        ReplicaScrape(0, "dead", "exited", restarts=Restarts(4, "12:00:00", "exited", 8.0)),
        ReplicaScrape(1, "starting", "", restarts=Restarts(1, "11:59:59", "hung for 6 s")),
    ]
    view = Dashboard().update(scrape(replicas=replicas, supervisor="supervisor (detached), pid 7"))
    assert view.replicas[0].reason == "exited; restart in 8 s"
    lines = render_text(view).splitlines()
    assert lines[1].endswith(", restarted 4x, last 12:00:00 (exited) (exited; restart in 8 s)")
    assert lines[2].endswith(", restarted 1x, last 11:59:59 (hung for 6 s)")
    assert lines[-1] == "  supervisor: supervisor (detached), pid 7"


def test_monitor_reads_restarts_from_status_entries() -> None:
    entry = {
        "restarts": 2,
        "last_restart": "2026-01-02T03:04:05Z",
        "last_restart_reason": "exited",
        "restart_in_seconds": 1.5,
        "restart_reason": "exited again",
    }
    restarts = _monitor.restarts(entry)
    expected_clock = time.strftime("%H:%M:%S", time.localtime(1767323045))
    assert restarts == Restarts(2, expected_clock, "exited", 1.5, "exited again")
    assert _monitor.restarts({}) == Restarts()
    assert _monitor._supervisor_text(None).startswith("none: nothing restarts")
    assert _monitor._supervisor_text({"alive": False, "pid": 1, "mode": "x"}).startswith("none")
    assert _monitor._supervisor_text({"alive": True, "pid": 9, "mode": "supervisor (detached)"}) == (
        "supervisor (detached), pid 9: restarts failed components"
    )
