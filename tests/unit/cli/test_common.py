"""`option_group`: options declared once, handed to a command as one value built from them."""

from __future__ import annotations

from dataclasses import dataclass

import click
from click.testing import CliRunner

from confserve.cli._common import option_group
from confserve.errors import ConfserveError


@dataclass(frozen=True)
class _Inner:
    depth: int
    name: str


@dataclass(frozen=True)
class _Outer:
    target: str
    inner: _Inner


def _inner(depth: int, name: str) -> _Inner:
    if depth > 9:
        raise ConfserveError("too deep")
    return _Inner(depth, name)


_inner_options = option_group(
    "inner", _inner, click.option("--depth", type=int, default=1), click.option("--name", default="n")
)
_outer_options = option_group("outer", _Outer, click.argument("target"), _inner_options)


@click.command()
@_outer_options
@click.option("--own", is_flag=True)
def _command(outer: _Outer, own: bool) -> None:
    click.echo(f"{outer!r} own={own}")


def test_a_command_gets_one_value_from_nested_groups() -> None:
    result = CliRunner().invoke(_command, ["here", "--depth", "3", "--own"])
    assert result.exit_code == 0, result.output
    assert result.output == "_Outer(target='here', inner=_Inner(depth=3, name='n')) own=True\n"


def test_the_options_keep_their_order_in_help() -> None:
    result = CliRunner().invoke(_command, ["--help"])
    assert result.exit_code == 0
    assert result.output.index("--depth") < result.output.index("--name") < result.output.index("--own")


def test_an_error_building_the_value_is_reported_like_the_commands_own() -> None:
    result = CliRunner().invoke(_command, ["here", "--depth", "10"])
    assert result.exit_code == 1
    assert "confserve: error: too deep" in result.output
