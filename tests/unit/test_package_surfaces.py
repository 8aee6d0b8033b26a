"""Public surfaces: each package's `__all__` is what its siblings use, every listed name resolves (lazily
where the package defers its modules), and the packages that promise a light import keep the promise
(checked in a fresh interpreter, since this one has imported everything already)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

PACKAGES = (
    "confserve.attestation",
    "confserve.client",
    "confserve.cluster",
    "confserve.frontends",
    "confserve.frontends.grpc",
    "confserve.frontends.rest",
    "confserve.owner",
    "confserve.pf",
    "confserve.provisioning",
    "confserve.replica",
    "confserve.serving",
)

# What importing a package alone may not load: the packages named here are the ones whose modules cost
# 0.1-0.2 s together (cryptography's X.509 layer, dcap-qvl, pyOpenSSL, prometheus_client, numpy, rich).
LIGHT = {
    "confserve.attestation": ("cryptography.x509", "dcap_qvl", "cbor2"),
    "confserve.provisioning": (
        "cryptography.x509",
        "dcap_qvl",
        "OpenSSL",
        "prometheus_client",
        "confserve.attestation._verify",
    ),
    "confserve.client": ("numpy", "grpc", "google.protobuf", "confserve.attestation._verify"),
    "confserve.cluster": ("cryptography.x509", "rich", "numpy", "confserve.provisioning._server"),
    "confserve.owner": ("cryptography.x509", "numpy", "google.protobuf"),
}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    names = module.__all__
    assert names == sorted(set(names), key=names.index), "no name listed twice"
    for name in names:
        value = getattr(module, name)  # a lazy name loads its module here
        assert vars(module)[name] is value, f"{package}.{name} is not kept once loaded"


@pytest.mark.parametrize("package", PACKAGES)
def test_an_unknown_name_is_an_attribute_error(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = module.no_such_name


def _loaded_after_import(package: str, watched: tuple[str, ...]) -> list[str]:
    code = (
        "import json, sys\n"
        f"import {package}\n"
        f"print(json.dumps(sorted(m for m in {list(watched)!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


@pytest.mark.parametrize("package", sorted(LIGHT))
def test_package_import_is_light(package: str) -> None:
    assert _loaded_after_import(package, LIGHT[package]) == []


def test_the_lightness_check_can_fail() -> None:
    """Naming a lazily exported name loads its module: the check above sees such imports."""
    code = (
        "import json, sys\n"
        "from confserve.attestation import verify\n"
        "print(json.dumps(sorted(m for m in ['dcap_qvl', 'cryptography.x509'] if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(result.stdout) == ["cryptography.x509", "dcap_qvl"]
