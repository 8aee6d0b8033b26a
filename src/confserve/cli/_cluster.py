"""`confserve up | down | status | scale`: a complete confidential serving cluster on this machine."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

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
    from confserve.cluster._local import LocalCluster  # noqa: PLC0415
    from confserve.cluster._workspace import Workspace  # noqa: PLC0415

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
    from confserve.cluster._check import audit_entries, check_cluster  # noqa: PLC0415

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


def _watch(cluster: Any) -> None:
    from confserve.cluster._check import nginx_connections  # noqa: PLC0415

    while True:
        status = cluster.status()
        connections = nginx_connections(cluster.ws)
        parts = []
        for r in status["replicas"]:
            mark = "ready" if r["ready"] else ("up" if r["alive"] else "DOWN")
            upstream = "127.0.0.1:" + str(r["grpc_port"])
            parts.append(f"#{r['index']} {mark} conns={connections.get(upstream, 0)}")
        prov = "ok" if status["secret_provisioning"]["alive"] else "DOWN"
        lb = "ok" if status["load_balancer"]["alive"] else "DOWN"
        click.echo(f"{time.strftime('%H:%M:%S')} secret-prov {prov} | nginx {lb} | " + " | ".join(parts))
        time.sleep(2)


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
@reports_errors
def status(workspace: Path, as_json: bool) -> None:
    """Endpoints, identity and the state of every component."""
    info = _cluster(workspace).status()
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    click.echo(f"model {info['model']!r} over {info['tls']} TLS, server name {info['service_name']}")
    click.echo(f"gRPC {info['grpc']}  REST {info['rest']}  client bundle {info['client_bundle']['ca']}")
    click.echo(f"mr_enclave {info['identity']['mr_enclave']}")
    for r in info["replicas"]:
        click.echo(
            f"replica {r['index']}: pid {r['pid']} {'ready' if r['ready'] else 'not ready'} ({r['log']})"
        )


@click.command("scale")
@click.argument("replicas", type=click.IntRange(1, 16))
@_WORKSPACE
@reports_errors
def scale(replicas: int, workspace: Path) -> None:
    """Add or remove replicas of a detached cluster; nginx is reloaded without dropping connections."""
    cluster = _cluster(workspace)
    cluster.scale(replicas)
    click.echo(f"{replicas} replica(s) serving")
