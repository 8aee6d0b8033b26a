"""The live view shows each replica's releases and key lease, read from the replica's own metrics
(the real producers: `ServingMetrics` with `ReleaseMetrics` registered, as a replica with a pinned
release key serves them)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from rich.console import Console

from confserve import pf
from confserve.cluster._dashboard import (
    ClusterScrape,
    Dashboard,
    MetricsError,
    ReplicaScrape,
    ServingScrape,
    render_table,
    render_text,
)
from confserve.releases import MANIFEST_FILE, ReleaseKey, manifest_for_tree, sign_release
from confserve.serving import (
    KeyGrant,
    ModelConfig,
    ReleasedOpener,
    ReleaseMetrics,
    ServingMetrics,
    StaticKeys,
)

EXPIRY = 1_700_000_000.0


def replica_text(tmp_path: Path) -> str:
    """A replica's exposition: digits at release 3, a lease that ends at EXPIRY."""
    key, release_key = pf.WrapKey.generate(), ReleaseKey.generate()
    base = tmp_path / "models" / "digits"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(
        pf.encrypt_bytes(b"pb", key, bound_path=f"{base}/1/saved_model.pb")
    )
    versions = manifest_for_tree(base, str(base))
    (base / MANIFEST_FILE).write_bytes(
        sign_release(release_key, model="digits", release=3, key_id="d", versions=versions)
    )
    grant = KeyGrant(keys={"d": key}, floors={"digits": 2}, expires_at=100.0)
    opener = ReleasedOpener(release_key.public_key, StaticKeys(grant), clock=lambda: 40.0)
    gated = opener.gate(ModelConfig("digits", str(base)), opener.list_files(str(base)))
    assert gated is not None
    assert list(gated.versions) == [1]
    metrics = ServingMetrics()
    metrics.record("digits", "Predict", "GRPC", "OK", 0.002)
    metrics.registry.register(ReleaseMetrics(opener, clock=lambda: 40.0, wall_clock=lambda: EXPIRY - 60.0))
    return metrics.exposition().decode()


def test_releases_and_lease_are_parsed_and_shown(tmp_path: Path) -> None:
    text = replica_text(tmp_path)
    scrape = ServingScrape.from_text(text, at_seconds=1.0)
    assert scrape.releases == (("digits", 3),)
    assert scrape.lease_expires_at == EXPIRY
    view = Dashboard().update(
        ClusterScrape(
            at_seconds=1.0,
            clock="12:00:00",
            model="digits",
            replicas=[ReplicaScrape(0, "ready", "", text)],
            key_service_alive=True,
            key_service_metrics=None,
            key_service_problem="",
            balancer_alive=True,
            balancer_connections=0,
        )
    )
    (row,) = view.replicas
    assert (row.releases, row.lease_expires_at) == ((("digits", 3),), EXPIRY)
    until = time.strftime("%H:%M:%S", time.localtime(EXPIRY))
    assert f"release digits r3, key lease to {until}" in render_text(view)
    console = Console(file=io.StringIO(), record=True, width=200)
    console.print(render_table(view))
    table = console.export_text()
    assert "release" in table
    assert "digits r3" in table
    assert f"to {until}" in table


def test_a_replica_without_releases_shows_none() -> None:
    metrics = ServingMetrics()
    scrape = ServingScrape.from_text(metrics.exposition().decode(), at_seconds=1.0)
    assert (scrape.releases, scrape.lease_expires_at) == ((), None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('confserve_model_release{model_name="digits"} 1.5\n', "not a release number"),
        ("confserve_model_release 3\n", "not a release number"),
        ('confserve_model_release{model_name="digits"} -1\n', "confserve_model_release"),
        (
            "confserve_key_lease_expiry_timestamp_seconds NaN\n",
            "confserve_key_lease_expiry_timestamp_seconds",
        ),
    ],
)
def test_malformed_release_metrics_are_refused(extra: str, message: str) -> None:
    text = ServingMetrics().exposition().decode() + extra
    with pytest.raises(MetricsError, match=message):
        ServingScrape.from_text(text, at_seconds=1.0)
