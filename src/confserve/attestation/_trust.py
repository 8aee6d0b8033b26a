"""What a verifier trusts, chosen once from its options: the root a quote must chain to and where the
collateral comes from.

A verifier needs only public material, real or simulated, as with Intel's DCAP:

| options                | trusted root                 | collateral                                       |
|------------------------|------------------------------|--------------------------------------------------|
| (none)                 | Intel's SGX Root CA (pinned) | a file (`collateral`) or a PCCS URL              |
| `sim_root` = PEM file  | that simulated root          | `collateral`, else what the evidence carries     |
| `sim_root` = directory | DIR/root_ca.cert.pem         | `collateral`, else DIR/collateral.json if present |

A simulated platform's directory (`confserve sim-platform init`) holds private keys; the directory that
`confserve sim-platform publish` writes holds only the root certificate and the current collateral, and
is what the key service and clients should be given. Either works here, because only those two public
files are ever read. (Simulated evidence is still accepted only where the policy says
`allow_simulated`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confserve.attestation._errors import VerificationError
from confserve.attestation._verify import (
    CachingCollateralSource,
    Collateral,
    CollateralSource,
    FileCollateralSource,
    PccsCollateralSource,
    TrustConfig,
)
from confserve.files import open_input

__all__ = ["SIM_COLLATERAL_FILE", "SIM_ROOT_FILE", "VerifierTrust", "load_simulated_root", "verifier_trust"]

SIM_ROOT_FILE: Final = "root_ca.cert.pem"  # the simulated root, in a platform's and a published directory
SIM_COLLATERAL_FILE: Final = "collateral.json"  # the platform's current collateral (dcap-qvl JSON shape)
_MAX_PEM_BYTES: Final = 64 * 1024  # a root certificate is ~1 KB; a bound for hostile input


@dataclass(frozen=True)
class VerifierTrust:
    """The root and the collateral source (None: only collateral carried by the evidence is used)."""

    trust: TrustConfig
    collateral: CollateralSource | None


def load_simulated_root(path: Path) -> TrustConfig:
    """TrustConfig for a simulated platform from its root certificate: a PEM file, or a directory (a
    platform's or a published one) holding root_ca.cert.pem. Private keys are never read."""
    pem_path = path / SIM_ROOT_FILE if path.is_dir() else path
    try:
        with open_input(pem_path) as handle:
            data = handle.read(_MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        if path.is_dir():
            raise VerificationError(
                f"{path} holds no {SIM_ROOT_FILE}: give the simulated platform's public directory "
                "(confserve sim-platform publish) or its root certificate"
            ) from None
        raise VerificationError(f"{path}: no such file") from None
    except OSError as exc:
        raise VerificationError(f"cannot read {pem_path}: {exc.strerror}") from None
    if len(data) > _MAX_PEM_BYTES:
        raise VerificationError(f"{pem_path} is too large to be a root certificate")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except (ValueError, x509.InvalidVersion):
        raise VerificationError(f"{pem_path} is not a PEM certificate") from None
    return TrustConfig.simulated(cert.public_bytes(serialization.Encoding.DER))


def verifier_trust(
    *, sim_root: Path | None = None, collateral: Path | None = None, pccs_url: str | None = None
) -> VerifierTrust:
    """The one selection of root and collateral from a verifier's options (see the module table)."""
    if collateral is not None and pccs_url is not None:
        raise VerificationError("give a collateral file or a PCCS URL, not both")
    trust = TrustConfig.intel() if sim_root is None else load_simulated_root(sim_root)
    source: CollateralSource | None = None
    if collateral is not None:
        Collateral.from_file(collateral)  # refuse a malformed file now, not at the first quote
        source = FileCollateralSource(collateral)
    elif pccs_url is not None:
        source = CachingCollateralSource(PccsCollateralSource(pccs_url))
    elif sim_root is not None and sim_root.is_dir() and (sim_root / SIM_COLLATERAL_FILE).is_file():
        source = FileCollateralSource(sim_root / SIM_COLLATERAL_FILE)
    return VerifierTrust(trust, source)
