"""The live view of a local cluster (`confserve up`, `confserve status [--watch]`): figures and layout.

Theory of operation. Every few seconds the I/O half (`confserve.cluster._monitor`) collects a
`ClusterScrape`: what each component answered (or why it did not), timed by a monotonic clock. This
module never touches a socket, a file or a clock; `Dashboard.update` turns the newest scrape, and the one
before it, into a `ClusterView`, which `render_table` (rich, for a terminal) and `render_text` (plain
lines, for pipes and logs) draw.

Counters only ever grow, so a rate is (newer - older) / elapsed. A counter that went down means the
process restarted and counts from zero again; then, as Prometheus' `rate()` does, the newer value itself
is the increase. A percentile comes from a histogram's cumulative buckets as in Prometheus'
`histogram_quantile`: find the bucket that holds the rank q * count and interpolate linearly inside it
(the first bucket starts at 0; a rank in the +Inf bucket is reported as the largest finite bound). With
two scrapes the percentiles cover the requests between them; with one (`confserve status`) they cover
every request since the replica started, and there is no rate.

What each component exposes (docs/operations.md explains the view; docs/server.md and
docs/secret-provisioning.md the endpoints):

| component   | source                                            | read here                                |
|-------------|---------------------------------------------------|------------------------------------------|
| replica     | REST `/monitoring/prometheus/metrics`, Prometheus | `:tensorflow:serving:request_count`      |
|             | text (the local cluster's MonitoringConfig)       | {status}, `..._request_latency` (us)     |
|             |                                                   | `confserve_model_release` {model_name},  |
|             |                                                   | `confserve_key_lease_expiry_...` (Unix)  |
| replica     | REST `GET /v1/models/NAME`, TF Serving's JSON     | `model_version_status[]`: version, state |
| key service | HTTP `/metrics` on its metrics port, Prometheus   | `confserve_secret_prov_releases_total`,  |
|             | text                                              | `..._refusals_total` {reason}            |
| key service | HTTP `/healthz` on its metrics port               | its condition (`LocalCluster.status`)    |
| nginx       | its stream access log, one line per connection    | `upstream=ADDRESS`                       |
| nginx       | the process table and listening sockets           | its condition (`LocalCluster.status`)    |
| every one   | supervision's track in the cluster's state        | restarts, last reason, pending restart   |

Everything read from a component is outside input: a text that does not parse, a counter that is
negative or not finite, or a histogram whose buckets are not cumulative raises `MetricsError`, and the
view shows that component's figures as unreadable, never crashes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from confserve.errors import ConfserveError, Status

__all__ = [
    "ClusterScrape",
    "ClusterView",
    "ComponentHealth",
    "Dashboard",
    "Histogram",
    "KeyServiceFigures",
    "KeyServiceScrape",
    "MetricsError",
    "ReadyProbe",
    "ReplicaCondition",
    "ReplicaRow",
    "ReplicaScrape",
    "Restarts",
    "ServingFigures",
    "ServingScrape",
    "count_upstreams",
    "histogram_quantile",
    "key_service_figures",
    "model_versions",
    "parse_metrics",
    "render_table",
    "render_text",
    "replica_state",
    "serving_figures",
]

ReplicaCondition = Literal["starting", "ready", "not ready", "dead"]
# What a replica's ready check gave: its HTTP status, or why there was none.
ReadyProbe = int | Literal["refused", "no answer"]

# Names: TF Serving's (util.cc; the `/` of its names written as `:`) and the key service's own.
REQUEST_COUNT: Final = ":tensorflow:serving:request_count"
REQUEST_LATENCY: Final = ":tensorflow:serving:request_latency"
MODEL_RELEASE: Final = "confserve_model_release"  # a replica with a pinned release key (docs/releases.md)
LEASE_EXPIRY: Final = "confserve_key_lease_expiry_timestamp_seconds"
KEY_RELEASES: Final = "confserve_secret_prov_releases"
KEY_REFUSALS: Final = "confserve_secret_prov_refusals"
NOT_ANSWERING: Final = "not answering"  # the reason of a replica whose port accepts but never answers
_OK: Final = "OK"  # the status label of a successful request (canonical code name, as TF Serving)
_REASON_CHARS: Final = 120  # a reason is one line of a table cell, not a log


class MetricsError(ConfserveError, status=Status.INVALID_ARGUMENT):
    """A component's metrics (or model status) could not be read; the message says what was wrong."""


# -- parsing ---------------------------------------------------------------------------------------------
Sample = tuple[Mapping[str, str], float]


def parse_metrics(text: str) -> dict[str, list[Sample]]:
    """Samples of a Prometheus text exposition, by sample name (`x_total`, `x_bucket`, ...). Families
    that are declared but have no samples yet appear with an empty list under the family's name."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    samples: dict[str, list[Sample]] = {}
    try:
        for family in text_string_to_metric_families(text):
            samples.setdefault(family.name, [])
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise MetricsError(f"malformed metrics text ({type(exc).__name__})") from None
    return samples


def _counter_value(value: float, name: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise MetricsError(f"{name} is {value}, not a count")
    return value


def _require(samples: Mapping[str, list[Sample]], family: str) -> None:
    if family not in samples:
        raise MetricsError(f"no {family} in the metrics")


@dataclass(frozen=True)
class Histogram:
    """Cumulative buckets: (upper bound, observations <= bound), ascending, the last bound +Inf."""

    buckets: tuple[tuple[float, float], ...] = ((math.inf, 0.0),)

    def __post_init__(self) -> None:
        bounds = [b for b, _ in self.buckets]
        counts = [c for _, c in self.buckets]
        if not bounds or bounds[-1] != math.inf:
            raise MetricsError("a histogram without its +Inf bucket")
        if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
            raise MetricsError("histogram bounds are not ascending")
        if any(not math.isfinite(c) or c < 0 for c in counts):
            raise MetricsError("a histogram bucket is not a count")
        if any(b > a for a, b in zip(counts[1:], counts, strict=False)):
            raise MetricsError("histogram buckets are not cumulative")

    @property
    def count(self) -> float:
        return self.buckets[-1][1]

    @classmethod
    def from_samples(cls, samples: Iterable[Sample]) -> Histogram:
        """One histogram from the `_bucket` samples of every label set (summed bound by bound)."""
        by_bound: dict[float, float] = {}
        for labels, value in samples:
            try:
                bound = float(labels["le"])
            except (KeyError, ValueError):
                raise MetricsError("a histogram bucket without a numeric le label") from None
            by_bound[bound] = by_bound.get(bound, 0.0) + _counter_value(value, "a histogram bucket")
        if not by_bound:
            return cls()
        return cls(tuple(sorted(by_bound.items())))

    def since(self, older: Histogram) -> Histogram | None:
        """The observations made after `older`, or None when a bucket went down (the process restarted)
        or the bounds differ."""
        if [b for b, _ in older.buckets] != [b for b, _ in self.buckets]:
            return None if older.count else self
        deltas = tuple((b, c - o) for (b, c), (_, o) in zip(self.buckets, older.buckets, strict=True))
        if any(d < 0 for _, d in deltas):
            return None
        try:
            return Histogram(deltas)
        except MetricsError:  # a bucket grew less than one below it: counts from another process
            return None


def histogram_quantile(q: float, histogram: Histogram) -> float | None:
    """The q-quantile (0 <= q <= 1) by linear interpolation inside the bucket that holds rank q * count
    (Prometheus' histogram_quantile); None without observations."""
    if not 0 <= q <= 1:
        raise ValueError("a quantile is between 0 and 1")
    total = histogram.count
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in histogram.buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower  # above every finite bound: the largest one is all that is known
            if cumulative == below:
                return lower
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    raise AssertionError("unreachable: the +Inf bucket holds every observation")  # pragma: no cover


# -- a replica's figures ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServingScrape:
    """One read of a replica's metrics: totals since it started, at a monotonic time."""

    at_seconds: float
    requests: float
    errors: float
    latency_micros: Histogram
    releases: tuple[tuple[str, int], ...] = ()  # (model, release served), when releases are pinned
    lease_expires_at: float | None = None  # Unix seconds, when keys are leased

    @classmethod
    def from_text(cls, text: str, at_seconds: float) -> ServingScrape:
        samples = parse_metrics(text)
        _require(samples, REQUEST_COUNT)
        _require(samples, REQUEST_LATENCY)
        requests = errors = 0.0
        for labels, value in samples[REQUEST_COUNT]:
            count = _counter_value(value, REQUEST_COUNT)
            requests += count
            if labels.get("status", _OK) != _OK:
                errors += count
        latency = Histogram.from_samples(samples.get(REQUEST_LATENCY + "_bucket", []))
        releases = []
        for labels, value in samples.get(MODEL_RELEASE, []):
            number = _counter_value(value, MODEL_RELEASE)
            if number != int(number) or "model_name" not in labels:
                raise MetricsError(f"{MODEL_RELEASE} is not a release number of a model")
            releases.append((labels["model_name"], int(number)))
        expiry = samples.get(LEASE_EXPIRY, [])
        lease = _counter_value(expiry[0][1], LEASE_EXPIRY) if expiry else None
        return cls(at_seconds, requests, errors, latency, tuple(sorted(releases)), lease)


@dataclass(frozen=True)
class ServingFigures:
    requests: float  # since the replica started
    errors: float  # requests that did not end OK, since the replica started
    requests_per_second: float | None  # None from a single scrape
    p50_ms: float | None  # None without requests in the window
    p99_ms: float | None
    restarted: bool = False  # a counter went down between the two scrapes


def serving_figures(previous: ServingScrape | None, current: ServingScrape) -> ServingFigures:
    """A replica's row of figures from two successive scrapes (or one: totals since start, no rate)."""
    window: Histogram | None = current.latency_micros
    rate = None
    restarted = False
    if previous is not None and current.at_seconds > previous.at_seconds:
        elapsed = current.at_seconds - previous.at_seconds
        restarted = current.requests < previous.requests or current.errors < previous.errors
        window = None if restarted else current.latency_micros.since(previous.latency_micros)
        if window is None:  # counts from zero again: the newer totals are the increase
            restarted, window = True, current.latency_micros
        increase = current.requests if restarted else current.requests - previous.requests
        rate = increase / elapsed

    def ms(q: float) -> float | None:
        micros = histogram_quantile(q, window) if window is not None else None
        return None if micros is None else micros / 1000

    return ServingFigures(current.requests, current.errors, rate, ms(0.5), ms(0.99), restarted)


def model_versions(text: str) -> tuple[tuple[str, ...], str]:
    """From TF Serving's GetModelStatus JSON (`GET /v1/models/NAME`): the versions not yet ended, as
    `v1` (AVAILABLE) or `v2 LOADING`, and the first error message of any version ("" if none)."""
    try:
        data = json.loads(text)
        statuses = data["model_version_status"]
        if not isinstance(statuses, list):
            raise TypeError
        shown: list[tuple[int, str]] = []
        error = ""
        for entry in statuses:
            version, state = str(entry["version"]), str(entry["state"])
            status = entry.get("status") or {}
            if status.get("error_code", _OK) not in (_OK, 0) and not error:
                error = str(status.get("error_message", "") or status["error_code"])
            if state != "END":
                label = f"v{version}" if state == "AVAILABLE" else f"v{version} {state}"
                shown.append((int(version), label))
    except (ValueError, TypeError, KeyError, AttributeError):
        raise MetricsError("malformed model status") from None
    return tuple(label for _, label in sorted(shown)), error[:_REASON_CHARS]


def replica_state(alive: bool, ready: ReadyProbe, log_line: str) -> tuple[ReplicaCondition, str]:
    """A replica's state and the reason for it, from whether its process runs, what its
    `GET /v1/confserve/ready` gave and the last line of its log. A replica opens its ports only once
    attested, keyed and loaded, so a port nobody listens on while the process runs means "starting";
    a port that accepts but does not answer means a hung or stopped process."""
    if not alive:
        return "dead", f"exited; its log ends: {log_line}" if log_line else "exited"
    if ready == "refused":
        return "starting", log_line
    if ready == "no answer":
        return "not ready", NOT_ANSWERING
    if ready == 200:
        return "ready", ""
    return "not ready", f"ready check answered {ready}"


def count_upstreams(log_text: str) -> dict[str, int]:
    """Connections per upstream address from nginx's stream access log (`... upstream=ADDRESS`)."""
    counts: dict[str, int] = {}
    for line in log_text.splitlines():
        _, marker, upstream = line.rpartition("upstream=")
        upstream = upstream.strip()
        if marker and upstream:
            counts[upstream] = counts.get(upstream, 0) + 1
    return counts


# -- the key service -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyServiceScrape:
    releases: float
    refusals: Mapping[str, float]  # by reason

    @classmethod
    def from_text(cls, text: str) -> KeyServiceScrape:
        samples = parse_metrics(text)
        _require(samples, KEY_RELEASES)
        _require(samples, KEY_REFUSALS)
        releases = sum(_counter_value(v, KEY_RELEASES) for _, v in samples.get(KEY_RELEASES + "_total", []))
        refusals: dict[str, float] = {}
        for labels, value in samples.get(KEY_REFUSALS + "_total", []):
            reason = labels.get("reason", "?")
            refusals[reason] = refusals.get(reason, 0.0) + _counter_value(value, KEY_REFUSALS)
        return cls(releases, refusals)


@dataclass(frozen=True)
class KeyServiceFigures:
    alive: bool
    releases: float | None = None  # None: its metrics did not answer or did not parse
    refusals: float | None = None
    refusals_by_reason: Mapping[str, float] = field(default_factory=dict)  # only reasons with refusals
    problem: str = ""


def key_service_figures(alive: bool, text: str | None, problem: str = "") -> KeyServiceFigures:
    if text is None:
        return KeyServiceFigures(alive, problem=problem or ("" if alive else "not running"))
    try:
        scrape = KeyServiceScrape.from_text(text)
    except MetricsError as exc:
        return KeyServiceFigures(alive, problem=str(exc))
    nonzero = {reason: n for reason, n in sorted(scrape.refusals.items()) if n}
    return KeyServiceFigures(alive, scrape.releases, sum(scrape.refusals.values()), nonzero, problem)


# -- the whole view --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Restarts:
    """What supervision did to a component (from the cluster's state), for the view."""

    count: int = 0
    last_at: str = ""  # wall-clock time of the last restart (HH:MM:SS)
    last_reason: str = ""
    restart_in_seconds: float | None = None  # it is to be restarted after this wait (backoff)
    waiting_reason: str = ""

    def history(self) -> str:
        """`restarted 2x, last 18:24:44 (exited)`, or "" without restarts."""
        if not self.count:
            return ""
        last = f", last {self.last_at}" if self.last_at else ""
        why = f" ({_one_line(self.last_reason)})" if self.last_reason else ""
        return f"restarted {self.count}x{last}{why}"

    def describe(self) -> str:
        """The history and, while it waits, `restart in 4 s`."""
        parts = [self.history()] if self.count else []
        if self.restart_in_seconds is not None:
            parts.append(f"restart in {self.restart_in_seconds:.0f} s")
        return "; ".join(parts)


@dataclass(frozen=True)
class ReplicaScrape:
    """What one replica answered. Texts are None when the request failed; `problem` says why."""

    index: int
    condition: ReplicaCondition  # from `replica_state`
    reason: str = ""
    metrics: str | None = None
    model_status: str | None = None
    problem: str = ""
    connections: int = 0
    restarts: Restarts = field(default_factory=Restarts)


@dataclass(frozen=True)
class ClusterScrape:
    at_seconds: float  # monotonic
    clock: str  # wall-clock time for people (HH:MM:SS)
    model: str
    replicas: Sequence[ReplicaScrape]
    key_service_alive: bool
    key_service_metrics: str | None
    key_service_problem: str
    balancer_alive: bool
    balancer_connections: int
    # The health checks (`confserve status` gives them; None: only whether the process runs is known).
    key_service_condition: ReplicaCondition | None = None
    key_service_reason: str = ""
    key_service_restarts: Restarts = field(default_factory=Restarts)
    balancer_condition: ReplicaCondition | None = None
    balancer_reason: str = ""
    balancer_restarts: Restarts = field(default_factory=Restarts)
    supervisor: str = ""  # who restarts failed components ("" when not known)


@dataclass(frozen=True)
class ReplicaRow:
    index: int
    state: ReplicaCondition
    reason: str
    figures: ServingFigures | None  # None: metrics did not answer or did not parse (see reason)
    versions: tuple[str, ...]
    connections: int
    restarts: Restarts = field(default_factory=Restarts)
    releases: tuple[tuple[str, int], ...] = ()  # (model, release served)
    lease_expires_at: float | None = None  # Unix seconds


@dataclass(frozen=True)
class ComponentHealth:
    """The key service's or nginx's health check: its condition (None: only liveness is known), the
    reason it is not ready (or a note), and what supervision did."""

    condition: ReplicaCondition | None = None
    reason: str = ""
    restarts: Restarts = field(default_factory=Restarts)


@dataclass(frozen=True)
class ClusterView:
    clock: str
    model: str
    replicas: tuple[ReplicaRow, ...]
    key_service: KeyServiceFigures
    balancer_alive: bool
    balancer_connections: int
    window: Literal["since start", "since the last scrape"]
    key_service_health: ComponentHealth = field(default_factory=ComponentHealth)
    balancer_health: ComponentHealth = field(default_factory=ComponentHealth)
    supervisor: str = ""


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 3] + "..."


class Dashboard:
    """Remembers the previous scrape of every replica, so rates cover the time between two updates."""

    def __init__(self) -> None:
        self._previous: dict[int, ServingScrape] = {}
        self._seen_ready: set[int] = set()
        self._updates = 0

    def update(self, scrape: ClusterScrape) -> ClusterView:
        rows = [self._row(r, scrape.at_seconds) for r in scrape.replicas]
        self._previous = {i: s for i, s in self._previous.items() if i in {r.index for r in rows}}
        self._updates += 1
        key = key_service_figures(
            scrape.key_service_alive, scrape.key_service_metrics, scrape.key_service_problem
        )
        window: Literal["since start", "since the last scrape"] = (
            "since start" if self._updates == 1 else "since the last scrape"
        )
        return ClusterView(
            scrape.clock,
            scrape.model,
            tuple(rows),
            key,
            scrape.balancer_alive,
            scrape.balancer_connections,
            window,
            ComponentHealth(
                scrape.key_service_condition,
                _one_line(scrape.key_service_reason),
                scrape.key_service_restarts,
            ),
            ComponentHealth(
                scrape.balancer_condition, _one_line(scrape.balancer_reason), scrape.balancer_restarts
            ),
            scrape.supervisor,
        )

    def _row(self, replica: ReplicaScrape, at_seconds: float) -> ReplicaRow:
        state, reason = replica.condition, replica.reason
        if state == "ready":
            self._seen_ready.add(replica.index)
        elif state == "starting" and replica.index in self._seen_ready:
            state, reason = "not ready", "stopped answering"  # it served before: not a start
        problems = [reason] if reason else []
        if replica.restarts.restart_in_seconds is not None:
            problems.append(f"restart in {replica.restarts.restart_in_seconds:.0f} s")
        if replica.problem:
            problems.append(replica.problem)
        figures = None
        releases: tuple[tuple[str, int], ...] = ()
        lease = None
        if replica.metrics is not None:
            try:
                current = ServingScrape.from_text(replica.metrics, at_seconds)
            except MetricsError as exc:
                problems.append(f"metrics: {exc}")
            else:
                figures = serving_figures(self._previous.get(replica.index), current)
                self._previous[replica.index] = current
                releases, lease = current.releases, current.lease_expires_at
        versions: tuple[str, ...] = ()
        if replica.model_status is not None:
            try:
                versions, error = model_versions(replica.model_status)
            except MetricsError as exc:
                problems.append(str(exc))
            else:
                if error and state != "ready":
                    problems.append(error)
        return ReplicaRow(
            replica.index,
            state,
            _one_line("; ".join(problems)),
            figures,
            versions,
            replica.connections,
            replica.restarts,
            releases,
            lease,
        )


# -- drawing ---------------------------------------------------------------------------------------------
def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{unit}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


_WORDS: Final[dict[ReplicaCondition, str]] = {
    "ready": "ok",
    "starting": "starting",
    "not ready": "not ready",
    "dead": "DOWN",
}


def _component_line(name: str, health: ComponentHealth, legacy_status: str, figures: str) -> str:
    """`NAME WORD (reason): figures; restarts`. Without a health check, WORD comes from liveness."""
    if health.condition is None:
        line = f"{name} {legacy_status}: {figures}"
    elif health.condition == "ready":
        line = f"{name} ok: {figures}" + (f" ({health.reason})" if health.reason else "")
    else:
        word = _WORDS[health.condition]
        reason = f" ({health.reason})" if health.reason else ""
        line = f"{name} {word}{reason}" + ("" if health.condition == "dead" else f": {figures}")
    restarts = health.restarts.describe()
    return f"{line}; {restarts}" if restarts else line


def _key_service_line(view: ClusterView) -> str:
    key = view.key_service
    status = "DOWN" if not key.alive else ("ok" if key.releases is not None else "running")
    if key.releases is None:
        figures = f"metrics unavailable ({key.problem})" if key.problem else "metrics unavailable"
    else:
        figures = f"{_count(key.releases)} releases, {_count(key.refusals)} refusals"
        if key.refusals_by_reason:
            reasons = ", ".join(f"{r} {_count(n)}" for r, n in key.refusals_by_reason.items())
            figures += f" ({reasons})"
    return _component_line("key service", view.key_service_health, status, figures)


def _balancer_line(view: ClusterView) -> str:
    status = "ok" if view.balancer_alive else "DOWN"
    return _component_line("nginx", view.balancer_health, status, f"{view.balancer_connections} connections")


def _healthy(condition: ReplicaCondition | None, alive: bool) -> bool:
    return condition == "ready" if condition is not None else alive


def _cells(row: ReplicaRow) -> dict[str, str]:
    f = row.figures
    return {
        "replica": f"#{row.index}",
        "state": row.state,
        "req/s": _num(f.requests_per_second if f else None),
        "p50": _num(f.p50_ms if f else None, " ms"),
        "p99": _num(f.p99_ms if f else None, " ms"),
        "requests": _count(f.requests if f else None),
        "errors": _count(f.errors if f else None),
        "conns": str(row.connections),
        "models": " ".join(row.versions) or "-",
        "release": " ".join(f"{model} r{number}" for model, number in row.releases) or "-",
        "lease": "-" if row.lease_expires_at is None else "to " + _local_time(row.lease_expires_at),
        "restarts": str(row.restarts.count),
        "reason": row.reason,
    }


def _local_time(unix: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix))


def render_text(view: ClusterView) -> str:
    """The view as plain lines (no escape sequences): a header, then one line per replica."""
    lines = [f"{view.clock} model {view.model} | {_key_service_line(view)} | {_balancer_line(view)}"]
    for row in view.replicas:
        c = _cells(row)
        line = (
            f"  replica {c['replica']} {c['state']}: {c['req/s']} req/s, p50 {c['p50']}, p99 {c['p99']}, "
            f"requests {c['requests']}, errors {c['errors']}, connections {c['conns']}, models {c['models']}"
        )
        if row.releases or row.lease_expires_at is not None:
            line += f", release {c['release']}, key lease {c['lease']}"
        if row.restarts.count:
            line += f", {row.restarts.history()}"  # a pending restart is in the reason
        lines.append(line + (f" ({c['reason']})" if c["reason"] else ""))
    if not view.replicas:
        lines.append("  no replicas")
    if view.supervisor:
        lines.append(f"  supervisor: {view.supervisor}")
    return "\n".join(lines)


_COLUMNS: Final = (
    "replica",
    "state",
    "req/s",
    "p50",
    "p99",
    "requests",
    "errors",
    "conns",
    "models",
    "release",
    "lease",
    "restarts",
    "reason",
)
_STATE_STYLE: Final = {"ready": "green", "starting": "yellow", "not ready": "yellow", "dead": "bold red"}


def render_table(view: ClusterView, hint: str = "") -> Any:
    """The view as a rich renderable: a title line, one table row per replica, the components below;
    `hint` ends the caption (e.g. how to stop)."""
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    if view.window == "since start":
        caption = "one view: latency percentiles since each replica started, no rates"
    else:
        caption = "rates and latency percentiles since the last view"
    table = Table(
        title=f"confserve cluster - model {view.model} - {view.clock}",
        caption=caption + (f"; {hint}" if hint else ""),
        expand=False,
    )
    leased = any(row.releases or row.lease_expires_at is not None for row in view.replicas)
    columns = [name for name in _COLUMNS if leased or name not in ("release", "lease")]
    for name in columns:
        right = name in ("req/s", "p50", "p99", "requests", "errors", "conns", "restarts")
        table.add_column(name, justify="right" if right else "left", overflow="fold")
    for row in view.replicas:
        # Every cell is a Text: what a component said is shown as is, never read as rich markup.
        values = _cells(row)
        cells = [Text(values[name]) for name in columns]
        cells[1] = Text(row.state, style=_STATE_STYLE[row.state])
        table.add_row(*cells)
    key_style = "green" if _healthy(view.key_service_health.condition, view.key_service.alive) else "bold red"
    lb_style = "green" if _healthy(view.balancer_health.condition, view.balancer_alive) else "bold red"
    lines: list[Any] = [
        table,
        Text(_key_service_line(view), style=key_style),
        Text(_balancer_line(view), style=lb_style),
    ]
    if view.supervisor:
        lines.append(Text(f"supervisor: {view.supervisor}"))
    return Group(*lines)
