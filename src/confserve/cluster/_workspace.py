"""The workspace of a local cluster: every file the owner, the untrusted host and the client hold.

`prepare_workspace` runs, in order, the same commands an operator runs by hand (README, "By hand"), each
only when its output is missing, so a second `confserve up` re-uses everything:

| step | command                                            | output                                  |
|------|----------------------------------------------------|-----------------------------------------|
| 1    | confserve sim-platform init / refresh              | owner/sim/ (simulated SGX platform)     |
| 2    | confserve measure gen-signing-key                  | owner/signer.pem (enclave signer)       |
| 3    | confserve secret-prov init                         | owner/secret-prov/ (CA, cert, wrap key) |
| 4    | confserve tls oneway/twoway --encrypt-with         | owner/tls/, client/, host/ssl.cfg       |
| 5    | confserve model example digits / resnet50 (or copy) | owner/models/NAME/VERSION/              |
| 6    | confserve model encrypt --bind-root models/NAME    | host/models/NAME/VERSION/ (encrypted)   |

`owner/` stands for the model owner's trusted machine, `host/` for the untrusted host (the replicas run
with `host/` as working directory, so the bound paths are `models/NAME/...` and `ssl.cfg`), `client/` for
a user. On one machine they are directories; README shows the three-machine arrangement.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from confserve.errors import ConfserveError, Status

__all__ = ["Workspace", "WorkspaceError", "prepare_workspace"]

TlsMode = Literal["oneway", "twoway"]
SERVICE_DOMAIN: Final = "grpc.tf-serving.service.com"  # the reference's server name
CLIENT_DOMAIN: Final = "client.tf-serving.service.com"


class WorkspaceError(ConfserveError):
    """A workspace step failed; the message names the step and where its output is."""

    status = Status.FAILED_PRECONDITION


@dataclass(frozen=True)
class Workspace:
    """The workspace's directories. `root` is made absolute (not resolved through symlinks) on
    construction: the components run in other working directories (the replicas in `host/`, the
    provisioning service in the root), so every path handed to them must name the same file from
    anywhere."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(os.path.abspath(self.root)))

    @property
    def owner(self) -> Path:
        return self.root / "owner"

    @property
    def host(self) -> Path:
        return self.root / "host"

    @property
    def client(self) -> Path:
        return self.root / "client"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def sim(self) -> Path:
        return self.owner / "sim"

    @property
    def signer(self) -> Path:
        return self.owner / "signer.pem"

    @property
    def secret_prov(self) -> Path:
        return self.owner / "secret-prov"

    @property
    def wrap_key(self) -> Path:
        return self.secret_prov / "wrap_key"

    @property
    def policy(self) -> Path:
        return self.owner / "policy.toml"

    @property
    def audit_log(self) -> Path:
        return self.owner / "audit.log"

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def settings_file(self) -> Path:
        return self.root / "workspace.json"

    def settings(self) -> dict[str, str]:
        try:
            data = json.loads(self.settings_file.read_text())
        except (OSError, ValueError):
            return {}
        return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def confserve_command(*args: str) -> list[str]:
    """The command line that runs confserve with this interpreter."""
    return [sys.executable, "-m", "confserve", *args]


def _run(step: str, args: list[str], log: Path, cwd: Path | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(args[2:])}\n".encode())
        out.flush()
        result = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise WorkspaceError(f"{step} failed (exit {result.returncode}); see {log}: {' / '.join(tail)}")


def _model_name(model: str) -> str:
    if model in ("digits", "resnet50"):
        return model
    name = Path(model).resolve().name
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise WorkspaceError(f"cannot name a model after {model!r}; rename its directory")
    return name


def prepare_workspace(
    ws: Workspace,
    *,
    model: str = "digits",
    tls: TlsMode = "twoway",
    progress: Callable[[str], None] = lambda _: None,
) -> str:
    """Create what is missing, re-use what exists; returns the model name."""
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.owner.mkdir(mode=0o700, exist_ok=True)
    ws.owner.chmod(0o700)  # the owner's directory holds the keys and the plaintext model
    previous = ws.settings()
    name = _model_name(model)
    for key, value in (("tls", tls), ("model", name)):
        if previous.get(key, value) != value:
            raise WorkspaceError(
                f"workspace {ws.root} was set up with {key} {previous[key]!r}; "
                f"use another --workspace for {value!r}"
            )
    log = ws.logs / "setup.log"
    _prepare_trust(ws, tls, log, progress)
    _prepare_model(ws, model, name, log, progress)
    ws.settings_file.write_text(json.dumps({"tls": tls, "model": name}))
    return name


def _prepare_trust(ws: Workspace, tls: TlsMode, log: Path, progress: Callable[[str], None]) -> None:
    cmd = confserve_command
    if not ws.sim.exists():
        progress("creating the simulated SGX platform")
        _run("sim-platform init", cmd("sim-platform", "init", str(ws.sim)), log)
    else:
        progress("refreshing the simulated platform's collateral")
        _run("sim-platform refresh", cmd("sim-platform", "refresh", str(ws.sim)), log)
    if not ws.signer.exists():
        progress("creating the enclave signing key")
        _run("gen-signing-key", cmd("measure", "gen-signing-key", str(ws.signer)), log)
    if not ws.wrap_key.exists():
        progress("creating the secret-provisioning service's CA, certificate and the wrap key")
        _run("secret-prov init", cmd("secret-prov", "init", str(ws.secret_prov)), log)
    tls_dir = ws.owner / "tls"
    if not tls_dir.exists():
        progress(f"creating {tls} TLS material for {SERVICE_DOMAIN}")
        domains = [SERVICE_DOMAIN] + ([CLIENT_DOMAIN] if tls == "twoway" else [])
        _run(
            "tls",
            cmd(
                "tls",
                tls,
                *domains,
                "--out",
                str(tls_dir),
                "--encrypt-with",
                str(ws.wrap_key),
                "--bound-path",
                "ssl.cfg",
            ),
            log,
        )
    ws.host.mkdir(parents=True, exist_ok=True)
    if not (ws.host / "ssl.cfg").exists():
        shutil.copyfile(tls_dir / "server" / "ssl.cfg", ws.host / "ssl.cfg")
    if not ws.client.exists():
        shutil.copytree(tls_dir / "client", ws.client)
        shutil.copyfile(ws.secret_prov / "ca.crt", ws.client / "provisioning-ca.crt")
    shutil.copyfile(ws.secret_prov / "ca.crt", ws.host / "provisioning-ca.crt")


def _owner_only(tree: Path) -> None:
    """Make a plaintext tree readable by its owner only: directories 0700, files 0600. Symbolic links
    are neither followed nor changed (a link inside a model tree is not the owner's model)."""
    tree.chmod(0o700)
    for directory, dirnames, filenames in os.walk(tree):
        for name in dirnames:
            path = Path(directory, name)
            if not path.is_symlink():
                path.chmod(0o700)
        for name in filenames:
            path = Path(directory, name)
            if not path.is_symlink():
                path.chmod(0o600)


def _prepare_model(ws: Workspace, model: str, name: str, log: Path, progress: Callable[[str], None]) -> None:
    cmd = confserve_command
    plain = ws.owner / "models" / name
    if not plain.exists():
        if model == "digits":
            progress("training the digits example model (a few seconds)")
            _run("model example digits", cmd("model", "example", "digits", "--out", str(plain)), log)
        elif model == "resnet50":
            progress("building the ResNet-50 example model")
            _run("model example resnet50", cmd("model", "example", "resnet50", "--out", str(plain)), log)
        else:
            progress(f"copying model {model}")
            shutil.copytree(model, plain, symlinks=True)
    _owner_only(plain.parent)
    encrypted = ws.host / "models" / name
    if not encrypted.exists():
        progress(f"encrypting model {name!r} for the host")
        _run(
            "model encrypt",
            cmd(
                "model",
                "encrypt",
                str(plain),
                "-w",
                str(ws.wrap_key),
                "--out",
                str(encrypted),
                "--bind-root",
                f"models/{name}",
            ),
            log,
        )
