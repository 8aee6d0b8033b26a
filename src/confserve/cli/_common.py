"""Shared CLI plumbing: turning library errors into a one-line reason and a non-zero exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click

from confserve.errors import ConfserveError
from confserve.pf import PfError

P = ParamSpec("P")
R = TypeVar("R")

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
