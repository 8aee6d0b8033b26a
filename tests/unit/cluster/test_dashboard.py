"""The live view's pure half: Prometheus text in, figures out; the table and the plain lines drawn from
them; and the plain fallback of `confserve status [--watch]` when stdout is not a terminal.

The metrics texts come from the real producers (the replica's `ServingMetrics`, the key service's
registry), so a renamed metric fails here rather than in front of an operator."""

from __future__ import annotations

import http.server
import io
import json
import math
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import trustme
from click.testing import CliRunner
from rich.console import Console

from confserve.cli import _cluster
from confserve.cluster import _local, _monitor
from confserve.cluster._dashboard import (
    ClusterScrape,
    Dashboard,
    Histogram,
    KeyServiceScrape,
    MetricsError,
    ReadyProbe,
    ReplicaScrape,
    ServingScrape,
    count_upstreams,
    histogram_quantile,
    key_service_figures,
    model_versions,
    parse_metrics,
    render_table,
    render_text,
    replica_state,
    serving_figures,
)
from confserve.cluster._local import free_port
from confserve.cluster._monitor import UpstreamCounter
from confserve.cluster._workspace import Workspace
from confserve.provisioning._server import _Metrics as KeyServiceMetrics
from confserve.serving import ServingMetrics

ESC = "\x1b"


def serving_text(ok: int = 0, failed: int = 0, seconds: float = 0.003) -> str:
    metrics = ServingMetrics()
    for _ in range(ok):
        metrics.record("digits", "Predict", "GRPC", "OK", seconds)
    for _ in range(failed):
        metrics.record("digits", "Predict", "REST", "INVALID_ARGUMENT", 0.0001)
    return metrics.exposition().decode()


def key_service_text(releases: int = 0, **refusals: int) -> str:
    metrics = KeyServiceMetrics()
    if releases:
        metrics.releases.labels("ra-tls").inc(releases)
    for reason, n in refusals.items():
        metrics.refusals.labels(reason).inc(n)
    return prometheus_client.generate_latest(metrics.registry).decode()


MODEL_STATUS = json.dumps(
    {
        "model_version_status": [
            {"version": "1", "state": "END", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }
)


# -- parsing -------------------------------------------------------------------------------------------
def test_parse_real_replica_metrics() -> None:
    scrape = ServingScrape.from_text(serving_text(ok=7, failed=2), at_seconds=5.0)
    assert (scrape.requests, scrape.errors, scrape.at_seconds) == (9, 2, 5.0)
    assert scrape.latency_micros.count == 9
    assert scrape.latency_micros.buckets[-1][0] == math.inf


def test_a_fresh_replica_has_families_without_samples() -> None:
    """Before the first request the families are declared but empty: zeros, not an error."""
    scrape = ServingScrape.from_text(serving_text(), at_seconds=0.0)
    assert (scrape.requests, scrape.errors, scrape.latency_micros.count) == (0, 0, 0)
    figures = serving_figures(None, scrape)
    assert (figures.p50_ms, figures.p99_ms, figures.requests_per_second) == (None, None, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo{", "malformed"),
        ("foo bar", "malformed"),
        ("\x00\xff", "malformed"),
        ("# TYPE other counter\nother_total 1\n", "no :tensorflow:serving:request_count"),
        (':tensorflow:serving:request_count{status="OK"} 1\n', "no :tensorflow:serving:request_latency"),
    ],
)
def test_malformed_or_missing_metrics_are_refused(text: str, message: str) -> None:
    with pytest.raises(MetricsError, match=message):
        ServingScrape.from_text(text, 0.0)


def _with_latency(count_line: str, buckets: str = "") -> str:
    return (
        "# TYPE :tensorflow:serving:request_latency histogram\n"
        + buckets
        + "# TYPE :tensorflow:serving:request_count untyped\n"
        + count_line
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_with_latency(':tensorflow:serving:request_count{status="OK"} -1\n'), "not a count"),
        (_with_latency(':tensorflow:serving:request_count{status="OK"} NaN\n'), "not a count"),
        (_with_latency(':tensorflow:serving:request_count{status="OK"} +Inf\n'), "not a count"),
        (
            _with_latency(
                "",
                ':tensorflow:serving:request_latency_bucket{le="10"} 5\n'
                ':tensorflow:serving:request_latency_bucket{le="+Inf"} 3\n',
            ),
            "not cumulative",
        ),
        (
            _with_latency("", ':tensorflow:serving:request_latency_bucket{le="10"} 5\n'),
            "without its \\+Inf bucket",
        ),
        (
            _with_latency("", ":tensorflow:serving:request_latency_bucket 5\n"),
            "without a numeric le",
        ),
        (
            _with_latency("", ':tensorflow:serving:request_latency_bucket{le="ten"} 5\n'),
            "without a numeric le",
        ),
    ],
)
def test_impossible_values_are_refused(text: str, message: str) -> None:
    with pytest.raises(MetricsError, match=message):
        ServingScrape.from_text(text, 0.0)


def test_parse_metrics_keeps_sample_names_and_labels() -> None:
    samples = parse_metrics(key_service_text(releases=2, policy=1))
    assert samples["confserve_secret_prov_releases_total"] == [({"protocol": "ra-tls"}, 2.0)]
    assert ({"reason": "policy"}, 1.0) in samples["confserve_secret_prov_refusals_total"]


def test_key_service_figures_from_its_real_registry() -> None:
    scrape = KeyServiceScrape.from_text(key_service_text(releases=3, policy=2, attestation=1))
    assert scrape.releases == 3
    assert scrape.refusals["policy"] == 2
    figures = key_service_figures(True, key_service_text(releases=3, policy=2, attestation=1))
    assert (figures.releases, figures.refusals) == (3, 3)
    assert figures.refusals_by_reason == {"attestation": 1, "policy": 2}  # reasons with none left out


@pytest.mark.parametrize(
    ("alive", "text", "problem", "expected"),
    [
        (True, "garbage{", "", "malformed metrics text"),
        (True, serving_text(ok=1), "", "no confserve_secret_prov_releases"),
        (True, None, "metrics: Connection refused", "metrics: Connection refused"),
        (False, None, "", "not running"),
    ],
)
def test_key_service_without_readable_metrics(
    alive: bool, text: str | None, problem: str, expected: str
) -> None:
    figures = key_service_figures(alive, text, problem)
    assert figures.releases is None
    assert figures.refusals is None
    assert expected in figures.problem


# -- histograms ----------------------------------------------------------------------------------------
H = Histogram(((1.0, 10.0), (2.0, 20.0), (4.0, 20.0), (math.inf, 20.0)))


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 1.0),  # rank 10: the top of the first bucket, which starts at 0
        (0.25, 0.5),  # rank 5: half way through [0, 1]
        (0.75, 1.5),  # rank 15: half way through (1, 2]
        (1.0, 2.0),  # rank 20: the first bucket that holds every observation
    ],
)
def test_histogram_quantile_interpolates_inside_the_bucket(q: float, expected: float) -> None:
    assert histogram_quantile(q, H) == pytest.approx(expected)


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile(0.5, Histogram()) is None  # no observations
    # Ranks beyond every finite bound: the largest finite bound is all that is known.
    assert histogram_quantile(0.99, Histogram(((1.0, 1.0), (math.inf, 100.0)))) == 1.0
    assert histogram_quantile(0.0, H) == 0.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        histogram_quantile(1.5, H)


def test_histogram_summed_over_label_sets() -> None:
    text = serving_text(ok=3, seconds=0.003)
    metrics = ServingMetrics()
    metrics.record("digits", "Predict", "GRPC", "OK", 0.003)
    metrics.record("digits", "Predict", "REST", "OK", 0.003)
    metrics.record("digits", "Classify", "REST", "OK", 0.003)
    assert (
        ServingScrape.from_text(text, 0).latency_micros
        == ServingScrape.from_text(metrics.exposition().decode(), 0).latency_micros
    )


# -- rates and percentiles from two scrapes ------------------------------------------------------------
def test_rate_and_window_percentiles_from_two_scrapes() -> None:
    metrics = ServingMetrics()
    for _ in range(100):
        metrics.record("digits", "Predict", "GRPC", "OK", 0.100)  # 100 ms before the window
    first = ServingScrape.from_text(metrics.exposition().decode(), at_seconds=10.0)
    for _ in range(40):
        metrics.record("digits", "Predict", "GRPC", "OK", 0.002)  # 2 ms inside it
    metrics.record("digits", "Predict", "REST", "NOT_FOUND", 0.0001)
    second = ServingScrape.from_text(metrics.exposition().decode(), at_seconds=14.0)
    figures = serving_figures(first, second)
    assert figures.requests_per_second == pytest.approx(41 / 4)
    assert (figures.requests, figures.errors, figures.restarted) == (141, 1, False)
    # Only the window's requests count: every percentile is within the bucket that holds 2 ms.
    bounds = [b for b, _ in second.latency_micros.buckets]
    low = max(b for b in bounds if b < 2000) / 1000
    high = min(b for b in bounds if b >= 2000) / 1000
    assert figures.p50_ms is not None
    assert low <= figures.p50_ms <= high
    assert figures.p99_ms is not None
    assert low <= figures.p99_ms <= high
    # From one scrape: no rate, percentiles over everything since start (mostly the 100 ms ones).
    lifetime = serving_figures(None, second)
    assert lifetime.requests_per_second is None
    assert lifetime.p50_ms is not None
    assert lifetime.p50_ms > 50


def test_counter_reset_counts_from_zero() -> None:
    """A restarted replica's counters start again: the newer totals are the increase, as rate() does."""
    before = ServingScrape.from_text(serving_text(ok=500), at_seconds=0.0)
    after = ServingScrape.from_text(serving_text(ok=6, seconds=0.050), at_seconds=2.0)
    figures = serving_figures(before, after)
    assert figures.restarted
    assert figures.requests_per_second == pytest.approx(3.0)
    assert figures.p50_ms is not None
    assert 30 < figures.p50_ms < 70


def test_a_bucket_that_went_down_is_a_reset_too() -> None:
    older = ServingScrape(0.0, 10, 0, Histogram(((1.0, 10.0), (math.inf, 10.0))))
    newer = ServingScrape(1.0, 12, 0, Histogram(((1.0, 2.0), (math.inf, 12.0))))
    figures = serving_figures(older, newer)
    assert figures.restarted
    assert figures.requests_per_second == 12


def test_same_time_twice_gives_no_rate() -> None:
    scrape = ServingScrape.from_text(serving_text(ok=1), at_seconds=3.0)
    assert serving_figures(scrape, scrape).requests_per_second is None


# -- model status, replica state, access log -----------------------------------------------------------
def test_model_versions_from_tf_serving_json() -> None:
    assert model_versions(MODEL_STATUS) == (("v2",), "")
    loading = {
        "model_version_status": [
            {"version": "3", "state": "LOADING", "status": {"error_code": "OK"}},
            {"version": "10", "state": "AVAILABLE", "status": {}},
            {
                "version": "4",
                "state": "END",
                "status": {"error_code": "DATA_LOSS", "error_message": "bad MAC"},
            },
        ]
    }
    assert model_versions(json.dumps(loading)) == (("v3 LOADING", "v10"), "bad MAC")


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"model_version_status": 1}',
        '{"model_version_status": [{"state": "AVAILABLE"}]}',
        '{"model_version_status": [{"version": "x", "state": "AVAILABLE"}]}',
        '{"model_version_status": ["v1"]}',
    ],
)
def test_malformed_model_status_is_refused(text: str) -> None:
    with pytest.raises(MetricsError, match="malformed model status"):
        model_versions(text)


@pytest.mark.parametrize(
    ("alive", "probe", "log_line", "expected"),
    [
        (False, "refused", "last words", ("dead", "exited; its log ends: last words")),
        (False, "refused", "", ("dead", "exited")),
        (True, "refused", "asking for the key", ("starting", "asking for the key")),
        (True, "no answer", "serving", ("not ready", "not answering")),
        (True, 200, "", ("ready", "")),
        (True, 503, "", ("not ready", "ready check answered 503")),
    ],
)
def test_replica_state(alive: bool, probe: ReadyProbe, log_line: str, expected: tuple[str, str]) -> None:
    assert replica_state(alive, probe, log_line) == expected


def test_count_upstreams() -> None:
    log = "a upstream=127.0.0.1:1\nb upstream=127.0.0.1:2\nc upstream=127.0.0.1:1\nno upstream here\n\n"
    assert count_upstreams(log) == {"127.0.0.1:1": 2, "127.0.0.1:2": 1}


def test_upstream_counter_reads_only_new_complete_lines(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    counter = UpstreamCounter(log)
    assert counter.read() == {}  # no log yet
    log.write_text("x upstream=127.0.0.1:1\nx upstream=127.0.0.1:1\nx upstr")
    assert counter.read() == {"127.0.0.1:1": 2}
    with log.open("a") as f:
        f.write("eam=127.0.0.1:2\n")
    assert counter.read() == {"127.0.0.1:1": 2, "127.0.0.1:2": 1}
    log.write_text("x upstream=127.0.0.1:3\n")  # rotated: shorter, so counted from its start
    assert counter.read() == {"127.0.0.1:3": 1}


# -- the view and its drawing --------------------------------------------------------------------------
def cluster_scrape(at: float, replicas: list[ReplicaScrape], **overrides: Any) -> ClusterScrape:
    values: dict[str, Any] = {
        "at_seconds": at,
        "clock": "12:00:00",
        "model": "digits",
        "replicas": replicas,
        "key_service_alive": True,
        "key_service_metrics": key_service_text(releases=2, policy=1),
        "key_service_problem": "",
        "balancer_alive": True,
        "balancer_connections": 9,
    }
    values.update(overrides)
    return ClusterScrape(**values)


def sample_view() -> Any:
    dashboard = Dashboard()
    dashboard.update(cluster_scrape(0.0, [ReplicaScrape(0, "ready", "", serving_text(ok=10), MODEL_STATUS)]))
    return dashboard.update(
        cluster_scrape(
            2.0,
            [
                ReplicaScrape(0, "ready", "", serving_text(ok=35, failed=1), MODEL_STATUS, connections=7),
                ReplicaScrape(1, "dead", "confserve: error: no key from secret provisioning [bold]x[/]"),
                ReplicaScrape(
                    2, "not ready", "ready check answered 503", "garbage{", None, "model status: HTTP 404"
                ),
            ],
        )
    )


def test_dashboard_rows() -> None:
    view = sample_view()
    ready, dead, broken = view.replicas
    assert ready.state == "ready"
    assert ready.reason == ""
    assert ready.figures is not None
    assert ready.figures.requests_per_second == pytest.approx(13.0)
    assert ready.versions == ("v2",)
    assert ready.connections == 7
    assert dead.state == "dead"
    assert "no key" in dead.reason
    assert dead.figures is None
    assert broken.state == "not ready"
    assert broken.figures is None
    assert "malformed metrics text" in broken.reason
    assert "HTTP 404" in broken.reason
    assert view.key_service.releases == 2
    assert view.window == "since the last scrape"


def test_a_replica_that_stops_answering_is_not_starting() -> None:
    dashboard = Dashboard()
    dashboard.update(cluster_scrape(0.0, [ReplicaScrape(0, "ready", "", serving_text(), MODEL_STATUS)]))
    view = dashboard.update(cluster_scrape(1.0, [ReplicaScrape(0, "starting", "")]))
    assert (view.replicas[0].state, view.replicas[0].reason) == ("not ready", "stopped answering")
    assert Dashboard().update(cluster_scrape(0.0, [ReplicaScrape(0, "starting", "")])).replicas[0].state == (
        "starting"
    )


def test_a_model_error_is_the_reason_a_replica_is_not_ready() -> None:
    failed = json.dumps(
        {"model_version_status": [{"version": "1", "state": "END",
                                   "status": {"error_code": "DATA_LOSS", "error_message": "bad MAC"}}]}
    )  # fmt: skip
    row = (
        Dashboard()
        .update(
            cluster_scrape(
                0.0, [ReplicaScrape(0, "not ready", "ready check answered 503", serving_text(), failed)]
            )
        )
        .replicas[0]
    )
    assert row.reason == "ready check answered 503; bad MAC"


def test_render_table_holds_every_replica_row() -> None:
    console = Console(
        file=io.StringIO(), record=True, width=160, force_terminal=True, color_system="standard"
    )
    console.print(render_table(sample_view()))
    text = console.export_text()
    cells = [line.split("│") for line in text.splitlines() if line.count("│") > 5]
    rows = {c[1].strip(): "│".join(c) for c in cells if c[1].strip()}  # a folded reason continues a row
    assert set(rows) == {"#0", "#1", "#2"}
    assert "ready" in rows["#0"]
    assert "13.0" in rows["#0"]
    assert " v2 " in rows["#0"]
    assert " 36 " in rows["#0"]
    assert "dead" in rows["#1"]
    assert "no key from secret provisioning [bold]x[/]" in rows["#1"]
    assert "not ready" in rows["#2"]
    assert "key service ok: 2 releases, 1 refusals (policy 1)" in text
    assert "nginx ok: 9 connections" in text


def test_render_table_narrow_terminal_keeps_the_rows() -> None:
    console = Console(file=io.StringIO(), record=True, width=60)
    console.print(render_table(sample_view()))
    text = console.export_text()
    assert "#0" in text
    assert "#1" in text
    assert "#2" in text


def test_render_text_is_plain() -> None:
    text = render_text(sample_view())
    assert ESC not in text
    lines = text.splitlines()
    assert lines[0] == (
        "12:00:00 model digits | key service ok: 2 releases, 1 refusals (policy 1) | nginx ok: 9 connections"
    )
    assert lines[1].startswith("  replica #0 ready: 13.0 req/s, p50 ")
    assert "requests 36, errors 1, connections 7, models v2" in lines[1]
    assert lines[2].startswith("  replica #1 dead: - req/s")
    assert "no key from secret provisioning" in lines[2]
    down = Dashboard().update(
        cluster_scrape(0.0, [], key_service_alive=False, key_service_metrics=None, balancer_alive=False)
    )
    assert render_text(down).splitlines()[1:] == ["  no replicas"]
    assert "key service DOWN: metrics unavailable (not running) | nginx DOWN" in render_text(down)


# -- the command line's fallback -----------------------------------------------------------------------
class FakeMonitor:
    """Stands for the I/O half: a new scrape per call, then Ctrl-C after `ticks` of them."""

    def __init__(self, ticks: int) -> None:
        self.ticks = ticks
        self.calls = 0

    def scrape(self, status: dict[str, Any] | None = None) -> ClusterScrape:
        self.calls += 1
        if self.calls > self.ticks:
            raise KeyboardInterrupt
        metrics = serving_text(ok=10 * self.calls)
        return cluster_scrape(float(self.calls), [ReplicaScrape(0, "ready", "", metrics, MODEL_STATUS)])


def test_watch_without_a_terminal_prints_plain_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    monitor = FakeMonitor(ticks=3)
    monkeypatch.setattr("confserve.cluster.Monitor", lambda cluster: monitor)
    monkeypatch.setattr(_cluster, "_cluster", lambda workspace: object())
    monkeypatch.setenv("TERM", "xterm-256color")
    result = CliRunner().invoke(_cluster.status, ["--watch", "--interval", "0.1"])
    assert result.exit_code == 0, result.output
    assert ESC not in result.output
    snapshots = [line for line in result.output.splitlines() if line.startswith("12:00:00 model digits")]
    assert len(snapshots) == 3
    assert "  replica #0 ready: 10.0 req/s" in result.output  # 10 more requests per 1 s tick


def test_status_once_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Cluster:
        def status(self) -> dict[str, Any]:
            return {
                "model": "digits",
                "tls": "twoway",
                "service_name": "grpc.example",
                "grpc": "127.0.0.1:1",
                "rest": "127.0.0.1:2",
                "client_bundle": {"ca": "ca.crt"},
                "identity": {"mr_enclave": "ab" * 32},
            }

    monkeypatch.setattr("confserve.cluster.Monitor", lambda cluster: FakeMonitor(ticks=1))
    monkeypatch.setattr(_cluster, "_cluster", lambda workspace: Cluster())
    result = CliRunner().invoke(_cluster.status, [])
    assert result.exit_code == 0, result.output
    assert ESC not in result.output
    assert result.output.splitlines()[3].startswith("12:00:00 model digits | key service ok")
    assert "replica #0 ready: - req/s" in result.output  # one scrape: no rate


def test_json_and_watch_exclude_each_other() -> None:
    result = CliRunner().invoke(_cluster.status, ["--json", "--watch"])
    assert result.exit_code == 1
    assert "exclude each other" in result.output


# -- the I/O half against stand-ins on loopback --------------------------------------------------------
class StandIn:
    """An HTTP(S) server on 127.0.0.1 port 0 answering fixed (status, body) per path."""

    def __init__(self, answers: dict[str, tuple[int, bytes]], tls: ssl.SSLContext | None = None) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = answers.get(self.path, (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_get_turns_every_failure_into_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_monitor, "_TIMEOUT_SECONDS", 0.2)
    answers = {
        "/ok": (200, b"fine"),
        "/big": (200, b"x" * (_monitor._MAX_ANSWER_BYTES + 1)),
        "/binary": (200, b"\xff\xfe"),
        "/gone": (503, b"stopping"),
    }
    with StandIn(answers) as stand_in:
        base = f"http://127.0.0.1:{stand_in.port}"
        assert _monitor._get(f"{base}/ok", None) == ("fine", "")
        assert _monitor._get(f"{base}/big", None) == (None, "answer too large")
        assert _monitor._get(f"{base}/binary", None) == (None, "answer is not UTF-8")
        assert _monitor._get(f"{base}/gone", None) == (None, "HTTP 503")
    closed = free_port()
    body, problem = _monitor._get(f"http://127.0.0.1:{closed}/metrics", None)
    assert body is None
    assert "refused" in problem.lower()
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never answers
        assert _monitor._get(f"http://127.0.0.1:{silent.getsockname()[1]}/metrics", None) == (
            None,
            "timed out",
        )


def test_ready_probe_tells_starting_from_hung(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listening: the replica is starting; listening without answering: hung or stopped."""
    monkeypatch.setattr(_local, "_PROBE_TIMEOUT_SECONDS", 0.2)
    cluster = _local.LocalCluster(Workspace(tmp_path))
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    def replica(port: int) -> _local.ReplicaState:
        return _local.ReplicaState(0, os.getpid(), 1, port, str(tmp_path / "replica.log"))

    assert cluster.probe_ready(replica(free_port()), client_tls) == "refused"
    with socket.create_server(("127.0.0.1", 0)) as silent:
        assert cluster.probe_ready(replica(silent.getsockname()[1]), client_tls) == "no answer"
    answers = {"/v1/confserve/ready": (503, b'{"ready": false}')}
    with StandIn(answers, server_tls) as stand_in:
        assert cluster.probe_ready(replica(stand_in.port), client_tls) == 503
        assert cluster.replica_condition(replica(stand_in.port), client_tls) == (
            "not ready",
            "ready check answered 503",
        )


def test_monitor_scrapes_every_component(tmp_path: Path) -> None:
    """Monitor against stand-ins: a replica over TLS (metrics, model status), the key service over HTTP,
    nginx's access log; the resulting view holds what each said, and a broken key service shows why."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    replica_answers = {
        "/monitoring/prometheus/metrics": (200, serving_text(ok=4, failed=1).encode()),
        "/v1/models/digits": (200, MODEL_STATUS.encode()),
    }
    key_answers = {"/metrics": (200, b"not prometheus {")}
    with StandIn(replica_answers, server_tls) as replica, StandIn(key_answers) as key_service:
        (tmp_path / "nginx").mkdir()
        (tmp_path / "nginx" / "nginx-access.log").write_text(
            f"1 upstream=127.0.0.1:{replica.port}\n2 upstream=127.0.0.1:9\n"
        )
        status = {
            "model": "digits",
            "secret_provisioning": {"alive": True, "metrics": f"http://127.0.0.1:{key_service.port}/metrics"},
            "load_balancer": {"alive": True},
            "replicas": [
                {"index": 0, "state": "ready", "reason": "", "grpc_port": 9, "rest_port": replica.port,
                 "metrics": f"https://127.0.0.1:{replica.port}/monitoring/prometheus/metrics"},
                {"index": 1, "state": "dead", "reason": "exited", "grpc_port": 1, "rest_port": 1,
                 "metrics": "https://127.0.0.1:1/monitoring/prometheus/metrics"},
                # A hung replica is not asked again: its port would only time out once more.
                {"index": 2, "state": "not ready", "reason": "not answering", "grpc_port": 2,
                 "rest_port": replica.port, "metrics": f"https://127.0.0.1:{replica.port}/monitoring/prometheus/metrics"},
            ],
        }  # fmt: skip

        class Cluster:
            ws = Workspace(tmp_path)

            def status(self) -> dict[str, Any]:
                return status

            def client_context(self) -> ssl.SSLContext:
                return client_tls

        monitor = _monitor.Monitor(Cluster(), clock=lambda: 7.0, wall_clock=lambda: "01:02:03")  # type: ignore[arg-type]
        scrape = monitor.scrape()
    assert (scrape.at_seconds, scrape.clock, scrape.balancer_connections) == (7.0, "01:02:03", 2)
    view = Dashboard().update(scrape)
    ready, dead, hung = view.replicas
    assert ready.figures is not None
    assert (ready.figures.requests, ready.figures.errors, ready.versions) == (5, 1, ("v2",))
    assert ready.connections == 2  # the gRPC port (9) and the REST port each got one
    assert (dead.state, dead.reason, dead.figures) == ("dead", "exited", None)
    assert (hung.state, hung.reason, hung.figures, hung.versions) == ("not ready", "not answering", None, ())
    assert view.key_service.releases is None
    assert "malformed metrics text" in view.key_service.problem
    assert "key service running: metrics unavailable (malformed metrics text" in render_text(view)
