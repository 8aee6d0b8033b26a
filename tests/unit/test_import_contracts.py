"""The import-linter contracts of pyproject.toml each forbid something real: on a copy of the source tree,
one added import breaks exactly the contract meant to catch it, and the unchanged copy keeps them all."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = [
    contract["name"]
    for contract in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
]
LAYERS, PRIVATE, PF_DEPENDENCIES, NO_ML_STACK = CONTRACTS


def _lint(tmp_path: Path, added: dict[str, str]) -> dict[str, bool]:
    """Copy the tree, append `added[module path] = line`, run lint-imports: {contract name: kept}."""
    shutil.copytree(
        ROOT / "src" / "confserve",
        tmp_path / "src" / "confserve",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for relative, line in added.items():
        with (tmp_path / "src" / "confserve" / relative).open("a") as handle:
            handle.write(f"\n{line}\n")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "src")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = " ".join(proc.stdout.split())  # long contract names are wrapped at the terminal's width
    verdicts: dict[str, bool] = {}
    for name in CONTRACTS:
        kept = f"{name} KEPT" in report
        broken = f"{name} BROKEN" in report
        assert kept != broken, proc.stdout + proc.stderr
        verdicts[name] = kept
    assert proc.returncode == (0 if all(verdicts.values()) else 1)
    return verdicts


def test_the_tree_as_it_is_keeps_every_contract(tmp_path: Path) -> None:
    assert _lint(tmp_path, {}) == dict.fromkeys(CONTRACTS, True)


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("provisioning/_audit.py", "from confserve.serving import ModelStore", LAYERS),
        ("files.py", "from confserve.pf import WrapKey", LAYERS),
        ("cli/_pf.py", "from confserve.attestation._verify import verify", PRIVATE),
        ("pf/_keys.py", "from confserve.errors import Status", PF_DEPENDENCIES),
        ("pf/_format.py", "import numpy", PF_DEPENDENCIES),
        ("pf/_crypto.py", "import click", PF_DEPENDENCIES),
        ("attestation/_types.py", "import grpc", NO_ML_STACK),
        ("attestation/_policy.py", "import aiohttp", NO_ML_STACK),
    ],
)
def test_one_added_import_breaks_its_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    verdicts = _lint(tmp_path, {module: line})
    assert verdicts[contract] is False
    assert {name for name, kept in verdicts.items() if not kept} == {contract}
