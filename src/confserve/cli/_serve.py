"""`confserve serve`: the model server, with TF Serving's flag names (dashes accepted too).

Option parsing only: the flags are generated from `confserve.replica.ServeOptions`, where each is
declared once with its default and help, and the start sequence is `confserve.replica.build`. Heavy
imports (TensorFlow, gRPC, aiohttp) happen when the command runs, not when the CLI starts. SIGTERM
drains in-flight requests (--shutdown_grace_seconds) before exiting.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from confserve.cli._common import reports_errors
from confserve.files import MAX_SMALL_FILE_BYTES, read_input

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_WAKE_SECONDS = 0.2  # how soon the main thread notices a stop signal


def install_stop_handlers(stop: threading.Event, *, serving: threading.Event) -> None:
    """SIGINT/SIGTERM set `stop`. (A module attribute, so in-process tests can leave the runner's alone.)

    Before `serving` is set - attestation, the key, TensorFlow's import, the models' loading - they end
    the process at once (exit status 0): no port is open, nothing is in flight and the replica has written
    nothing, so there is nothing to drain, and TensorFlow's import alone would otherwise hold a stop for
    about ten seconds. Once serving, a stop drains in-flight requests (--shutdown_grace_seconds).

    Why no signal mask: numpy's BLAS and TensorFlow start threads before and after this runs, and the
    kernel may deliver a signal to any of them. Python's C-level handler records it wherever it lands and
    the main thread runs the Python handler at its next bytecode, which `wait_for_stop` guarantees by
    never blocking for longer than `_WAKE_SECONDS` (during the start, a long call into C - loading
    TensorFlow's libraries, a model's session - delays it to that call's end).
    """

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if not serving.is_set():
            sys.stderr.write(f"confserve: {signal.Signals(signum).name} before serving: stopped\n")
            sys.stderr.flush()
            os._exit(0)

    for signum in _STOP_SIGNALS:
        signal.signal(signum, on_signal)


def wait_for_stop(stop: threading.Event) -> None:
    while not stop.wait(_WAKE_SECONDS):
        pass


def _click_option(spec: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option from a ServeOptions field (see confserve.replica.OptionSpec)."""
    names = [f"--{spec.name}"]
    if "_" in spec.name:
        names.append(f"--{spec.name.replace('_', '-')}")
    kwargs: dict[str, Any] = {"default": spec.default, "help": spec.help, "envvar": spec.envvar}
    if spec.kind is bool:
        kwargs["is_flag"] = True
    elif spec.path is not None:
        kwargs["type"] = click.Path(exists=True, dir_okay=spec.path == "dir", file_okay=spec.path == "file")
    elif spec.choices is not None:
        kwargs["type"] = click.Choice(spec.choices)
    elif spec.kind is int:
        kwargs["type"] = click.IntRange(spec.minimum, spec.maximum)
    elif spec.kind is float:
        kwargs["type"] = click.FloatRange(spec.minimum, spec.maximum)
    if spec.default not in (None, False):
        kwargs["show_default"] = True
    return click.option(*names, spec.name, **kwargs)


def _serve_options(func: Callable[..., Any]) -> Callable[..., Any]:
    from confserve.replica import option_specs  # noqa: PLC0415

    for spec in reversed(option_specs()):
        func = _click_option(spec)(func)
    return func


def _with_config(config: Path, values: dict[str, Any]) -> dict[str, Any]:
    """The options of a replica configuration file, overlaid with what the command line set itself.
    The command line may set only unmeasured options (ports, limits, the platform): what the replica
    does is what the owner measured from the same file."""
    from confserve import replica  # noqa: PLC0415

    ctx = click.get_current_context()
    try:
        data = read_input(config, max_bytes=MAX_SMALL_FILE_BYTES)
    except OSError as e:
        raise replica.OptionsError(f"cannot read {config}: {e.strerror}") from None
    merged = replica.ServeOptions.from_toml(data, where=str(config))
    measured = {spec.name for spec in replica.option_specs() if spec.measured}
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            if name in measured:
                raise click.UsageError(
                    f"--{name} is measured: set it in {config} (the owner measures that file), not here"
                )
            merged[name] = value
    return merged


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class _TfServingFlags(click.Command):
    """Boolean flags in TF Serving's spellings too: `--enable_batching=true|false` and absl's
    `--noenable_batching`, besides the plain `--enable_batching`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags = {
            name
            for param in self.params
            if isinstance(param, click.Option) and param.is_flag
            for name in param.opts
        }
        rewritten = []
        for arg in args:
            name, sep, value = arg.partition("=")
            if sep and name in flags:
                if value.lower() in _TRUE:
                    rewritten.append(name)
                elif value.lower() not in _FALSE:
                    raise click.BadParameter(f"{value!r} is not true or false", ctx=ctx, param_hint=name)
                continue
            if arg.startswith("--no") and not sep and f"--{arg[4:]}" in flags:
                continue  # absl's --noFLAG: the default (off)
            rewritten.append(arg)
        return super().parse_args(ctx, rewritten)


@click.command("serve", cls=_TfServingFlags)
@_serve_options
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Replica configuration (TOML, the names of these flags): the file the owner measures. The replica "
    "runs in its directory; the command line may add only unmeasured options (ports, limits, platform).",
)
@click.option(
    "--print_measurement", "--print-measurement", "print_measurement", is_flag=True,
    help="Print this replica's identity (simulated SGX) and exit; needs no platform.",
)  # fmt: skip
@reports_errors
def serve(print_measurement: bool, config: Path | None, **values: Any) -> None:
    """Serve TensorFlow SavedModels over TF Serving's gRPC and REST APIs."""
    from confserve import replica  # noqa: PLC0415

    base_dir = None
    if config is not None:
        # Paths given on the command line keep naming what the user meant after the change of directory.
        for spec in replica.option_specs():
            if spec.path is not None and values.get(spec.name) is not None:
                values[spec.name] = os.path.abspath(values[spec.name])
        values = _with_config(config, values)
        base_dir = config.parent
    options = replica.ServeOptions(**values)
    if print_measurement:
        ident, measured = replica.identity(options, base_dir=base_dir)
        click.echo(
            json.dumps(
                {
                    "mr_enclave": ident.mr_enclave.hex(),
                    "mr_signer": ident.mr_signer.hex(),
                    "isv_prod_id": ident.isv_prod_id,
                    "isv_svn": ident.isv_svn,
                    "measured_args": measured,
                }
            )
        )
        return
    if base_dir is not None:
        os.chdir(base_dir)  # the replica's files are named relative to its configuration (the enclave's view)
    stop, serving = threading.Event(), threading.Event()
    install_stop_handlers(stop, serving=serving)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = replica.build(options, stop)
    if server is None:  # stopped while waiting for the key
        return
    serving.set()  # from here a stop drains (a signal since the ports opened, a few lines above, too)
    rest_port = "off" if server.rest is None else str(server.rest.port)
    click.echo(f"confserve: serving gRPC on port {server.grpc.port}, REST on port {rest_port}")
    wait_for_stop(stop)
    logging.getLogger("confserve.serve").info("stopping: draining in-flight requests")
    server.stop()
