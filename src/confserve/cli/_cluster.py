"""`confserve up | down | status | scale`: a complete confidential serving cluster on this machine."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Final

import click

from confserve.cli._common import fail, reports_errors

_WORKSPACE = click.option(
    "--workspace",
    default="workspace",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path, resolve_path=True),
    help="Where keys, certificates, models, logs and the cluster state live.",
)


def _progress() -> Any:
    start = time.monotonic()

    def show(message: str) -> None:
        click.echo(f"[{time.monotonic() - start:6.1f}s] {message}", err=True)

    return show


def _cluster(workspace: Path) -> Any:
    from confserve.cluster import LocalCluster, Workspace  # noqa: PLC0415

    return LocalCluster(Workspace(workspace), progress=_progress())


@click.command("up")
@_WORKSPACE
@click.option("--replicas", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--model", default="digits", show_default=True, help="digits, resnet50, or a model directory.")
@click.option(
    "--tls", "tls_mode", type=click.Choice(["oneway", "twoway"]), default="twoway", show_default=True
)
@click.option("--once", is_flag=True, help="Stop after the check; exit 0 only if it passed.")
@click.option("--detach", is_flag=True, help="Leave the cluster running in the background (confserve down).")
@reports_errors
def up(workspace: Path, replicas: int, model: str, tls_mode: str, once: bool, detach: bool) -> None:
    """Start the secret-provisioning service, N attested model-server replicas and nginx; check them
    with an attested inference; then show a live status view until Ctrl-C (simulated SGX)."""
    from confserve.cluster import audit_entries, check_cluster  # noqa: PLC0415

    if once and detach:
        fail("--once and --detach exclude each other")
    cluster = _cluster(workspace)
    state = cluster.up(replicas=replicas, model=model, tls=tls_mode, detach=detach)
    try:
        result = check_cluster(cluster.ws, state)
    except Exception as exc:
        if not detach:
            cluster.down()
        fail(f"the check through the load balancer failed: {exc}")
    cluster.record_signature(result.signature)
    ident = state.identity
    click.echo("\nconfserve: a confidential serving cluster is up (simulated SGX)")
    click.echo(f"  replicas' identity: mr_enclave {ident['mr_enclave']}")
    click.echo(f"                      mr_signer  {ident['mr_signer']}  isv_prod_id {ident['isv_prod_id']}  "
               f"isv_svn {ident['isv_svn']}")  # fmt: skip
    releases = [e for e in audit_entries(cluster.ws) if e.get("outcome") == "released"]
    click.echo(f"  key releases (audit log {cluster.ws.audit_log}):")
    for entry in releases[-len(state.replicas) :]:
        mr = entry.get("identity", {}).get("mr_enclave", "?")
        click.echo(
            f"    {entry.get('time')} {entry.get('peer')} mr_enclave {mr[:16]}... got {entry.get('secrets')}"
        )
    click.echo(f"  load balancer: gRPC 127.0.0.1:{state.lb_grpc_port}, REST 127.0.0.1:{state.lb_rest_port} "
               f"(server name {cluster.status()['service_name']})")  # fmt: skip
    click.echo(
        f"  attested inference through nginx: {result.summary} -> {'PASS' if result.passed else 'FAIL'}"
    )
    click.echo(f"  client bundle: {cluster.ws.client}")
    if once:
        cluster.down()
        if not result.passed:
            fail("the check did not give the expected prediction")
        return
    if detach:
        click.echo(f"  running in the background: confserve status --workspace {workspace}; "
                   f"confserve down --workspace {workspace}")  # fmt: skip
        return
    click.echo("  live status below; Ctrl-C stops the cluster\n")
    try:
        _watch(cluster)
    except KeyboardInterrupt:
        click.echo("\nstopping ...", err=True)
    finally:
        cluster.down()


_WATCH_INTERVAL_SECONDS: Final = 2.0  # figures move visibly; a scrape costs a few ms per component


def _interactive() -> bool:
    """Whether stdout is a terminal that understands cursor movement (else: plain lines)."""
    return sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb"


def _watch(cluster: Any, interval: float = _WATCH_INTERVAL_SECONDS) -> None:
    """The live view until Ctrl-C (KeyboardInterrupt, left to the caller): a table redrawn in place on
    a terminal, one plain snapshot every `interval` seconds otherwise."""
    from confserve.cluster import Dashboard, Monitor, render_table, render_text  # noqa: PLC0415

    monitor, dashboard = Monitor(cluster), Dashboard()
    if not _interactive():
        while True:
            click.echo(render_text(dashboard.update(monitor.scrape())) + "\n")
            time.sleep(interval)
    from rich.live import Live  # noqa: PLC0415

    with Live(auto_refresh=False) as live:  # redrawn by moving the cursor up over the last frame
        while True:
            live.update(render_table(dashboard.update(monitor.scrape()), "Ctrl-C to stop"), refresh=True)
            time.sleep(interval)


@click.command("down")
@_WORKSPACE
@reports_errors
def down(workspace: Path) -> None:
    """Stop a cluster started with `confserve up --detach`."""
    cluster = _cluster(workspace)
    if not cluster.ws.state_file.exists():
        fail(f"no cluster is running from {workspace}")
    cluster.down()
    click.echo("cluster stopped")


@click.command("status")
@_WORKSPACE
@click.option("--json", "as_json", is_flag=True, help="Endpoints and state for scripts and other clients.")
@click.option("--watch", is_flag=True, help="Redraw the live view until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 3600),
    default=_WATCH_INTERVAL_SECONDS,
    show_default=True,
    help="Seconds between two views with --watch.",
)
@reports_errors
def status(workspace: Path, as_json: bool, watch: bool, interval: float) -> None:
    """Endpoints, identity and the state of every component."""
    from confserve.cluster import Dashboard, Monitor, render_table, render_text  # noqa: PLC0415

    if as_json and watch:
        fail("--json and --watch exclude each other")
    cluster = _cluster(workspace)
    if watch:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the view ends
            _watch(cluster, interval)
        return
    info = cluster.status()
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    click.echo(f"model {info['model']!r} over {info['tls']} TLS, server name {info['service_name']}")
    click.echo(f"gRPC {info['grpc']}  REST {info['rest']}  client bundle {info['client_bundle']['ca']}")
    click.echo(f"mr_enclave {info['identity']['mr_enclave']}")
    view = Dashboard().update(Monitor(cluster).scrape(info))
    if _interactive():
        from rich.console import Console  # noqa: PLC0415

        Console().print(render_table(view))
    else:
        click.echo(render_text(view))


@click.command("scale")
@click.argument("replicas", type=click.IntRange(1, 16))
@_WORKSPACE
@reports_errors
def scale(replicas: int, workspace: Path) -> None:
    """Add or remove replicas of a detached cluster; nginx is reloaded without dropping connections."""
    cluster = _cluster(workspace)
    cluster.scale(replicas)
    click.echo(f"{replicas} replica(s) serving")
