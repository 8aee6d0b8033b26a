"""`confserve pf`: Gramine protected files, flag-compatible with gramine-sgx-pf-crypt."""

from __future__ import annotations

import click


@click.group()
def pf() -> None:
    """Gramine-compatible protected files (encrypt, decrypt, verify, inspect)."""
