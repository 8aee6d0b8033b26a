"""The `confserve` command line: parse, call the library, map errors to exit codes. Nothing else."""

from confserve.cli._main import main

__all__ = ["main"]
