"""The container group: the built images and the simulated cluster on a real engine (podman or docker).

It runs only through scripts/test-containers, which installs the engine when missing, builds the images
(scripts/build-images) and sets CONFSERVE_CONTAINER_TESTS=1; the main suite (scripts/check) leaves this
directory out. Where no engine can be installed the script says so and sets
CONFSERVE_NO_CONTAINER_ENGINE to the reason: then, and only then, every test here is skipped with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from confserve.cluster import _container_cluster as cc
from confserve.cluster import _containers as c
from confserve.cluster._workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
ENABLED = os.environ.get("CONFSERVE_CONTAINER_TESTS") == "1"
collect_ignore_glob = [] if ENABLED else ["test_*.py"]
TAG = os.environ.get("CONFSERVE_IMAGE_TAG", "local")
NAME = "confserve-test"  # label and prefix of what the group creates, apart from a user's cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "containers: needs a container engine and the built images")


@pytest.fixture(scope="session")
def engine() -> c.Engine:
    reason = os.environ.get("CONFSERVE_NO_CONTAINER_ENGINE")
    if reason:
        pytest.skip(f"NO CONTAINER ENGINE CAN BE INSTALLED HERE: {reason}")
    return c.Engine(c.find_engine(os.environ.get("CONFSERVE_ENGINE") or None))


@pytest.fixture(scope="session")
def images(engine: c.Engine) -> dict[str, str]:
    names = cc.images(TAG)
    missing = [image for image in names.values() if not engine.ok("image", "inspect", image)]
    if missing:
        pytest.fail(f"images missing: {missing}; scripts/test-containers builds them (scripts/build-images)")
    return names


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> cc.SimulationSettings:
    return cc.SimulationSettings(
        tmp_path_factory.mktemp("containers") / "ws", REPO / "deploy" / "kubernetes", tag=TAG, name=NAME
    )


@pytest.fixture(scope="session")
def workspace(settings: cc.SimulationSettings) -> Workspace:
    """The owner's keys, TLS material and model, made as the cluster makes them (the cluster re-uses it)."""
    ws = Workspace(settings.workspace)
    cc._prepare(ws, print)
    return ws


@pytest.fixture(scope="session")
def cluster(
    engine: c.Engine, images: dict[str, str], settings: cc.SimulationSettings, workspace: Workspace
) -> Iterator[cc.SimulationResult]:
    """The simulated cluster, up for the session's tests; torn down at the end whatever happened."""
    try:
        yield cc.run_simulation(settings, once=False, progress=lambda text: print(f"cluster: {text}"))
    finally:
        c.down(engine, settings.name, settings.staging)
