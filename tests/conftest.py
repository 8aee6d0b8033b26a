"""Shared fixtures. The project's test vectors live outside the repository, in ../shared/testvectors
(CI has them there too); CONFSERVE_SHARED overrides the location. A missing directory is an error, never
a silent skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    path = Path(os.environ.get("CONFSERVE_SHARED", REPO.parent / "shared"))
    if not (path / "testvectors").is_dir():
        raise RuntimeError(f"test vectors not found at {path}/testvectors (set CONFSERVE_SHARED)")
    return path


@pytest.fixture(scope="session")
def testvectors() -> Path:
    return shared_dir() / "testvectors"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="adversarial suite (tests/adversarial): deeper fuzzing budgets; CONFSERVE_ADVERSARIAL_LONG=1 too",
    )
