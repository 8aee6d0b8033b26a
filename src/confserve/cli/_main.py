"""Top-level command group; each subcommand lives in its own module, imported only when it runs.

Start-up time is most of what a short command costs (`confserve pf info` does a few microseconds of
work), and the subcommand modules between them pull in numpy, the attestation stack, gRPC and
TensorFlow's protos. So the top-level group knows its commands only by name, "module:attribute" and
the short help shown by `confserve --help`; a module is imported when its command is resolved. A unit
test checks the table against the real commands (each resolves, and its short help matches).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import click
from click.utils import make_default_short_help

from confserve import __version__
from confserve.tf_runtime import install_import_guard


@dataclass(frozen=True, slots=True)
class LazyCommand:
    """Where a command lives ("package.module:attribute") and its one-line help for the listing."""

    target: str
    short_help: str


COMMANDS: Final[Mapping[str, LazyCommand]] = {
    "attest": LazyCommand("confserve.cli._attest:attest", "Produce and verify SGX DCAP quotes."),
    "bench-client": LazyCommand(
        "confserve.cli._predict:bench_client",
        "Load-test TARGET with random inputs of the model's signature; print latency percentiles and"
        " throughput (the reference's resnet_client_grpc.py -batch -cnum -loop).",
    ),
    "down": LazyCommand(
        "confserve.cli._cluster:down", "Stop a cluster started with `confserve up --detach`."
    ),
    "measure": LazyCommand(
        "confserve.cli._measure:measure_group",
        "Print the enclave identity (mr_enclave, mr_signer, isv_prod_id, isv_svn) for a policy.",
    ),
    "model": LazyCommand(
        "confserve.cli._model:model_group",
        "Make, import, encrypt and inspect TF Serving model trees (BASE/VERSION/saved_model.pb).",
    ),
    "pf": LazyCommand(
        "confserve.cli._pf:pf_group",
        "Gramine-compatible protected files (flags as in gramine-sgx-pf-crypt).",
    ),
    "policy": LazyCommand(
        "confserve.cli._policy:policy", "Write the key service's policy from measurements (JSON files)."
    ),
    "predict": LazyCommand(
        "confserve.cli._predict:predict",
        "Send one Predict request to TARGET (HOST:PORT) and print the result.",
    ),
    "release": LazyCommand(
        "confserve.cli._release:release_group",
        "Owner-signed model releases: which versions and files a replica may load, and how fresh.",
    ),
    "render": LazyCommand(
        "confserve.cli._render:render_group",
        "Render configuration: the load balancer, Gramine-SGX manifests, Kubernetes deployments.",
    ),
    "scale": LazyCommand(
        "confserve.cli._cluster:scale",
        "Add or remove replicas of a detached cluster; nginx is reloaded without dropping connections.",
    ),
    "secret-prov": LazyCommand(
        "confserve.cli._secret_prov:secret_prov_group",
        "Attested secret provisioning (Gramine-compatible key release).",
    ),
    "serve": LazyCommand(
        "confserve.cli._serve:serve", "Serve TensorFlow SavedModels over TF Serving's gRPC and REST APIs."
    ),
    "sim-platform": LazyCommand(
        "confserve.cli._attest:sim_platform", "A simulated SGX DCAP platform (test PKI + collateral + QE)."
    ),
    "status": LazyCommand(
        "confserve.cli._cluster:status", "Endpoints, identity and the state of every component."
    ),
    "tls": LazyCommand(
        "confserve.cli._tls:tls_group",
        "TLS material: CA, server and client certificates, and TF Serving's ssl.cfg.",
    ),
    "up": LazyCommand(
        "confserve.cli._cluster:up",
        "Start the secret-provisioning service, N attested model-server replicas and nginx; check them"
        " with an attested inference; then show a live status view until Ctrl-C (simulated SGX).",
    ),
}


def load_command(entry: LazyCommand) -> click.Command:
    """Import the module of `entry` and return its command object."""
    install_import_guard()  # whatever a command imports, TensorFlow's start-up lines stay off the terminal
    module_name, _, attribute = entry.target.partition(":")
    command = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"{entry.target} is not a click command")
    return command


class LazyGroup(click.Group):
    """A click group whose commands are listed from a table and imported on first use."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.lazy_commands:
            command = load_command(self.lazy_commands[cmd_name])
            self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The listing of `--help`, from the table: showing it imports no subcommand module."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows: list[tuple[str, str]] = []
        for name in names:
            entry = self.lazy_commands.get(name)
            if entry is not None and name not in self.commands:
                rows.append((name, make_default_short_help(entry.short_help, limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="confserve")
def main() -> None:
    """confserve: confidential TensorFlow-Serving-compatible model serving."""
