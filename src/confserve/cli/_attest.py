"""`confserve sim-platform` and `confserve attest`: simulated SGX platforms, quotes and quote verification.

Thin: parse options, read the clock once (here, at the edge), call `confserve.attestation`, print.
`attest verify-quote` prints one JSON verdict on stdout and exits 0 only when the quote verified and the
policy accepted it; usage errors exit 2 (click), everything else 1.
"""

# ruff: noqa: PLC0415 - the attestation code is imported when a command runs, not for `--help`

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from confserve.attestation import SGX_TCB_STATUSES  # a standard-library module: `--help` stays light
from confserve.cli._common import option_group, reports_errors
from confserve.files import MAX_SMALL_FILE_BYTES, read_input

if TYPE_CHECKING:
    from confserve.attestation import (
        Collateral,
        Policy,
        SimCollateralSettings,
        TrustConfig,
        VerifiedEvidence,
    )

EXIT_REFUSED = 1  # verification failed, policy refused, or an operation failed


def _hex_bytes(size: int) -> Callable[[click.Context, click.Parameter, str | None], bytes | None]:
    def convert(_ctx: click.Context, param: click.Parameter, value: str | None) -> bytes | None:
        if value is None:
            return None
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise click.BadParameter("not hexadecimal", param=param) from None
        if len(raw) != size:
            raise click.BadParameter(f"must be {size} bytes ({2 * size} hex digits)", param=param)
        return raw

    return convert


def _settings(
    tcb_status: str, advisory_ids: tuple[str, ...], pck_revoked: bool, validity_days: int
) -> SimCollateralSettings:
    from confserve.attestation import SimCollateralSettings

    return SimCollateralSettings(
        tcb_status=tcb_status,
        advisory_ids=advisory_ids,
        pck_revoked=pck_revoked,
        validity_seconds=validity_days * 86400,
    )


_TCB_STATUS = click.option(
    "--tcb-status",
    type=click.Choice(SGX_TCB_STATUSES),
    default="UpToDate",
    show_default=True,
    help="TCB status the collateral gives this platform (Revoked makes every quote fail).",
)
_ADVISORY = click.option("--advisory-id", "advisory_ids", multiple=True, help="Advisory ID (repeatable).")
_REVOKED = click.option("--pck-revoked", is_flag=True, help="List the PCK certificate in the PCK CRL.")
_VALIDITY = click.option(
    "--validity-days",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Collateral lifetime (nextUpdate - issueDate); Intel's is about 30 days.",
)


# --- sim-platform ---------------------------------------------------------------------------------


@click.group("sim-platform")
def sim_platform() -> None:
    """A simulated SGX DCAP platform (test PKI + collateral + QE). NOT Intel: for development only."""


@sim_platform.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@_TCB_STATUS
@_ADVISORY
@_REVOKED
@_VALIDITY
@reports_errors
def sim_init(
    directory: Path, tcb_status: str, advisory_ids: tuple[str, ...], pck_revoked: bool, validity_days: int
) -> None:
    """Create a simulated platform in DIRECTORY (private keys are written mode 0600)."""
    from confserve.attestation import SimPlatform

    platform = SimPlatform.init(
        directory,
        now=int(time.time()),
        settings=_settings(tcb_status, advisory_ids, pck_revoked, validity_days),
    )
    root_sha256 = hashlib.sha256(platform.root_ca_der).hexdigest()
    click.echo(f"simulated platform created in {directory} (root CA sha256 {root_sha256})")


@sim_platform.command("refresh")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--tcb-status", type=click.Choice(SGX_TCB_STATUSES), help="Change the TCB status.")
@_ADVISORY
@click.option("--pck-revoked/--pck-valid", default=None, help="Change the PCK revocation.")
@click.option("--validity-days", type=click.IntRange(min=1), help="Change the collateral lifetime.")
@reports_errors
def sim_refresh(
    directory: Path,
    tcb_status: str | None,
    advisory_ids: tuple[str, ...],
    pck_revoked: bool | None,
    validity_days: int | None,
) -> None:
    """Re-issue the collateral of the platform in DIRECTORY from now on (same keys)."""
    from confserve.attestation import SimCollateralSettings, SimPlatform

    platform = SimPlatform.load(directory)
    old = platform.settings
    platform.refresh_collateral(
        int(time.time()),
        SimCollateralSettings(
            tcb_status=tcb_status or old.tcb_status,
            advisory_ids=advisory_ids or (old.advisory_ids if tcb_status is None else ()),
            pck_revoked=old.pck_revoked if pck_revoked is None else pck_revoked,
            validity_seconds=old.validity_seconds if validity_days is None else validity_days * 86400,
            tcb_evaluation_data_number=old.tcb_evaluation_data_number,
        ),
    )
    click.echo(f"collateral refreshed; next update at {platform.next_update} (Unix seconds)")


@sim_platform.command("publish")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the public part (root certificate and current collateral).",
)
@reports_errors
def sim_publish(directory: Path, out: Path) -> None:
    """Write the public part of the platform in DIRECTORY: what the key service and clients verify
    with (root_ca.cert.pem, collateral.json), no private key. Run again after `refresh`."""
    from confserve.attestation import SimPlatform

    if out.resolve() == directory.resolve():
        raise click.UsageError("--out must be another directory: the platform's own holds its private keys")
    SimPlatform.load(directory).publish(out)
    click.echo(f"public part of the simulated platform written to {out} (root_ca.cert.pem, collateral.json)")


# --- attest ---------------------------------------------------------------------------------------


@click.group("attest")
def attest() -> None:
    """Produce and verify SGX DCAP quotes."""


@attest.command("quote")
@click.option(
    "--sim-platform",
    "platform_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Simulated platform directory (see `confserve sim-platform init`).",
)
@click.option("--report-data", required=True, callback=_hex_bytes(64), help="64 bytes, hex.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Quote file.")
@click.option("--mr-enclave", callback=_hex_bytes(32), help="32 bytes, hex [default: zeros].")
@click.option("--mr-signer", callback=_hex_bytes(32), help="32 bytes, hex [default: zeros].")
@click.option("--isv-prod-id", type=click.IntRange(0, 0xFFFF), default=0, show_default=True)
@click.option("--isv-svn", type=click.IntRange(0, 0xFFFF), default=0, show_default=True)
@click.option("--debug", is_flag=True, help="Set the DEBUG attribute (dcap-qvl then refuses the quote).")
@reports_errors
def attest_quote(
    platform_dir: Path,
    report_data: bytes,
    out: Path,
    mr_enclave: bytes | None,
    mr_signer: bytes | None,
    isv_prod_id: int,
    isv_svn: int,
    debug: bool,
) -> None:
    """Write a simulated DCAP v3 quote for REPORT_DATA to OUT."""
    from confserve.attestation import EnclaveIdentity, SimPlatform, SimulatedAttester

    identity = EnclaveIdentity(
        mr_enclave=mr_enclave or bytes(32),
        mr_signer=mr_signer or bytes(32),
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
    )
    quote = SimulatedAttester(SimPlatform.load(platform_dir), identity, debug=debug).quote(report_data)
    out.write_bytes(quote)
    click.echo(f"wrote {len(quote)}-byte simulated quote to {out}")


def _load_root(path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from confserve.attestation import AttestationError

    data = read_input(path, max_bytes=MAX_SMALL_FILE_BYTES)
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if b"-----BEGIN" in data
            else x509.load_der_x509_certificate(data)
        )
    except (ValueError, x509.InvalidVersion) as exc:
        raise AttestationError(f"{path} is not a PEM or DER certificate") from exc
    return cert.public_bytes(serialization.Encoding.DER)


def _verdict(evidence: VerifiedEvidence | None, accepted: bool, reason: str) -> dict[str, Any]:
    return {
        "accepted": accepted,
        "reason": reason,
        "status": evidence.tcb_status if evidence else None,
        "advisories": list(evidence.advisory_ids) if evidence else None,
        "mr_enclave": evidence.identity.mr_enclave.hex() if evidence else None,
        "mr_signer": evidence.identity.mr_signer.hex() if evidence else None,
        "isv_prod_id": evidence.identity.isv_prod_id if evidence else None,
        "isv_svn": evidence.identity.isv_svn if evidence else None,
        "report_data": evidence.report_data.hex() if evidence else None,
        "debug": evidence.debug if evidence else None,
        "simulated": evidence.simulated if evidence else None,
    }


def _emit(verdict: dict[str, Any]) -> NoReturn:
    click.echo(json.dumps(verdict, indent=1))
    sys.exit(0 if verdict["accepted"] else EXIT_REFUSED)


@dataclass(frozen=True)
class _Verification:
    """What verifying evidence takes, from the options `verify-quote` and `show-cert` share: collateral or
    a platform, the time, the root, the policy."""

    collateral_file: Path | None
    platform_dir: Path | None
    now: int | None
    root: str | None
    allow_simulated: bool
    policy_file: Path | None

    def setup(self) -> tuple[Collateral, TrustConfig, Policy]:
        """Collateral, trust root and policy; emits a refusal for an untrusted root."""
        from confserve.attestation import (
            INTEL_SGX_ROOT_CA_SHA256,
            SIM_COLLATERAL_FILE,
            AllowRule,
            Collateral,
            Policy,
            TrustConfig,
            load_policy_file,
            load_simulated_root,
        )

        if (self.collateral_file is None) == (self.platform_dir is None):
            raise click.UsageError("give exactly one of --collateral and --sim-platform")
        # A platform's directory or its published public part: only the root and the collateral are read.
        if self.collateral_file is not None:
            collateral = Collateral.from_file(self.collateral_file)
        else:
            assert self.platform_dir is not None
            collateral = Collateral.from_file(self.platform_dir / SIM_COLLATERAL_FILE)
        if self.root is None:
            root_der = (
                load_simulated_root(self.platform_dir).root_ca_der if self.platform_dir is not None else None
            )
        elif self.root == "intel":
            root_der = None
        else:
            root_der = _load_root(Path(self.root))
        if root_der is None or hashlib.sha256(root_der).hexdigest() == INTEL_SGX_ROOT_CA_SHA256:
            trust = TrustConfig.intel()
        elif self.allow_simulated:
            trust = TrustConfig.simulated(root_der)
        else:
            _emit(
                _verdict(
                    None, False, "the root is not Intel's SGX Root CA; pass --allow-simulated to trust it"
                )
            )
        # Policy: the default below is "UpToDate only, no advisories, not debug, any enclave identity,
        # simulated only with --allow-simulated"; --policy FILE replaces it (confserve.attestation._policy).
        policy = (
            load_policy_file(self.policy_file, allow_simulated_ra_config=self.allow_simulated)
            if self.policy_file is not None
            else Policy(rules=(AllowRule(name="any-enclave"),), allow_simulated=self.allow_simulated)
        )
        return collateral, trust, policy


def _verify_and_emit(
    quote: bytes, setup: tuple[Collateral, TrustConfig, Policy], now: int | None, **extra: Any
) -> NoReturn:
    """Verify, apply the policy, print the JSON verdict (with `extra` fields first) and exit."""
    from confserve.attestation import AttestationError, verify

    collateral, trust, policy = setup
    try:
        evidence = verify(quote, collateral, trust, int(time.time()) if now is None else now)
    except AttestationError as exc:
        _emit({**extra, **_verdict(None, False, str(exc))})
    decision = policy.evaluate(evidence)
    _emit({**extra, **_verdict(evidence, decision.accepted, decision.reason)})


_verification_options = option_group(
    "verification",
    _Verification,
    click.option(
        "--collateral",
        "collateral_file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="Collateral JSON (dcap-qvl QuoteCollateralV3 shape).",
    ),
    click.option(
        "--sim-platform",
        "platform_dir",
        type=click.Path(file_okay=False, exists=True, path_type=Path),
        help="Take collateral (and, by default, the root) from a simulated platform's directory or its "
        "public part (sim-platform publish).",
    ),
    click.option("--now", type=click.IntRange(min=0), help="Verification time, Unix seconds [default: now]."),
    click.option(
        "--root",
        help="'intel' (Intel SGX Root CA, pinned by SHA-256) or a root certificate file (PEM or DER) "
        "[default: intel; the platform's root with --sim-platform].",
    ),
    click.option("--allow-simulated", is_flag=True, help="Trust a non-Intel (simulated) root."),
    click.option(
        "--policy",
        "policy_file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="Policy file (.toml native or ra_config .json) [default: UpToDate only, any enclave].",
    ),
)


@attest.command("verify-quote")
@click.argument("quote_file", metavar="QUOTE", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_verification_options
@reports_errors
def attest_verify_quote(quote_file: Path, verification: _Verification) -> None:
    """Verify QUOTE and print a JSON verdict; exit 0 only if it is accepted."""
    setup = verification.setup()
    _verify_and_emit(read_input(quote_file, max_bytes=MAX_SMALL_FILE_BYTES), setup, verification.now)


@attest.command("show-cert")
@click.argument("cert_file", metavar="CERT", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_verification_options
@reports_errors
def attest_show_cert(cert_file: Path, verification: _Verification) -> None:
    """Print the evidence of an RA-TLS certificate (PEM or DER) as JSON.

    Without --collateral/--sim-platform the certificate's structure and the binding of its quote to its
    key are checked and the quote's claims are shown as UNVERIFIED; with them, the quote is verified and
    the policy applied, and the exit code is 0 only if accepted.
    """
    from confserve.attestation import extract_ratls_quote, parse_quote_v3

    fmt, quote = extract_ratls_quote(read_input(cert_file, max_bytes=MAX_SMALL_FILE_BYTES))
    body = parse_quote_v3(quote).report_body
    facts: dict[str, Any] = {
        "format": fmt.value,
        "binding": "quote report_data binds the certificate's public key",
        "mr_enclave": body.mr_enclave.hex(),
        "mr_signer": body.mr_signer.hex(),
        "isv_prod_id": body.isv_prod_id,
        "isv_svn": body.isv_svn,
        "debug": body.debug,
        "quote_bytes": len(quote),
    }
    if verification.collateral_file is None and verification.platform_dir is None:
        click.echo(json.dumps({"verified": False, **facts}, indent=1))
        return
    _verify_and_emit(quote, verification.setup(), verification.now, format=fmt.value)
