"""`confserve render`: configuration files for running confserve's components on their own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from confserve.cli._common import option_group, reports_errors
from confserve.cluster import (
    OVERLAYS,
    VARIANTS,
    GramineConfig,
    K8sSettings,
    Measurement,
    NginxConfig,
    find_stream_module,
    render_gramine_manifest,
    render_k8s_deployment,
    render_k8s_tree,
    render_nginx,
    write_files,
)
from confserve.files import MAX_SMALL_FILE_BYTES, read_input_text


@click.group("render")
def render_group() -> None:
    """Render configuration: the load balancer, Gramine-SGX manifests, Kubernetes deployments."""


@render_group.command("nginx")
@click.option(
    "--backend", "backends", multiple=True, required=True, help="Replica gRPC HOST:PORT (repeatable)."
)
@click.option("--rest-backend", "rest_backends", multiple=True, help="Replica REST HOST:PORT (repeatable).")
@click.option("--listen", default="0.0.0.0:8500", show_default=True, help="gRPC listen HOST:PORT.")
@click.option(
    "--rest-listen", help="REST listen HOST:PORT [default with --rest-backend: the gRPC host, port 8501]."
)
@click.option(
    "--run-dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where nginx keeps its pid and logs.",
)
@click.option(
    "--stream-module", help="Path of ngx_stream_module.so [found automatically; 'none' if built in]."
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@reports_errors
def render_nginx_cmd(
    backends: tuple[str, ...],
    rest_backends: tuple[str, ...],
    listen: str,
    rest_listen: str | None,
    run_dir: Path,
    stream_module: str | None,
    out: Path | None,
) -> None:
    """nginx stream configuration: TLS passthrough to the replicas, passive health checks."""
    run_dir.mkdir(parents=True, exist_ok=True)  # nginx keeps its pid and logs there
    module = None if stream_module == "none" else (stream_module or find_stream_module())
    if rest_backends and rest_listen is None:
        rest_listen = listen.rpartition(":")[0] + ":8501"  # TF Serving's REST port
    text = render_nginx(
        NginxConfig(
            grpc_listen=listen,
            grpc_backends=backends,
            run_dir=run_dir,
            rest_listen=rest_listen,
            rest_backends=rest_backends,
            stream_module=module,
        )
    )
    _emit(text, out)
    if out is not None:
        run = run_dir.resolve()
        click.echo(
            f"run it with: nginx -p {run} -c {out.resolve()} -e {run}/nginx-error.log -g 'daemon off;'",
            err=True,
        )


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)


_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _parse_size(value: str) -> int:
    number, suffix = (value[:-1], value[-1].upper()) if value[-1:].isalpha() else (value, "")
    if suffix not in _SIZE_SUFFIXES or not number.isdigit():
        raise click.BadParameter(f"{value!r} is not a size such as 123456789, 500M or 2G")
    return int(number) * _SIZE_SUFFIXES[suffix]


def _tree_bytes(root: Path) -> int:
    if not root.is_dir():
        raise click.UsageError(f"{root} is not a directory: give --model-dir or --model-size")
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


_F = TypeVar("_F", bound=Callable[..., Any])


def _default_of(
    settings: type, flag: str, *, field: str | None = None, help: str | None = None
) -> Callable[[_F], _F]:
    """An option for the settings class's field: its default (and so its type) is the field's, declared
    once there, and its value reaches the command under the field's name."""
    name = field or flag.removeprefix("--").replace("-", "_")
    return click.option(flag, name, default=getattr(settings, name), show_default=True, help=help)


def _defaults_of(settings: type, *options: tuple[str, str | None]) -> Callable[[_F], _F]:
    """`_default_of` for several options, in order: ("--flag", help) or ("--flag:field", help)."""

    def apply(command: _F) -> _F:
        for spec, help_text in reversed(options):
            flag, _, field = spec.partition(":")
            command = _default_of(settings, flag, field=field or None, help=help_text)(command)
        return command

    return apply


@render_group.command("gramine")
@click.option("--variant", type=click.Choice(VARIANTS), default="confserve", show_default=True)
@click.option("--model-name", required=True, help="The model's name (TF Serving --model_name).")
@click.option(
    "--model-bind-root",
    required=True,
    help="The --out (or --bind-root) given to `confserve model encrypt`, e.g. models/digits.",
)
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Model tree to size the enclave from [default: the bind root, if it is a directory here].",
)
@click.option("--model-size", help="Model size instead of --model-dir (bytes, or 500M, 2G).")
@_defaults_of(
    GramineConfig,
    ("--ssl-config-bound-path", "`confserve tls --bound-path`."),
    ("--secret-prov-servers", "Key servers, HOST:PORT list (measured)."),
    ("--secret-prov-ca", "Path of the key service's CA inside the image (a trusted file)."),
    ("--grpc-port", None),
    ("--rest-port", "confserve variant only."),
    (
        "--grpc-threads",
        "gRPC request threads: tf-serving's --grpc_max_threads; confserve's pool (its default) for sizing.",
    ),
    ("--rest-threads", "confserve's REST pool, for sizing."),
    ("--intra-op-threads", None),
    ("--inter-op-threads", None),
    ("--batch-threads", ">0: TF Serving batching."),
    ("--poll-seconds:file_system_poll_wait_seconds", "--file_system_poll_wait_seconds"),
    ("--isv-prod-id", None),
    ("--isv-svn", None),
    (
        "--release-public-key",
        "confserve variant: path of the owner's release.pub.pem inside the image (a trusted file);"
        " the server then serves only signed releases (docs/releases.md).",
    ),
)
@click.option("--edmm", is_flag=True, help="SGX2 EDMM: add enclave pages on demand.")
@_default_of(GramineConfig, "--arch-libdir")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@reports_errors
def render_gramine_cmd(
    model_bind_root: str, model_dir: Path | None, model_size: str | None, out: Path | None, **fields: Any
) -> None:
    """Gramine manifest template: confserve's server or tensorflow_model_server, arguments fixed."""
    # `fields`: the options named after GramineConfig's fields (--variant, --model-name, _defaults_of's)
    if model_size is not None and model_dir is not None:
        raise click.UsageError("give --model-dir or --model-size, not both")
    size = _parse_size(model_size) if model_size else _tree_bytes(model_dir or Path(model_bind_root))
    config = GramineConfig(model_bind_root=model_bind_root, model_bytes=size, **fields)
    _emit(render_gramine_manifest(config), out)


def _measurements(
    mr_enclave: tuple[str, ...],
    measure_json: tuple[Path, ...],
    mr_signer: str | None,
    isv_prod_id: int | None,
    min_isv_svn: int | None,
) -> list[Measurement]:
    found = [Measurement(mr_enclave=m) for m in mr_enclave]
    found += [Measurement.from_json(read_input_text(p, max_bytes=MAX_SMALL_FILE_BYTES)) for p in measure_json]
    if mr_signer is not None or isv_prod_id is not None or min_isv_svn is not None:
        found.append(Measurement(mr_signer=mr_signer, isv_prod_id=isv_prod_id, min_isv_svn=min_isv_svn))
    return found


_measurement_options = option_group(
    "measurements",
    _measurements,
    click.option("--mr-enclave", multiple=True, help="Allow this MRENCLAVE (repeatable)."),
    click.option(
        "--measurement",
        "measure_json",
        multiple=True,
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="`confserve measure --json` output: allow its MRENCLAVE (repeatable).",
    ),
    click.option("--mr-signer", help="Allow this signer ... "),
    click.option("--isv-prod-id", type=int, help="... with this product ID ..."),
    click.option("--min-isv-svn", type=int, help="... and at least this SVN."),
)


@render_group.command("k8s")
@click.option("--overlay", type=click.Choice(OVERLAYS), required=True)
@click.option(
    "--tree",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=Path("deploy/kubernetes"),
    show_default=True,
    help="The kustomize tree of the confserve repository.",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory to write."
)
@click.option(
    "--image", "server_image", help="Model-server image, NAME[:TAG][@sha256:DIGEST] (pin by digest)."
)
@click.option("--secret-prov-image", help="Key-service image (with --with-secret-prov).")
@_default_of(K8sSettings, "--replicas", help="Initial and minimum replicas.")
@_default_of(K8sSettings, "--max-replicas", help="Autoscaler maximum.")
@_default_of(K8sSettings, "--model-name")
@click.option("--model-bind-root", help="`confserve model encrypt --out` [default: models/MODEL_NAME].")
@_default_of(K8sSettings, "--epc", help="sgx: the enclave size of the manifest.")
@_default_of(K8sSettings, "--secret-prov-host", help="Key server DNS.")
@click.option("--secret-prov-cidr", help="Key server address range, for the NetworkPolicy.")
@click.option("--pccs-cidr", help="sgx: PCCS address range, for the NetworkPolicies.")
@click.option(
    "--pccs-url", help="sgx, with --with-secret-prov: the PCCS the key service fetches collateral from."
)
@_measurement_options
@click.option("--with-secret-prov", is_flag=True, help="Also deploy the key service in this cluster.")
@click.option(
    "--mutual-tls", is_flag=True, help="The server requires client certificates: readiness on the gRPC port."
)
@reports_errors
def render_k8s_cmd(**fields: Any) -> None:
    """A kustomization on top of deploy/kubernetes: images, replicas, model, measurements (policy)."""
    settings = K8sSettings(**fields)  # every option is named after a field (the measurements: a group)
    for path in write_files(settings.out, render_k8s_deployment(settings)):
        click.echo(f"wrote {path}", err=True)
    if not settings.with_secret_prov:
        click.echo(
            f"key service policy: {settings.out / 'policy.toml'} (confserve secret-prov serve --policy)",
            err=True,
        )
    click.echo(f"apply with: kubectl apply -k {settings.out}", err=True)


@render_group.command("k8s-tree")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("deploy/kubernetes"),
    show_default=True,
    help="Where to write the kustomize tree.",
)
@reports_errors
def render_k8s_tree_cmd(out: Path) -> None:
    """The kustomize tree (base, overlays, secret-prov) that `render k8s` builds on."""
    for path in write_files(out, render_k8s_tree()):
        click.echo(f"wrote {path}", err=True)
