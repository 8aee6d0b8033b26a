"""The workspace of a local cluster: every file the owner, the untrusted host and the client hold.

`prepare_workspace` runs, in order, the same commands an operator runs by hand (README, "By hand"), each
only when its output is missing, so a second `confserve up` re-uses everything:

| step | command                                            | output                                  |
|------|----------------------------------------------------|-----------------------------------------|
| 1    | confserve sim-platform init / refresh              | owner/sim/ (simulated SGX platform)     |
| 2    | confserve measure gen-signing-key                  | owner/signer.pem (enclave signer)       |
| 3    | confserve secret-prov init                         | owner/secret-prov/ (CA, cert, wrap key) |
| 4    | confserve tls oneway/twoway --encrypt-with         | owner/tls/, client/, host/ssl.cfg       |
| 5    | confserve release gen-key                          | owner/release/ (release signing key)    |
| 6    | confserve model example digits / resnet50 (or copy) | owner/models/NAME/VERSION/              |
| 7    | confserve pf gen-key                               | owner/secret-prov/keys/NAME (its key)   |
| 8    | confserve model encrypt --release-key ...          | host/models/NAME/ (encrypted, released) |

Each model has its own wrap key, whose id is the model's name (docs/releases.md, "Per-model keys"); the
default key (`secret-prov/wrap_key`) encrypts ssl.cfg. The owner's release public key is copied to
`host/release.pub.pem`, which the replicas pin (`--release_public_key`, measured by content).

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
from confserve.releases import MANIFEST_FILE, Release, ReleaseKey

__all__ = ["Workspace", "WorkspaceError", "key_service_secrets", "prepare_workspace", "published_release"]

TlsMode = Literal["oneway", "twoway"]
SERVICE_DOMAIN: Final = "grpc.tf-serving.service.com"  # the reference's server name
CLIENT_DOMAIN: Final = "client.tf-serving.service.com"
DEFAULT_KEY_ID: Final = "default"  # the key service's default secret: the wrap key of ssl.cfg


class WorkspaceError(ConfserveError, status=Status.FAILED_PRECONDITION):
    """A workspace step failed; the message names the step and where its output is."""


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
    def sim_public(self) -> Path:
        """The platform's public part (sim-platform publish): what the key service and clients verify
        with. The platform's own directory, with its private keys, is only the replicas' to use."""
        return self.root / "platform-public"

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
    def model_keys(self) -> Path:
        """Per-model wrap keys: `model_keys / KEY_ID`, loaded into the key service as secret KEY_ID."""
        return self.secret_prov / "keys"

    @property
    def release_key(self) -> Path:
        return self.owner / "release" / "release.key"

    @property
    def release_public_key(self) -> Path:
        """The owner's release public key as the replicas read it (host/, measured by content)."""
        return self.host / "release.pub.pem"

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
    own_model_key: bool = True,
) -> str:
    """Create what is missing, re-use what exists; returns the model name. The model is encrypted under
    its own key (`own_model_key`, what the local cluster uses) or the default wrap key (for deployments
    whose replicas ask for the default key only, as the Kubernetes overlays do)."""
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
    _prepare_model(ws, model, name, log, progress, own_model_key)
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
    _run(
        "sim-platform publish", cmd("sim-platform", "publish", str(ws.sim), "--out", str(ws.sim_public)), log
    )
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
    if not ws.release_key.exists():
        progress("creating the owner's release signing key")
        _run("release gen-key", cmd("release", "gen-key", str(ws.release_key.parent)), log)
    shutil.copyfile(ws.release_key.parent / "release.pub.pem", ws.release_public_key)


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


def _prepare_model(
    ws: Workspace, model: str, name: str, log: Path, progress: Callable[[str], None], own_key: bool = True
) -> None:
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
    key = ws.model_keys / name if own_key else ws.wrap_key
    if not encrypted.exists():
        if not key.exists():
            progress(f"creating model {name!r}'s own wrap key")
            ws.model_keys.mkdir(mode=0o700, parents=True, exist_ok=True)
            _run("pf gen-key", cmd("pf", "gen-key", "-w", str(key)), log)
        progress(f"encrypting model {name!r} for the host and publishing its first release")
        _run(
            "model encrypt",
            cmd("model", "encrypt", str(plain), "-w", str(key), "--out", str(encrypted),
                "--bind-root", f"models/{name}", "--release-key", str(ws.release_key), "--model", name,
                "--key-id", name if own_key else DEFAULT_KEY_ID),
            log,
        )  # fmt: skip
    elif not (encrypted / MANIFEST_FILE).exists():
        # A workspace from before releases: its tree is under the default key.
        progress(f"publishing the first release of model {name!r}")
        _run(
            "release publish",
            cmd("release", "publish", str(encrypted), "--model", name, "--bind-root", f"models/{name}",
                "--key", str(ws.release_key), "--key-id", DEFAULT_KEY_ID),
            log,
        )  # fmt: skip


def published_release(ws: Workspace, model: str) -> Release:
    """The model's current release, verified with the owner's release key."""
    from confserve.owner import current_release  # noqa: PLC0415

    try:
        key = ReleaseKey.from_pem(ws.release_key.read_bytes())
    except OSError as exc:
        raise WorkspaceError(f"cannot read the release key {ws.release_key}: {exc.strerror}") from None
    release = current_release(ws.host / "models" / model, model, key)
    if release is None:
        raise WorkspaceError(f"model {model!r} has no release in {ws.host / 'models' / model}")
    return release


def key_service_secrets(ws: Workspace) -> list[str]:
    """The key service's --secret arguments: the default key and every per-model key."""
    args = ["--secret", f"{DEFAULT_KEY_ID}={ws.wrap_key}"]
    if ws.model_keys.is_dir():
        for path in sorted(ws.model_keys.iterdir()):
            if path.is_file() and path.name != DEFAULT_KEY_ID:
                args += ["--secret", f"{path.name}={path}"]
    return args
