"""The built images: non-root, nothing secret or plaintext in any layer (every layer's tarball read), no
TensorFlow in the client image, no serving stack in the key-service image."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from confserve.cluster import _containers as c
from confserve.cluster._workspace import Workspace

pytestmark = pytest.mark.containers

ROLES = ("server", "secret-prov", "client", "lb")
# Files allowed to hold a PEM private key, with the reason. Debian's GnuTLS (which apt needs, so every
# Debian base has it) embeds the keys of its FIPS power-on self-tests: published test vectors, the same
# bytes in every copy of the library. The workspace's own keys are still looked for in these files.
_PEM_ALLOWED = {
    re.compile(r"\./usr/lib/x86_64-linux-gnu/libgnutls\.so\.30(\.[0-9]+)*"): "GnuTLS self-test vectors",
}
# A whole PEM private key (header, base64 body, footer): the header alone also appears in TLS libraries.
_PRIVATE_PEM = re.compile(
    rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----\r?\n[A-Za-z0-9+/=:,\- \r\n]{40,}?-----END \1PRIVATE KEY-----"
)


def _run(engine: c.Engine, image: str, *command: str) -> tuple[int, str, str]:
    limits = [a for k, v in sorted(c.host_ulimits().items()) for a in ("--ulimit", f"{k}={v}:{v}")]
    return engine.result(
        "run",
        "--rm",
        "--pull=never",
        "--network",
        "none",
        *limits,
        "--entrypoint",
        command[0],
        image,
        *command[1:],
    )


@pytest.mark.parametrize("role", ROLES)
def test_image_runs_as_a_numeric_non_root_user(role: str, engine: c.Engine, images: dict[str, str]) -> None:
    user = engine("image", "inspect", "--format", "{{.Config.User}}", images[role]).strip()
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert uid != "0"
    code, out, err = _run(engine, images[role], "id", "-u")
    assert code == 0, err
    assert out.strip() == uid


@dataclass
class Layers:
    """Every regular file of every layer of an image, streamed from the engine's `save` archive."""

    files: int = 0
    bytes: int = 0
    hits: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)  # PEM keys in _PEM_ALLOWED files


def _layer_files(archive: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert len(manifest) == 1
        for layer in manifest[0]["Layers"]:
            stream = outer.extractfile(layer)
            assert stream is not None
            with tarfile.open(fileobj=stream, mode="r|*") as inner:
                for member in inner:
                    if member.isfile():
                        data = inner.extractfile(member)
                        assert data is not None
                        yield member.name, data.read()


def _secrets(ws: Workspace) -> dict[str, bytes]:
    """The owner's secrets as byte strings to look for: whole files, and each PEM key's first body line."""
    paths = [ws.wrap_key, ws.secret_prov / "server.key", ws.signer, ws.client / "client.key"]
    paths += sorted(ws.sim.glob("*.key.pem")) + sorted((ws.owner / "tls").rglob("*.key"))
    out: dict[str, bytes] = {}
    for path in paths:
        data = path.read_bytes()
        out[str(path.relative_to(ws.root))] = data
        lines = data.splitlines()
        if len(lines) > 2 and lines[0].startswith(b"-----BEGIN"):
            out[f"{path.relative_to(ws.root)} (a line of it)"] = lines[1]
    assert ws.wrap_key.stat().st_size == 16
    return out


def _model_hashes(ws: Workspace) -> set[str]:
    plain = ws.owner / "models"
    hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in plain.rglob("*") if p.is_file()}
    assert len(hashes) >= 2  # saved_model.pb and the variables
    return hashes


@pytest.mark.parametrize("role", ROLES)
def test_no_key_and_no_plaintext_model_in_any_layer(
    role: str,
    engine: c.Engine,
    images: dict[str, str],
    workspace: Workspace,
    tmp_path: Path,
) -> None:
    archive = tmp_path / "image.tar"
    archive_format = ["--format", "docker-archive"] if engine.name == "podman" else []
    engine("save", *archive_format, "--output", str(archive), images[role], timeout=600.0)
    secrets = _secrets(workspace)
    model = _model_hashes(workspace)
    scan = Layers()
    for name, data in _layer_files(archive):
        scan.files += 1
        scan.bytes += len(data)
        if _PRIVATE_PEM.search(data):
            if any(pattern.fullmatch(name) for pattern in _PEM_ALLOWED):
                scan.allowed.append(name)
            else:
                scan.hits.append(f"{name}: a PEM private key")
        scan.hits += [f"{name}: {what}" for what, needle in secrets.items() if needle in data]
        if hashlib.sha256(data).hexdigest() in model:
            scan.hits.append(f"{name}: a file of the plaintext model")
        if Path(name).name in ("saved_model.pb", "saved_model.pbtxt", "wrap_key", "ssl.cfg"):
            scan.hits.append(f"{name}: a model or key file by name")
    print(
        f"{images[role]}: scanned {scan.files} files, {scan.bytes >> 20} MiB in all layers: "
        f"{len(scan.hits)} hits; allowed test vectors in {scan.allowed}"
    )
    assert scan.files > 1000
    assert scan.hits == []


def test_client_image_has_no_tensorflow(engine: c.Engine, images: dict[str, str]) -> None:
    code, _, err = _run(engine, images["client"], "python3", "-c", "import tensorflow")
    assert code != 0
    assert "ModuleNotFoundError" in err or "ImportError" in err
    code, out, _ = _run(
        engine,
        images["client"],
        "python3",
        "-c",
        "import pathlib, tensorflow_serving as t; r = pathlib.Path(t.__file__).parents[1] / 'tensorflow';"
        "print('\\n'.join(str(p.relative_to(r)) for p in r.rglob('*') if p.is_file()))",
    )
    assert code == 0
    files = out.split()
    assert files
    assert all(f.endswith(("_pb2.py", "__init__.py")) or "__pycache__" in f for f in files), files[:20]
    assert not [f for f in files if f.endswith(".so")]
    code, out, _ = _run(engine, images["client"], "confserve", "predict", "--help")
    assert code == 0
    assert "--attest" in out


def test_key_service_image_has_no_serving_stack(engine: c.Engine, images: dict[str, str]) -> None:
    for module in ("tensorflow", "grpc", "aiohttp", "keras", "confserve.frontends.grpc"):
        code, _, err = _run(engine, images["secret-prov"], "python3", "-c", f"import {module}")
        assert code != 0, module
        assert "ModuleNotFoundError" in err or "ImportError" in err, module
    code, out, _ = _run(engine, images["secret-prov"], "confserve", "secret-prov", "serve", "--help")
    assert code == 0
    assert "--policy" in out
