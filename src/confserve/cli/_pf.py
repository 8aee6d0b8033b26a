"""`confserve pf`: Gramine protected files, flag-compatible with `gramine-sgx-pf-crypt`.

The reference's commands work by swapping the program name, e.g.
`gramine-sgx-pf-crypt encrypt -w files/wrap-key -i plain/saved_model.pb -o models/m/1/saved_model.pb`.
As in pf-crypt, the bound path is the `-o` string (normalised, as Gramine v1.4+ does); `--bound-path`
states it explicitly, e.g. when the files will be opened from another working directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import click

from confserve import pf
from confserve.cli._common import fail, reports_errors

_wrap_key = click.option(
    "-w",
    "--wrap-key",
    "wrap_key",
    required=True,
    type=click.Path(dir_okay=False),
    help="16-byte raw key file.",
)
_input = click.option(
    "-i", "--input", "input_path", required=True, type=click.Path(exists=True), help="File or directory."
)
_output = click.option(
    "-o", "--output", "output_path", required=True, type=click.Path(), help="File or directory."
)
_verbose = click.option("-v", "--verbose", is_flag=True, help="Print every file processed.")


def _bound_for_check(verify_path: bool, bound_path: str | None, input_path: str) -> str | None:
    if bound_path is not None:
        return bound_path
    return input_path if verify_path else None


@click.group("pf")
def pf_group() -> None:
    """Gramine-compatible protected files (flags as in gramine-sgx-pf-crypt)."""


@pf_group.command("gen-key")
@_wrap_key
@click.option("--force", is_flag=True, help="Replace an existing key file (makes its files unreadable).")
@reports_errors
def gen_key(wrap_key: str, force: bool) -> None:
    """Generate a wrap key: 16 random bytes, written with mode 0600."""
    key = pf.WrapKey.generate()
    key.save(wrap_key, overwrite=force)
    click.echo(f"wrote wrap key {wrap_key} (fingerprint {key.fingerprint()})")


_verify_path = click.option(
    "-V", "--verify", "verify_path", is_flag=True, help="Check the bound path against the -i string."
)
_check_bound_path = click.option(
    "--bound-path", help="Check the bound path against this path (for a directory: its root)."
)


def _report_tree(entries: list[pf.TreeEntry], verbose: bool, detail: Callable[[pf.TreeEntry], str]) -> None:
    if verbose:
        for entry in entries:
            click.echo(f"{entry.relative_path}: {detail(entry)}")


def _refuse_directory_output(output_path: str) -> None:
    if os.path.isdir(output_path):
        fail(f"output {output_path!r} is a directory; name the output file")


@pf_group.command()
@_wrap_key
@_input
@_output
@click.option(
    "--bound-path",
    help="Path the enclave opens the output under (for a directory: its root). Default: the -o string.",
)
@click.option(
    "--format-version",
    type=click.Choice(["1", "2"]),
    default="1",
    show_default=True,
    help="1: read by every Gramine (v1.3.1+); 2: Gramine v1.9+ only.",
)
@_verbose
@reports_errors
def encrypt(
    wrap_key: str,
    input_path: str,
    output_path: str,
    bound_path: str | None,
    format_version: str,
    verbose: bool,
) -> None:
    """Encrypt a file, or every file below a directory, into protected files."""
    key = pf.WrapKey.load(wrap_key)
    version = int(format_version)
    if os.path.isdir(input_path):
        entries = pf.encrypt_tree(input_path, output_path, key, bind_root=bound_path, format_version=version)
        _report_tree(entries, verbose, lambda e: f"bound to {e.bound_path}")
        click.echo(f"encrypted {len(entries)} files into {output_path} (format v{version})")
        return
    _refuse_directory_output(output_path)
    bound = pf.encrypt_file(input_path, output_path, key, bound_path=bound_path, format_version=version)
    click.echo(
        f"encrypted {input_path} -> {output_path} (format v{version}); Gramine must open it as: {bound}"
    )


@pf_group.command()
@_wrap_key
@_input
@_output
@_verify_path
@_check_bound_path
@_verbose
@reports_errors
def decrypt(
    wrap_key: str, input_path: str, output_path: str, verify_path: bool, bound_path: str | None, verbose: bool
) -> None:
    """Decrypt protected files. Nothing is left behind if any file fails authentication."""
    key = pf.WrapKey.load(wrap_key)
    check = _bound_for_check(verify_path, bound_path, input_path)
    if os.path.isdir(input_path):
        entries = pf.decrypt_tree(input_path, output_path, key, bind_root=check)
        _report_tree(entries, verbose, lambda e: f"{e.size} bytes")
        click.echo(f"decrypted {len(entries)} files into {output_path}")
        return
    _refuse_directory_output(output_path)
    size = pf.decrypt_file(input_path, output_path, key, bound_path=check)
    click.echo(f"decrypted {input_path} -> {output_path} ({size} bytes)")


@pf_group.command()
@_wrap_key
@_input
@_verify_path
@_check_bound_path
@reports_errors
def verify(wrap_key: str, input_path: str, verify_path: bool, bound_path: str | None) -> None:
    """Authenticate every node of protected files; writes nothing."""
    key = pf.WrapKey.load(wrap_key)
    check = _bound_for_check(verify_path, bound_path, input_path)
    root = Path(input_path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for path in files:
        rel = path.relative_to(root).as_posix() if root.is_dir() else None
        bound = check if rel is None or check is None else f"{check}/{rel}"
        reader = pf.verify_file(path, key, bound_path=bound)
        click.echo(
            f"ok {path}: {reader.size} bytes, format v{reader.format_version}, bound to {reader.stored_path}"
        )


@pf_group.command()
@_input
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reports_errors
def info(input_path: str, as_json: bool) -> None:
    """Show the plain (unauthenticated) header facts of a protected file; needs no key."""
    facts = pf.header_facts(input_path)
    readers = "Gramine v1.3.1 and later" if facts.major_version == pf.FORMAT_V1 else "Gramine v1.9 and later"
    data = {
        "path": input_path,
        "format_version": facts.major_version,
        "minor_version": facts.minor_version,
        "feature_flags": facts.feature_flags,
        "host_size": facts.host_size,
        "nodes": facts.host_size // 4096,
        "readable_by": readers,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for name, value in data.items():
        click.echo(f"{name}: {value}")
    click.echo("plaintext size, bound path and contents are encrypted (use `pf verify` with the key)")
