"""`confserve secret-prov`: the attested key-release service, its owner setup and a diagnostic client.

    confserve secret-prov init DIR [--hostname NAME ...]
    confserve secret-prov serve --listen HOST:PORT --cert CERT --key KEY (--ra-config FILE | --policy FILE)
        --secret NAME=FILE ... [--audit-log FILE] [--metrics-listen HOST:PORT]
        [--sim-platform DIR] [--allow-simulated] [--collateral FILE | --pccs-url URL]
    confserve secret-prov request --servers LIST --ca CA.pem [--sim-platform DIR --signing-key KEY]
        [--name NAME ...] [--out DIR]
    confserve secret-prov audit-verify FILE [--expected-head HEX]

The diagnostic client's simulated identity is the measured description of this command: the installed
confserve package, the entry point `REQUEST_ENTRY_POINT` and no measured arguments, signed by
`--signing-key`. `confserve measure --signing-key KEY --entry-point "confserve secret-prov request"`
prints the same identity, so an owner can approve it for testing.
"""

# ruff: noqa: PLC0415 - attestation, provisioning and certificate code are imported when a command
# runs, not for `--help`

from __future__ import annotations

import datetime
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from confserve import pf
from confserve.cli._common import fail, reports_errors
from confserve.pf import WrapKey

if TYPE_CHECKING:
    from confserve.attestation import Attester, EnclaveIdentity

REQUEST_ENTRY_POINT: Final = "confserve secret-prov request"
REQUEST_MEASURED_ARGS: Final[dict[str, str]] = {}


def _host_port(value: str, option: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 0xFFFF:
        raise click.UsageError(f"{option} expects HOST:PORT, got {value!r}")
    return host, int(port)


@click.group("secret-prov")
def secret_prov_group() -> None:
    """Attested secret provisioning (Gramine-compatible key release)."""


# -- init -----------------------------------------------------------------------------------------


def _default_hostnames() -> tuple[str, ...]:
    """This machine's host name (what other machines most often reach it by), then the loopback names."""
    import socket

    own = socket.gethostname()  # no DNS lookup: getfqdn() may wait for a resolver
    return tuple(dict.fromkeys(n for n in (own, "localhost", "127.0.0.1") if n))


@secret_prov_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--hostname",
    "hostnames",
    multiple=True,
    metavar="NAME",
    help="DNS name or IP address clients use for the service (repeat) [default: this machine's host name, "
    "localhost and 127.0.0.1].",
)
@reports_errors
def init_command(directory: str, hostnames: tuple[str, ...]) -> None:
    """Create DIR/ca.crt, DIR/server.crt, DIR/server.key (0600) and DIR/wrap_key (0600).

    The CA's private key is not kept: to rotate, run init again and give clients the new ca.crt.
    """
    names = hostnames or _default_hostnames()
    target = Path(directory)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = ("ca.crt", "server.crt", "server.key", "wrap_key")
    existing = [name for name in files if (target / name).exists()]
    if existing:
        fail(f"{target} already holds {', '.join(existing)}; not replacing (move them away first)")
    from confserve.owner import key_service_pki

    ca_pem, cert_pem, key_pem = key_service_pki(names, datetime.datetime.now(datetime.UTC))
    pf.write_public_file(target / "ca.crt", ca_pem)
    pf.write_public_file(target / "server.crt", cert_pem)
    pf.write_private_file(target / "server.key", key_pem)
    wrap_key = WrapKey.generate()
    wrap_key.save(target / "wrap_key")
    click.echo(f"wrote {target}/ca.crt, server.crt, server.key (0600), wrap_key (0600)")
    click.echo(f"server certificate names: {', '.join(names)} (clients must use one; --hostname for others)")
    click.echo(f"wrap key fingerprint: {wrap_key.fingerprint()}")


# -- serve ----------------------------------------------------------------------------------------


_F = TypeVar("_F", bound=Callable[..., Any])


def _limit(name: str) -> Callable[[], Any]:
    """A default taken from `ServerLimits` when the command runs: declared there once, with where each
    number comes from. The provisioning package is not imported for `--help`, so help does not show the
    numbers; docs/secret-provisioning.md lists them."""

    def default() -> Any:
        from confserve.provisioning import ServerLimits

        return getattr(ServerLimits(), name)

    return default


def _limit_option(
    flag: str, name: str, help: str | None, *, value_type: click.ParamType | type | None = None
) -> Callable[[_F], _F]:
    """An option of `secret-prov serve` for the `ServerLimits` field `name`: its default is the field's,
    and its range is the field's too (seconds and counts are positive; see ServerLimits). Its value
    reaches the command under the field's name."""
    if value_type is None:
        value_type = click.FloatRange(min=0.001) if name.endswith("_seconds") else click.IntRange(min=1)
    return click.option(flag, name, type=value_type, default=_limit(name), help=help)


@secret_prov_group.command("serve")
# The port is confserve.provisioning.DEFAULT_PORT, repeated so that `--help` stays light (a test checks).
@click.option("--listen", default="0.0.0.0:4433", show_default=True, metavar="HOST:PORT")
@click.option(
    "--cert", "cert_path", required=True, type=click.Path(dir_okay=False), help="Server chain (PEM)."
)
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="Server key (PEM).")
@click.option("--ra-config", type=click.Path(dir_okay=False), help="Reference ra_config.json allow list.")
@click.option("--policy", type=click.Path(dir_okay=False), help="Policy file (.toml native or .json).")
@click.option("--secret", "secret_specs", multiple=True, metavar="NAME=FILE", help="A secret (repeat).")
@click.option("--audit-log", type=click.Path(dir_okay=False), help="Hash-chained JSON-lines audit log.")
@click.option("--metrics-listen", metavar="HOST:PORT", help="Prometheus /metrics and /healthz.")
@click.option("--sim-platform", type=click.Path(file_okay=False), help="Trust this simulated platform.")
@click.option("--allow-simulated", is_flag=True, help="ra_config.json: accept simulated evidence.")
@click.option("--collateral", type=click.Path(dir_okay=False), help="Collateral JSON (dcap-qvl form).")
@click.option("--pccs-url", help="Fetch collateral from this PCCS (API v4).")
@_limit_option(
    "--handshake-timeout", "handshake_timeout_seconds", "Seconds from accept to a completed TLS handshake."
)
@_limit_option("--read-timeout", "read_timeout_seconds", "Seconds from the handshake to a complete request.")
@_limit_option("--max-connections", "max_connections", "Workers that verify, decide and answer.")
@_limit_option(
    "--max-pending",
    "max_pending_connections",
    "Connections before authentication (handshake, request); when full, the oldest of the address "
    "holding the most is dropped.",
)
@_limit_option(
    "--max-pending-per-address",
    "max_pending_per_address",
    "Connections before authentication per source address (IPv6: per /64).",
)
@_limit_option(
    "--rate-limit",
    "rate_limit_per_second",
    "New connections per address per second (0 disables).",
    value_type=float,
)
@_limit_option("--rate-burst", "rate_limit_burst", None)
@reports_errors
def serve_command(
    listen: str,
    cert_path: str,
    key_path: str,
    ra_config: str | None,
    policy: str | None,
    secret_specs: tuple[str, ...],
    audit_log: str | None,
    metrics_listen: str | None,
    sim_platform: str | None,
    allow_simulated: bool,
    collateral: str | None,
    pccs_url: str | None,
    **limits: Any,
) -> None:
    """Release secrets to enclaves whose RA-TLS evidence the policy approves. SIGHUP reloads the policy,
    the secrets and the collateral; SIGTERM or SIGINT stops. Limits not given take the service's
    defaults (listed in docs/secret-provisioning.md)."""
    # `limits`: the `_limit_option`s, each named after its ServerLimits field
    from confserve.provisioning import SecretProvisioningServer, ServerLimits, ServerSettings

    if (ra_config is None) == (policy is None):
        raise click.UsageError("give exactly one of --ra-config and --policy")
    if not secret_specs:
        raise click.UsageError("at least one --secret NAME=FILE is required")
    if collateral and pccs_url:
        raise click.UsageError("give at most one of --collateral and --pccs-url")
    if allow_simulated and sim_platform is None:
        raise click.UsageError("--allow-simulated needs --sim-platform (the simulated root to trust)")
    host, port = _host_port(listen, "--listen")
    metrics = _host_port(metrics_listen, "--metrics-listen") if metrics_listen else None
    if collateral is None and sim_platform is None and pccs_url is None:
        raise click.UsageError("verifying real quotes needs --collateral FILE or --pccs-url URL")
    settings = ServerSettings.from_files(
        cert_path,
        key_path,
        ra_config or policy or "",
        secret_specs,
        ra_config=ra_config is not None,
        allow_simulated=allow_simulated,
        sim_platform=sim_platform,
        collateral=collateral,
        pccs_url=pccs_url,
        listen_host=host,
        listen_port=port,
        audit_log=Path(audit_log) if audit_log else None,
        metrics_host=metrics[0] if metrics else None,
        metrics_port=metrics[1] if metrics else 0,
        limits=ServerLimits(**limits),
    )
    server = SecretProvisioningServer(settings)
    # Signals are blocked in every thread (the server's threads inherit the mask) and taken synchronously
    # here with sigwait: a signal delivered to a worker thread could otherwise leave the main thread asleep.
    signals = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        server.start()
        bound_host, bound_port = server.address
        click.echo(f"listening on {bound_host}:{bound_port}")
        if server.metrics_address is not None:
            click.echo(f"metrics on http://{server.metrics_address[0]}:{server.metrics_address[1]}/metrics")
        if settings.trust.is_simulated:
            click.echo("WARNING: trusting a SIMULATED platform: its quotes prove nothing about hardware")
        sys.stdout.flush()
        while signal.sigwait(signals) == signal.SIGHUP:
            server.reload()
    finally:
        server.stop()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
    click.echo("stopped")


# -- request --------------------------------------------------------------------------------------


def request_identity(signing_key_pem: bytes, isv_prod_id: int, isv_svn: int) -> EnclaveIdentity:
    """The simulated identity `secret-prov request` presents (see the module docstring); computed exactly
    as `confserve measure --signing-key KEY --entry-point "confserve secret-prov request"` does."""
    from confserve.attestation import (
        EnclaveIdentity,
        find_package_root,
        measure_simulated,
        mr_signer_from_pem,
    )

    return EnclaveIdentity(
        mr_enclave=measure_simulated(find_package_root(), REQUEST_ENTRY_POINT, REQUEST_MEASURED_ARGS),
        mr_signer=mr_signer_from_pem(signing_key_pem),
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
    )


# The values of confserve.attestation.RaTlsFormat, repeated so that `--help` imports no attestation code;
# tests/unit/cli/test_main_cli.py checks the two agree.
RATLS_FORMATS: Final = ("gramine-1.3", "gramine-1.4", "gramine-1.8")


@secret_prov_group.command("request")
@click.option("--servers", required=True, metavar="LIST", help="host:port list (separators , ; space).")
@click.option("--ca", "ca_path", required=True, type=click.Path(dir_okay=False), help="CA of the service.")
@click.option("--sim-platform", type=click.Path(file_okay=False), help="Run as a simulated enclave.")
@click.option("--signing-key", type=click.Path(dir_okay=False), help="Simulated enclave signing key (PEM).")
@click.option("--isv-prod-id", type=click.IntRange(0, 0xFFFF), default=0, show_default=True)
@click.option("--isv-svn", type=click.IntRange(0, 0xFFFF), default=0, show_default=True)
@click.option("--name", "names", multiple=True, help="Secret to fetch (repeat; default: all granted).")
@click.option("--gramine", is_flag=True, help="Speak Gramine's own request (one secret, 'default').")
@click.option(
    "--ratls-format",
    type=click.Choice(RATLS_FORMATS),
    default="gramine-1.8",
    show_default=True,
)
@click.option("--deadline", type=click.FloatRange(min=0.001), default=30.0, show_default=True)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), help="Write each secret to DIR/NAME (0600)."
)
@reports_errors
def request_command(
    servers: str,
    ca_path: str,
    sim_platform: str | None,
    signing_key: str | None,
    isv_prod_id: int,
    isv_svn: int,
    names: tuple[str, ...],
    gramine: bool,
    ratls_format: str,
    deadline: float,
    out_dir: str | None,
) -> None:
    """Fetch secrets as an enclave and print their names and sizes (values only go to --out)."""
    from confserve.attestation import (
        RaTlsFormat,
        SimPlatform,
        SimulatedAttester,
        detect_attester,
        format_identity,
    )
    from confserve.provisioning import ClientSettings, RefusedError, SecretProvisioningClient

    attester: Attester
    if sim_platform is not None:
        if signing_key is None:
            raise click.UsageError("--sim-platform needs --signing-key (the simulated enclave's signer)")
        identity = request_identity(Path(signing_key).read_bytes(), isv_prod_id, isv_svn)
        click.echo("simulated enclave identity:")
        click.echo(format_identity(identity), nl=False)
        attester = detect_attester(SimulatedAttester(SimPlatform.load(Path(sim_platform)), identity))
    else:
        attester = detect_attester()
    settings = ClientSettings.from_files(
        servers, ca_path, ratls_format=RaTlsFormat(ratls_format), deadline_seconds=deadline
    )
    client = SecretProvisioningClient(settings, attester)
    try:
        secrets = client.request(names, gramine=gramine)
    except RefusedError as exc:
        click.echo(f"verdict: refused ({exc})")
        sys.exit(1)
    click.echo(f"verdict: released {len(secrets)} secret(s)")
    for name, value in secrets.items():
        click.echo(f"  {name}: {len(value)} bytes")
    if out_dir is not None:
        target = Path(out_dir)
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, value in secrets.items():
            pf.write_private_file(target / name, value, replace=True)
        click.echo(f"written to {target}/ (mode 0600)")


# -- audit-verify ---------------------------------------------------------------------------------


@secret_prov_group.command("audit-verify")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--expected-head", help="A head recorded earlier: also detects entries cut off the end.")
@reports_errors
def audit_verify_command(path: str, expected_head: str | None) -> None:
    """Check the audit log's hash chain; exit 1 and name the first broken entry if it is not intact."""
    from confserve.provisioning import verify_audit_log

    result = verify_audit_log(path, expected_head=expected_head)
    if result.ok:
        click.echo(f"ok: {result.entries} entries, head {result.head}")
        return
    click.echo(
        f"broken at line {result.first_bad_line}: {result.reason} ({result.entries} good entries before)"
    )
    sys.exit(1)
