"""`confserve policy`: write the key service's policy from measurements.

    confserve serve --config host/replica.toml --print_measurement > replica.json
    confserve policy replica.json --allow-simulated --out policy.toml
    confserve measure --sigstruct app.sig --json > sgx.json && confserve policy sgx.json --out policy.toml

Each measurement (the JSON of `serve --print_measurement` or `measure --json`) becomes one rule that
pins MRENCLAVE, MRSIGNER, ISVPRODID and the ISVSVN as a minimum.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from confserve.cli._common import fail, reports_errors
from confserve.files import open_input

_MAX_MEASUREMENT_BYTES = 1 << 20  # a measurement is a few hundred bytes; bound hostile input


def _identity(path: Path) -> Any:
    from confserve.attestation import EnclaveIdentity  # noqa: PLC0415

    try:
        with open_input(path) as handle:
            data = handle.read(_MAX_MEASUREMENT_BYTES + 1)
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    if len(data) > _MAX_MEASUREMENT_BYTES:
        fail(f"{path} is too large to be a measurement")
    try:
        lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
        # `serve --print_measurement` prints one JSON line; `measure --json` an indented object.
        doc = json.loads(lines[-1] if lines and lines[-1].startswith("{") else "\n".join(lines))
        return EnclaveIdentity(
            mr_enclave=bytes.fromhex(doc["mr_enclave"]),
            mr_signer=bytes.fromhex(doc["mr_signer"]),
            isv_prod_id=int(doc["isv_prod_id"]),
            isv_svn=int(doc["isv_svn"]),
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError):
        fail(
            f"{path} is not a measurement (the JSON of `confserve serve --print_measurement` "
            "or `confserve measure --json`)"
        )
    raise AssertionError("unreachable")  # pragma: no cover


@click.command("policy")
@click.argument("measurements", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="policy.toml to write."
)
@click.option(
    "--allow-simulated",
    is_flag=True,
    help="Accept evidence from a simulated platform (the local cluster, development). Never for real SGX.",
)
@click.option(
    "--secret", "secrets", multiple=True, default=("default",), show_default=True, help="Secret(s) granted."
)
@click.option("--force", is_flag=True, help="Replace an existing policy file.")
@reports_errors
def policy(
    measurements: tuple[Path, ...], out: Path, allow_simulated: bool, secrets: tuple[str, ...], force: bool
) -> None:
    """Write the key service's policy from measurements (JSON files).

    The policy approves exactly the MEASUREMENTS."""
    from confserve.attestation import policy_for_identities, render_policy_toml  # noqa: PLC0415

    identities = [_identity(path) for path in measurements]
    chosen = policy_for_identities(identities, allow_simulated=allow_simulated, secrets=secrets)
    text = render_policy_toml(
        chosen,
        comment="Written by `confserve policy` from: " + ", ".join(p.name for p in measurements),
    )
    if out.exists() and not force:
        fail(f"{out} exists: --force to replace it")
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(out)
    click.echo(
        f"policy for {len(identities)} identit{'y' if len(identities) == 1 else 'ies'} written to {out}"
    )
