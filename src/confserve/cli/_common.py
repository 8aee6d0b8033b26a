"""Shared CLI plumbing: turning library errors into a one-line reason and a non-zero exit code, and
options that several commands share, handed to each as one typed value."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

import click

from confserve.errors import ConfserveError
from confserve.pf import PfError

P = ParamSpec("P")
R = TypeVar("R")
_F = TypeVar("_F", bound=Callable[..., Any])

EXIT_FAILURE = 1  # the operation failed; the reason is on stderr (click uses 2 for usage errors)


def fail(message: str) -> None:
    """Print `confserve: error: message` on stderr and exit with EXIT_FAILURE."""
    click.echo(f"confserve: error: {message}", err=True)
    sys.exit(EXIT_FAILURE)


def reports_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Map confserve's own errors (and OS errors) to a one-line reason on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (ConfserveError, PfError) as e:
            fail(str(e))
        except OSError as e:
            where = f" {e.filename!r}" if e.filename else ""
            fail(f"{e.strerror or e}{where}")
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


def option_group(
    keyword: str, build: Callable[..., object], *params: Callable[[Any], Any]
) -> Callable[[_F], _F]:
    """Click parameters declared once for several commands and handed to each as one value: the command
    gets `keyword=build(**their values)` instead of the values one by one. The parameters' names are
    `build`'s own, so the two cannot drift; a group may hold another group. Errors `build` raises are
    reported as `reports_errors` reports them."""
    names = tuple(inspect.signature(build).parameters)
    checked_build = reports_errors(build)

    def apply(command: _F) -> _F:
        @functools.wraps(command)
        def grouped(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return command(*args, **kwargs, **{keyword: checked_build(**values)})

        decorated: Callable[..., Any] = grouped
        for param in reversed(params):
            decorated = param(decorated)
        return cast(_F, decorated)

    return apply
