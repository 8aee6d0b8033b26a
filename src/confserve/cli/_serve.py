"""`confserve serve`: the model server, with TF Serving's flag names (dashes accepted too).

Only parsing and wiring live here; the server is `confserve.frontends.ModelServer`. Heavy imports
(TensorFlow, gRPC, aiohttp) happen when the command runs, not when the CLI starts.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import click

from confserve.cli._common import fail, reports_errors

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# Module attributes so a test can run the command in-process without touching the test runner's signals.
pthread_sigmask = signal.pthread_sigmask
sigwait = signal.sigwait


def _names(name: str) -> tuple[str, str]:
    return f"--{name}", f"--{name.replace('_', '-')}"


def _read_tls(path: str, wrap_key: Any, bound_path: str | None) -> Any:
    from confserve import pf  # noqa: PLC0415
    from confserve.frontends import TlsConfig  # noqa: PLC0415
    from confserve.tfs_config import SSLConfig, parse_text  # noqa: PLC0415

    if pf.is_protected(path):
        if wrap_key is None:
            fail(f"{path} is a protected file: give --wrap_key")
        data = bytes(pf.read_protected(path, wrap_key, bound_path=bound_path or pf.normalize_path(path)))
    else:
        data = Path(path).read_bytes()
    config = parse_text(SSLConfig, data, what="--ssl_config_file")
    if not config.server_cert or not config.server_key:
        fail("--ssl_config_file must set server_cert and server_key (PEM contents)")
    return TlsConfig(
        cert_chain_pem=config.server_cert.encode(),
        private_key_pem=config.server_key.encode(),
        client_ca_pem=config.custom_ca.encode() if config.client_verify else None,
    )


@click.command("serve")
@click.option(*_names("model_config_file"), "model_config_file", type=click.Path(dir_okay=False, exists=True))
@click.option(*_names("model_name"), "model_name", help="Single model (instead of --model_config_file).")
@click.option(*_names("model_base_path"), "model_base_path", help="Base path of the single model.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address both ports bind to.")  # noqa: S104
@click.option("--port", default=8500, show_default=True, type=click.IntRange(0, 65535), help="gRPC port.")
@click.option(
    *_names("rest_api_port"), "rest_api_port", default=8501, show_default=True, type=click.IntRange(0, 65535)
)
@click.option(*_names("no_rest"), "no_rest", is_flag=True, help="Serve gRPC only.")
@click.option(*_names("ssl_config_file"), "ssl_config_file", type=click.Path(dir_okay=False, exists=True))
@click.option(
    *_names("ssl_config_bound_path"), "ssl_config_bound_path", help="Binding of a protected ssl.cfg."
)
@click.option(
    *_names("wrap_key"),
    "wrap_key_path",
    type=click.Path(dir_okay=False, exists=True),
    help="Models (and ssl.cfg) are Gramine protected files under this key.",
)
@click.option(
    *_names("file_system_poll_wait_seconds"), "poll_seconds", default=1.0, show_default=True, type=float
)
@click.option("--insecure", is_flag=True, help="Allow serving without TLS (development only).")
@reports_errors
def serve(
    model_config_file: str | None,
    model_name: str | None,
    model_base_path: str | None,
    host: str,
    port: int,
    rest_api_port: int,
    no_rest: bool,
    ssl_config_file: str | None,
    ssl_config_bound_path: str | None,
    wrap_key_path: str | None,
    poll_seconds: float,
    insecure: bool,
) -> None:
    """Serve TensorFlow SavedModels over TF Serving's gRPC and REST APIs."""
    # Block SIGINT/SIGTERM before any thread exists (TensorFlow and gRPC start many; they inherit the mask)
    # and take them with sigwait below. A Python handler would only run once the main thread wakes up,
    # which a signal delivered to one of those other threads does not do: the server would never stop.
    pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    from confserve import pf  # noqa: PLC0415
    from confserve.frontends import ModelServer, ServerSettings  # noqa: PLC0415
    from confserve.frontends.grpc import GrpcSettings  # noqa: PLC0415
    from confserve.frontends.rest import RestSettings  # noqa: PLC0415
    from confserve.serving import (  # noqa: PLC0415
        ModelConfig,
        PlainOpener,
        ProtectedOpener,
        parse_model_server_config,
    )

    if model_config_file is not None:
        if model_name or model_base_path:
            fail("give either --model_config_file or --model_name/--model_base_path")
        models = parse_model_server_config(Path(model_config_file).read_text(encoding="utf-8"))
    elif model_name and model_base_path:
        models = (ModelConfig(model_name, model_base_path),)
    else:
        fail("give --model_config_file, or --model_name and --model_base_path")
    if ssl_config_file is None and not insecure:
        fail("give --ssl_config_file, or --insecure to serve without TLS")
    wrap_key = None if wrap_key_path is None else pf.WrapKey.load(wrap_key_path)
    tls = None if ssl_config_file is None else _read_tls(ssl_config_file, wrap_key, ssl_config_bound_path)
    opener = PlainOpener() if wrap_key is None else ProtectedOpener(wrap_key)
    rest = None if no_rest or rest_api_port == 0 else RestSettings(host=host, port=rest_api_port)
    settings = ServerSettings(
        grpc=GrpcSettings(address=f"{host}:{port}"), rest=rest, file_system_poll_wait_seconds=poll_seconds
    )
    server = ModelServer(models, opener, tls, settings, allow_insecure=insecure)
    server.start()
    rest_port = "off" if server.rest is None else str(server.rest.port)
    click.echo(f"confserve: serving gRPC on port {server.grpc.port}, REST on port {rest_port}", err=False)
    sigwait(_STOP_SIGNALS)
    server.stop()
