from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.serving.models import model_tree


@pytest.fixture(scope="session")
def models_root() -> Path:
    return model_tree()
