"""`confserve render`: configuration files for running confserve's components on their own."""

from __future__ import annotations

from pathlib import Path

import click

from confserve.cli._common import reports_errors
from confserve.cluster import NginxConfig, find_stream_module, render_nginx


@click.group("render")
def render_group() -> None:
    """Render configuration for the load balancer (and, later, Kubernetes and Gramine)."""


@render_group.command("nginx")
@click.option(
    "--backend", "backends", multiple=True, required=True, help="Replica gRPC HOST:PORT (repeatable)."
)
@click.option("--rest-backend", "rest_backends", multiple=True, help="Replica REST HOST:PORT (repeatable).")
@click.option("--listen", default="0.0.0.0:8500", show_default=True, help="gRPC listen HOST:PORT.")
@click.option("--rest-listen", help="REST listen HOST:PORT (with --rest-backend).")
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
    module = None if stream_module == "none" else (stream_module or find_stream_module())
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
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)
