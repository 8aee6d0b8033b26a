"""`confserve up | down | status | scale`: a complete confidential serving cluster on this machine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
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


def _cluster(workspace: Path, command: str = "status") -> Any:
    from confserve.cluster import LocalCluster, Workspace  # noqa: PLC0415

    return LocalCluster(Workspace(workspace), progress=_progress(), command=command)


class _Stopped(BaseException):
    """SIGTERM: `confserve down` (from elsewhere) stops the attached `up`, and the cluster itself."""


def _on_sigterm(*_: object) -> None:
    raise _Stopped


@click.command("up")
@_WORKSPACE
@click.option(
    "--replicas",
    type=click.IntRange(1, 16),
    default=None,
    help="How many replicas [default: 2; a running cluster keeps its count].",
)
@click.option("--model", default=None, help="digits, resnet50, or a model directory [default: digits].")
@click.option(
    "--tls",
    "tls_mode",
    type=click.Choice(["oneway", "twoway"]),
    default=None,
    help="[default: twoway]",
)
@click.option("--once", is_flag=True, help="Stop after the check; exit 0 only if it passed.")
@click.option("--detach", is_flag=True, help="Leave the cluster running in the background (confserve down).")
@reports_errors
def up(
    workspace: Path, replicas: int | None, model: str | None, tls_mode: str | None, once: bool, detach: bool
) -> None:
    """Start the secret-provisioning service, N attested model-server replicas and nginx; check them
    with an attested inference; then show a live status view until Ctrl-C (simulated SGX). On a
    workspace whose cluster runs, converge instead: keep what runs, restart what is dead."""
    if once and detach:
        fail("--once and --detach exclude each other")
    cluster = _cluster(workspace, command="up")
    result = cluster.up(replicas=replicas, model=model, tls=tls_mode, detach=detach)
    try:
        _report_and_watch(cluster, result, once=once, detach=detach)
    except KeyboardInterrupt:  # Ctrl-C: an attached cluster stops with its command
        if detach:
            raise
        click.echo("\nstopping ...", err=True)
        _down(cluster)


def _report_and_watch(cluster: Any, result: Any, *, once: bool, detach: bool) -> None:
    from confserve.cluster import audit_entries, check_cluster  # noqa: PLC0415

    workspace = cluster.ws.root
    state = result.state
    if not result.created:
        done = "was already running; converged:" if result.actions else "is already running; nothing to do"
        click.echo(f"confserve: the cluster of this workspace {done}")
        for action in result.actions:
            click.echo(f"  {action}")
    try:
        check = check_cluster(cluster.ws, state)
    except Exception as exc:
        if result.created and not detach:
            cluster.down()
        fail(f"the check through the load balancer failed: {exc}")
    cluster.record_signature(check.signature)
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
    click.echo(f"  attested inference through nginx: {check.summary} -> {'PASS' if check.passed else 'FAIL'}")
    click.echo(f"  client bundle: {cluster.ws.client}")
    if once:
        _down(cluster)
        if not check.passed:
            fail("the check did not give the expected prediction")
        return
    if detach:
        click.echo(f"  running in the background, supervised: confserve status --workspace {workspace}; "
                   f"confserve down --workspace {workspace}")  # fmt: skip
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        supervising = cluster.attach()
        click.echo("  live status below; Ctrl-C stops the cluster" +
                   ("; failed components are restarted\n" if supervising else "\n"))  # fmt: skip
        _watch(cluster, supervise=supervising)
    except _Stopped:
        click.echo("\nstopped by confserve down", err=True)


def _down(cluster: Any) -> None:
    report = cluster.down()
    if report.survivors:
        fail(f"could not stop {len(report.survivors)} process(es): {', '.join(report.survivors)}")


_WATCH_INTERVAL_SECONDS: Final = 2.0  # figures move visibly; a scrape costs a few ms per component


def _interactive() -> bool:
    """Whether stdout is a terminal that understands cursor movement (else: plain lines)."""
    return sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb"


def _watch(cluster: Any, interval: float = _WATCH_INTERVAL_SECONDS, *, supervise: bool = False) -> None:
    """The live view until Ctrl-C (KeyboardInterrupt, left to the caller): a table redrawn in place on
    a terminal, one plain snapshot every `interval` seconds otherwise. With `supervise`, a supervision
    tick (`LocalCluster.supervise_once`) runs between two views, every `cluster.tick_seconds`."""
    from confserve.cluster import Dashboard, Monitor, render_table, render_text  # noqa: PLC0415

    monitor, dashboard = Monitor(cluster), Dashboard()
    tick = min(cluster.tick_seconds, interval) if supervise else interval

    def ticks() -> Any:
        next_view = 0.0
        while True:
            if supervise:
                cluster.supervise_once()
            if time.monotonic() >= next_view:
                next_view = time.monotonic() + interval
                yield dashboard.update(monitor.scrape())
            time.sleep(tick)

    if not _interactive():
        for view in ticks():
            click.echo(render_text(view) + "\n")
    from rich.live import Live  # noqa: PLC0415

    with Live(auto_refresh=False) as live:  # redrawn by moving the cursor up over the last frame
        for view in ticks():
            live.update(render_table(view, "Ctrl-C to stop"), refresh=True)


@click.command("down")
@_WORKSPACE
@reports_errors
def down(workspace: Path) -> None:
    """Stop a cluster started with `confserve up --detach`.

    Stops every process the workspace started (the supervisor, a waiting scale, the components), waits
    for each, and says what it could not stop."""
    cluster = _cluster(workspace, command="down")
    if not cluster.ws.state_file.exists() and not cluster.running_processes():
        fail(f"no cluster is running from {workspace}")
    report = cluster.down()
    if report.survivors:
        fail(f"could not stop {len(report.survivors)} process(es): {', '.join(report.survivors)}")
    click.echo(f"cluster stopped ({report.stopped} processes)")


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
    cluster = _cluster(workspace, command="scale")
    cluster.scale(replicas)
    click.echo(f"{replicas} replica(s) serving")
