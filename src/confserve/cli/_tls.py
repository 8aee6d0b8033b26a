"""`confserve tls`: TLS material for the model server (the reference's generate_*_ssl_config.sh)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

import click

from confserve import pf
from confserve.cli._common import reports_errors

if TYPE_CHECKING:
    from confserve.owner import TlsMaterial

# The library's default (confserve.owner.DEFAULT_SSL_CONFIG_BOUND_PATH), repeated here so that `--help`
# need not import the certificate code; tests/unit/cli/test_main_cli.py checks the two agree.
DEFAULT_SSL_CONFIG_BOUND_PATH: Final = "ssl.cfg"

_options = [
    click.option("--out", "out_dir", default="tls", show_default=True, type=click.Path(file_okay=False)),
    click.option(
        "--key-type", type=click.Choice(["ecdsa-p256", "rsa-3072"]), default="ecdsa-p256", show_default=True
    ),
    click.option(
        "--days", type=click.IntRange(1, 3650), default=365, show_default=True, help="Leaf validity."
    ),
    click.option(
        "--encrypt-with",
        "wrap_key_path",
        type=click.Path(dir_okay=False, exists=True),
        help="Wrap key: also write server/ssl.cfg encrypted, for the untrusted host.",
    ),
    click.option(
        "--bound-path",
        default=DEFAULT_SSL_CONFIG_BOUND_PATH,
        show_default=True,
        help="Path the server opens the encrypted ssl.cfg under.",
    ),
]


F = TypeVar("F", bound=Callable[..., None])


def _common(func: F) -> F:
    for option in reversed(_options):
        func = option(func)
    return func


@click.group("tls")
def tls_group() -> None:
    """TLS material: CA, server and client certificates, and TF Serving's ssl.cfg."""


def _report(material: TlsMaterial) -> None:
    click.echo(f"owner bundle (keep private): {material.root / 'owner'}")
    click.echo(f"client bundle (give to users): {material.client_bundle}")
    if material.ssl_config_encrypted is not None:
        click.echo(
            f"server bundle (for the host): {material.ssl_config_encrypted} "
            f"(encrypted; the server must open it as {material.ssl_config_bound_path})"
        )
    else:
        click.echo(
            "server bundle not written: ssl.cfg holds the server's private key and leaves the owner only "
            "encrypted. Run again with --encrypt-with WRAP_KEY, or: confserve pf encrypt -w WRAP_KEY "
            f"-i {material.ssl_config_plain} -o server/ssl.cfg --bound-path ssl.cfg"
        )


def _run(
    service_domain: str,
    client_domain: str | None,
    out_dir: str,
    key_type: str,
    days: int,
    wrap_key_path: str | None,
    bound_path: str,
) -> None:
    from confserve.owner import generate_tls_material  # noqa: PLC0415 - only when the command runs

    wrap_key = pf.WrapKey.load(wrap_key_path) if wrap_key_path else None
    material = generate_tls_material(
        out_dir,
        service_domain,
        client_domain,
        key_type=key_type,  # type: ignore[arg-type]
        days=days,
        wrap_key=wrap_key,
        ssl_config_bound_path=bound_path,
    )
    _report(material)


@tls_group.command()
@click.argument("service_domain")
@_common
@reports_errors
def oneway(service_domain: str, **options: object) -> None:
    """Server-authenticated TLS for SERVICE_DOMAIN (e.g. grpc.tf-serving.service.com)."""
    _run(service_domain, None, **options)  # type: ignore[arg-type]


@tls_group.command()
@click.argument("service_domain")
@click.argument("client_domain")
@_common
@reports_errors
def twoway(service_domain: str, client_domain: str, **options: object) -> None:
    """Mutual TLS: the server also requires a client certificate for CLIENT_DOMAIN from the same CA."""
    _run(service_domain, client_domain, **options)  # type: ignore[arg-type]
