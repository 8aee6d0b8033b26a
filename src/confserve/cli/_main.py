"""Top-level command group; each subcommand group lives in its own module."""

from __future__ import annotations

import click

from confserve import __version__
from confserve.cli._attest import attest, sim_platform
from confserve.cli._cluster import down, scale, status, up
from confserve.cli._measure import measure_group
from confserve.cli._model import model_group
from confserve.cli._pf import pf_group
from confserve.cli._predict import bench_client, predict
from confserve.cli._render import render_group
from confserve.cli._secret_prov import secret_prov_group
from confserve.cli._serve import serve
from confserve.cli._tls import tls_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="confserve")
def main() -> None:
    """confserve: confidential TensorFlow-Serving-compatible model serving."""


main.add_command(pf_group, "pf")
main.add_command(predict)
main.add_command(bench_client)
main.add_command(render_group, "render")
main.add_command(model_group, "model")
main.add_command(tls_group, "tls")
main.add_command(sim_platform)
main.add_command(attest)
main.add_command(measure_group, "measure")
main.add_command(serve)
main.add_command(secret_prov_group, "secret-prov")
for command in (up, down, status, scale):
    main.add_command(command)
