"""`confserve measure`: print an enclave identity for the allow list of a policy.

Simulated deployment (measures the installed confserve package, the entry point and the measured args):

    confserve measure --signing-key enclave-key.pem --arg model_name=resnet --arg rest_api_port=0
    confserve measure --signing-key enclave-key.pem --config measured.toml --json

Real Gramine build (reads the signed SIGSTRUCT Gramine wrote next to the manifest):

    confserve measure --sigstruct tensorflow_model_server.sig

Signing key for simulated deployments (RSA-3072, e = 3, as SGX requires):

    confserve measure gen-signing-key enclave-key.pem

Text output is the four lines of the reference's `get_image_enclave_mr.sh`; `--json` prints one object.
"""

# ruff: noqa: PLC0415 - the attestation code is imported when a command runs, not for `--help`

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from confserve import pf
from confserve.cli._common import fail, reports_errors
from confserve.files import MAX_SMALL_FILE_BYTES, read_input

if TYPE_CHECKING:
    from confserve.attestation import EnclaveIdentity

# The library's default (confserve.attestation.DEFAULT_ENTRY_POINT), repeated so that `--help` imports no
# attestation code; tests/unit/cli/test_main_cli.py checks the two agree.
DEFAULT_ENTRY_POINT: Final = "confserve.cli:main"


def _parse_args(pairs: tuple[str, ...]) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--arg expects KEY=VALUE, got {pair!r}")
        if key in result:
            raise click.UsageError(f"--arg {key} given twice")
        result[key] = value
    return result


def _emit(identity: EnclaveIdentity, as_json: bool, **extra: object) -> None:
    from confserve import attestation

    click.echo(
        attestation.identity_to_json(identity, **extra) if as_json else attestation.format_identity(identity),
        nl=False,
    )


@click.group("measure", invoke_without_command=True)
@click.option("--sigstruct", type=click.Path(dir_okay=False), help="Gramine .sig file (real SGX build).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML file of measured args.")
@click.option("--arg", "arg_pairs", multiple=True, metavar="KEY=VALUE", help="A measured argument (repeat).")
@click.option(
    "--signing-key", type=click.Path(dir_okay=False), help="PEM enclave signing key (public is enough)."
)
@click.option("--isv-prod-id", type=click.IntRange(0, 0xFFFF), default=None, help="ISVPRODID (default 0).")
@click.option("--isv-svn", type=click.IntRange(0, 0xFFFF), default=None, help="ISVSVN (default 0).")
@click.option("--entry-point", default=None, help=f"Measured entry point (default {DEFAULT_ENTRY_POINT}).")
@click.option(
    "--package-root", type=click.Path(file_okay=False), default=None, help="Default: installed confserve."
)
@click.option("--describe", is_flag=True, help="Print the canonical description instead of the identity.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@reports_errors
def measure_group(
    ctx: click.Context,
    sigstruct: str | None,
    config_path: str | None,
    arg_pairs: tuple[str, ...],
    signing_key: str | None,
    isv_prod_id: int | None,
    isv_svn: int | None,
    entry_point: str | None,
    package_root: str | None,
    describe: bool,
    as_json: bool,
) -> None:
    """Print the enclave identity (mr_enclave, mr_signer, isv_prod_id, isv_svn) for a policy."""
    simulated_given = any(
        (
            config_path,
            arg_pairs,
            signing_key,
            isv_prod_id is not None,
            isv_svn is not None,
            entry_point,
            package_root,
        )
    )
    if ctx.invoked_subcommand is not None:
        if sigstruct or simulated_given or describe or as_json:
            raise click.UsageError("measure options cannot be combined with a subcommand")
        return
    from confserve import attestation
    from confserve.attestation import EnclaveIdentity

    if sigstruct is not None:
        if simulated_given or describe:
            raise click.UsageError("--sigstruct cannot be combined with simulated-deployment options")
        parsed = attestation.parse_sigstruct(read_input(sigstruct, max_bytes=MAX_SMALL_FILE_BYTES))
        if parsed.debug:
            click.echo("confserve: warning: DEBUG enclave; a strict policy refuses it", err=True)
        _emit(
            parsed.identity,
            as_json,
            debug=parsed.debug,
            date=parsed.date_iso,
            attributes_flags=f"{parsed.attributes_flags:#018x}",
            attributes_xfrm=f"{parsed.attributes_xfrm:#018x}",
            misc_select=f"{parsed.misc_select:#010x}",
        )
        return
    if config_path is not None and arg_pairs:
        raise click.UsageError("use either --config or --arg, not both")
    args = (
        attestation.load_measured_args_toml(read_input(config_path, max_bytes=MAX_SMALL_FILE_BYTES))
        if config_path
        else _parse_args(arg_pairs)
    )
    root = Path(package_root) if package_root else attestation.find_package_root()
    entry = entry_point or DEFAULT_ENTRY_POINT
    if describe:
        click.echo(attestation.describe_simulated(root, entry, args).decode("ascii"))
        return
    if signing_key is None:
        raise click.UsageError("--signing-key is required for a simulated deployment")
    identity = EnclaveIdentity(
        mr_enclave=attestation.measure_simulated(root, entry, args),
        mr_signer=attestation.mr_signer_from_pem(read_input(signing_key, max_bytes=MAX_SMALL_FILE_BYTES)),
        isv_prod_id=isv_prod_id or 0,
        isv_svn=isv_svn or 0,
    )
    _emit(identity, as_json, entry_point=entry, measured_args=args)


@measure_group.command("gen-signing-key")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing file (changes mr_signer).")
@click.option(
    "--public",
    "public_out",
    type=click.Path(dir_okay=False),
    help="Also write the public key here (PEM): what a simulated host needs to attest as this signer.",
)
@reports_errors
def gen_signing_key(out: str, force: bool, public_out: str | None) -> None:
    """Write a new enclave signing key (RSA-3072, e = 3; PEM PKCS#8, mode 0600) and print its mr_signer."""
    from cryptography.hazmat.primitives import serialization

    from confserve import attestation

    key = attestation.generate_signing_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        pf.write_private_file(out, pem, replace=force)
    except FileExistsError:
        fail(f"{out} exists (use --force to replace it)")
        return  # pragma: no cover (fail exits)
    if public_out is not None:
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pf.write_public_file(public_out, public_pem, replace=True)
        click.echo(f"public key:  {public_out}")
    click.echo(f"mr_signer:   {attestation.mr_signer_from_public_key(key).hex()}")
