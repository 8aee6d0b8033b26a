"""A simulated SGX DCAP platform: a local PKI, signed collateral and a quoting enclave in software.

Theory of operation
-------------------
Real SGX quotes chain to Intel's SGX Root CA. A simulated platform plays every Intel role with keys of its
own, so that a simulated quote goes through exactly the same dcap-qvl verification as a real one and only
the trust anchor differs (docs/formats.md#dcap-root). The roles and what dcap-qvl 0.7.0 requires of them
(docs/formats.md#dcap-simulated; all P-256 / ECDSA-SHA256):

    root CA            self-signed; subject says "NOT INTEL"; signs the root CRL
    PCK Processor CA   CA:TRUE pathlen:0, signed by the root; signs the PCK CRL
    PCK leaf           signed by the PCK CA; carries the Intel SGX extension 1.2.840.113741.1.13.1
                       (PPID, TCB {16 components, PCESVN, CPUSVN}, PCE-ID, FMSPC, SGX type); no EKU;
                       its key signs the QE report
    TCB signing        signed by the root; signs the TCB info and QE identity JSON (compact form)
    attestation key    the QE's P-256 key; signs header || report body of every quote

Collateral (CRLs, TCB info, QE identity) has an issue date and a nextUpdate `validity_seconds` later; an
expired collateral set fails verification, and `refresh_collateral(now)` re-issues it with the same keys.
The TCB info's levels are chosen so that dcap-qvl derives the requested `tcb_status` for this platform;
`pck_revoked` lists the PCK leaf in the PCK CRL. Nothing here reads a clock: `now` is always passed in.

On disk (`init`/`load`), private keys are PKCS#8 PEM files of mode 0600 in a 0700 directory; nothing in this
module logs or puts key material into an error message.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.asn1 import encode_der, sequence
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from confserve import pf
from confserve.attestation._errors import AttestationError
from confserve.attestation._structs import (
    ATTRIBUTE_DEBUG,
    ATTRIBUTE_INIT,
    ATTRIBUTE_MODE64BIT,
    INTEL_QE_VENDOR_ID,
    EcdsaSignatureData,
    QuoteHeader,
    QuoteV3,
    ReportBody,
)
from confserve.attestation._types import SGX_TCB_STATUSES, EnclaveIdentity
from confserve.attestation._x509 import key_usage
from confserve.files import MAX_SMALL_FILE_BYTES, read_input, read_input_text

__all__ = [
    "SGX_TCB_STATUSES",
    "SIM_ROOT_CA_COMMON_NAME",
    "PlatformTcb",
    "SimCollateralSettings",
    "SimPlatform",
    "SimPlatformError",
    "default_attributes",
]

SIM_ROOT_CA_COMMON_NAME: Final = "confserve SIMULATED SGX Root CA - NOT INTEL"
_ORG: Final = "confserve simulation - NOT Intel Corporation"


# Intel SGX PCK certificate extension OIDs (Intel "SGX PCK Certificate and CRL Profile" 1.5, 3.5).
_SGX_EXT: Final = "1.2.840.113741.1.13.1"
_OID_PPID: Final = _SGX_EXT + ".1"
_OID_TCB: Final = _SGX_EXT + ".2"  # components .2.1-.2.16, PCESVN .2.17, CPUSVN .2.18
_OID_PCEID: Final = _SGX_EXT + ".3"
_OID_FMSPC: Final = _SGX_EXT + ".4"
_OID_SGX_TYPE: Final = _SGX_EXT + ".5"

_CERT_VALIDITY_SECONDS: Final = 10 * 365 * 86400  # certificates outlive collateral by far, as Intel's do
_CERT_BACKDATE_SECONDS: Final = 86400  # tolerate verifiers whose clock is a little behind the creator's
_DEFAULT_VALIDITY_SECONDS: Final = 30 * 86400  # Intel's TCB info / QE identity / PCK CRL: about 30 days
_QE_AUTH_DATA: Final = bytes(range(32))  # dcap-qvl requires exactly 32 bytes (4.2); QE3 sends 0..31 too
# The QE's attributes and the QE identity's expectation, as in Intel's QE identity: flags INIT (0x01) |
# PROVISIONKEY (0x10); the mask FB.. ignores MODE64BIT only, so the DEBUG bit is checked and must be clear.
_QE_ATTRIBUTES: Final = bytes.fromhex("11000000000000000000000000000000")
_QE_ATTRIBUTES_MASK: Final = bytes.fromhex("FBFFFFFFFFFFFFFF0000000000000000")
_QE_MR_ENCLAVE: Final = hashlib.sha256(b"confserve simulated quoting enclave").digest()
_QE_MR_SIGNER: Final = hashlib.sha256(b"confserve simulated quoting enclave signer").digest()
_QE_ISV_PROD_ID: Final = 1
_QE_ISV_SVN: Final = 8
_XFRM_X87_SSE_AVX_AVX512: Final = 0xE7  # xfrm of the real sample quote: x87, SSE, AVX, AVX-512 state

_PLATFORM_FILE: Final = "platform.json"
_COLLATERAL_FILE: Final = "collateral.json"
_ROOT_CERT_FILE: Final = "root_ca.cert.pem"  # also what a published (public) directory holds
# (file stem, role) of every key pair; certificates are <stem>.cert.pem, keys <stem>.key.pem (0600).
_ATTESTATION_KEY_FILE: Final = "attestation_key.key.pem"
# The chain dcap-qvl expects (docs/formats.md#dcap-simulated), issuers first:
# (role, subject, issuing role or None for self-signed, is a CA, CRL distribution path).
_CHAIN: Final = (
    ("root_ca", SIM_ROOT_CA_COMMON_NAME, None, True, "rootcacrl"),
    ("pck_ca", "confserve SIMULATED SGX PCK Processor CA - NOT INTEL", "root_ca", True, "rootcacrl"),
    ("pck", "confserve SIMULATED SGX PCK Certificate - NOT INTEL", "pck_ca", False, "pckcrl?ca=processor"),
    ("tcb_signing", "confserve SIMULATED SGX TCB Signing - NOT INTEL", "root_ca", False, "rootcacrl"),
)
_ROLES: Final = tuple(role for role, *_ in _CHAIN)


class SimPlatformError(AttestationError):
    """The simulated platform's directory or options are invalid."""


def default_attributes(*, debug: bool = False) -> bytes:
    """ATTRIBUTES of a 64-bit initialised enclave (INIT|MODE64BIT, optional DEBUG;
    docs/formats.md#quote-body)."""
    flags = ATTRIBUTE_INIT | ATTRIBUTE_MODE64BIT | (ATTRIBUTE_DEBUG if debug else 0)
    return flags.to_bytes(8, "little") + _XFRM_X87_SSE_AVX_AVX512.to_bytes(8, "little")


# --- the Intel SGX extension (DER) --------------------------------------------------------------------
# cryptography's declarative ASN.1 encodes the structure. It has no ENUMERATED type, so SGX-Type is
# encoded as an INTEGER and its universal tag 0x02 rewritten to 0x0A: both types have the same content
# octets (X.690 8.4), so the result is exact DER.


@sequence
class _Component:
    oid: x509.ObjectIdentifier
    value: int | bytes


@sequence
class _TcbEntry:
    oid: x509.ObjectIdentifier
    value: list[_Component]


@sequence
class _SgxExtension:
    ppid: _Component
    tcb: _TcbEntry
    pce_id: _Component
    fmspc: _Component
    sgx_type: _Component


@dataclass(frozen=True, slots=True)
class PlatformTcb:
    """The platform facts a PCK certificate states and the TCB info is keyed by."""

    fmspc: bytes  # 6 bytes
    pce_id: bytes  # 2 bytes
    cpu_svn: bytes  # 16 bytes: the 16 SGX TCB components
    pce_svn: int
    ppid: bytes  # 16 bytes
    sgx_type: int = 0  # 0 = Standard

    def __post_init__(self) -> None:
        sizes = ((self.fmspc, 6), (self.pce_id, 2), (self.cpu_svn, 16), (self.ppid, 16))
        if any(len(value) != size for value, size in sizes):
            raise SimPlatformError("platform TCB field has the wrong size")
        if not 0 <= self.pce_svn <= 0xFFFE:  # +1 must still fit a u16 for the "newer" TCB level
            raise SimPlatformError("pce_svn out of range")

    def extension_der(self) -> bytes:
        def comp(oid: str, value: int | bytes) -> _Component:
            return _Component(oid=x509.ObjectIdentifier(oid), value=value)

        tcb = [comp(f"{_OID_TCB}.{i + 1}", svn) for i, svn in enumerate(self.cpu_svn)]
        tcb += [comp(f"{_OID_TCB}.17", self.pce_svn), comp(f"{_OID_TCB}.18", self.cpu_svn)]
        der = encode_der(
            _SgxExtension(
                ppid=comp(_OID_PPID, self.ppid),
                tcb=_TcbEntry(oid=x509.ObjectIdentifier(_OID_TCB), value=tcb),
                pce_id=comp(_OID_PCEID, self.pce_id),
                fmspc=comp(_OID_FMSPC, self.fmspc),
                sgx_type=comp(_OID_SGX_TYPE, 0x7F),  # placeholder, replaced below
            )
        )
        # The last TLV is the SGX-Type INTEGER 0x7F: 02 01 7F.
        assert der.endswith(b"\x02\x01\x7f"), der[-3:]
        if not 0 <= self.sgx_type <= 0x7F:
            raise SimPlatformError("sgx_type out of range")
        return der[:-3] + bytes((0x0A, 0x01, self.sgx_type))

    def to_json(self) -> dict[str, Any]:
        return {
            "fmspc": self.fmspc.hex(),
            "pce_id": self.pce_id.hex(),
            "cpu_svn": self.cpu_svn.hex(),
            "pce_svn": self.pce_svn,
            "ppid": self.ppid.hex(),
            "sgx_type": self.sgx_type,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PlatformTcb:
        return cls(
            fmspc=bytes.fromhex(obj["fmspc"]),
            pce_id=bytes.fromhex(obj["pce_id"]),
            cpu_svn=bytes.fromhex(obj["cpu_svn"]),
            pce_svn=int(obj["pce_svn"]),
            ppid=bytes.fromhex(obj["ppid"]),
            sgx_type=int(obj["sgx_type"]),
        )


@dataclass(frozen=True, slots=True)
class SimCollateralSettings:
    """What the next collateral issue says about this platform."""

    tcb_status: str = "UpToDate"
    advisory_ids: tuple[str, ...] = ()
    pck_revoked: bool = False
    validity_seconds: int = _DEFAULT_VALIDITY_SECONDS
    tcb_evaluation_data_number: int = 1

    def __post_init__(self) -> None:
        if self.tcb_status not in SGX_TCB_STATUSES:
            raise SimPlatformError(f"unknown TCB status {self.tcb_status!r}")
        if self.validity_seconds <= 0:
            raise SimPlatformError("collateral validity must be positive")

    def to_json(self) -> dict[str, Any]:
        return {
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "pck_revoked": self.pck_revoked,
            "validity_seconds": self.validity_seconds,
            "tcb_evaluation_data_number": self.tcb_evaluation_data_number,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SimCollateralSettings:
        return cls(
            tcb_status=str(obj["tcb_status"]),
            advisory_ids=tuple(str(a) for a in obj["advisory_ids"]),
            pck_revoked=bool(obj["pck_revoked"]),
            validity_seconds=int(obj["validity_seconds"]),
            tcb_evaluation_data_number=int(obj["tcb_evaluation_data_number"]),
        )


# --- helpers ------------------------------------------------------------------------------------------


def _utc(secs: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(secs, datetime.UTC)


def _iso(secs: int) -> str:
    return _utc(secs).strftime("%Y-%m-%dT%H:%M:%SZ")


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-P256-SHA256 signature as raw big-endian r || s (the quote and collateral encoding)."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """X || Y of a P-256 public key, without the 0x04 point prefix (docs/formats.md#quote-signature)."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
        ]
    )


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _crl_dp(path: str) -> x509.CRLDistributionPoints:
    # `.invalid` (RFC 2606) never resolves: nothing will try to fetch from it by accident.
    uri = f"https://confserve-sim.invalid/sgx/certification/v4/{path}"
    return x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(uri)], None, None, None)]
    )


def _issue_cert(
    *,
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    now: int,
    crl_path: str,
    extra: tuple[x509.ExtensionType, ...] = (),
) -> x509.Certificate:
    """A certificate with Intel's PCK profile extensions (AKI, CRL-DP, SKI, critical KU and BC)."""
    public = key.public_key()
    issuer_public = issuer_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - _CERT_BACKDATE_SECONDS))
        .not_valid_after(_utc(now + _CERT_VALIDITY_SECONDS))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=(None if issuer is None else 0) if ca else None),
            critical=True,
        )
        .add_extension(
            key_usage("key_cert_sign", "crl_sign")
            if ca
            else key_usage("digital_signature", "content_commitment"),
            critical=True,
        )
    )
    builder = builder.add_extension(_crl_dp(crl_path), critical=False)
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _issue_crl(
    *,
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    revoked_serials: tuple[int, ...],
    number: int,
    now: int,
    validity_seconds: int,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(_utc(now))
        .next_update(_utc(now + validity_seconds))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_utc(now)).build()
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _compact(obj: Any) -> str:
    # dcap-qvl re-serialises the signed JSON compactly in key order (docs/formats.md#dcap-collateral): sign
    # that form.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


# --- the platform ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pki:
    keys: dict[str, ec.EllipticCurvePrivateKey]  # role -> key (the _ROLES plus "attestation")
    certs: dict[str, x509.Certificate]  # role -> certificate (the _ROLES)


class SimPlatform:
    """A software SGX DCAP platform: PKI, signed collateral and a quoting enclave.

    Build one with `create` (in memory) or `init` (and save to a directory); reopen it with `load`.
    """

    def __init__(
        self,
        *,
        pki: _Pki,
        tcb: PlatformTcb,
        settings: SimCollateralSettings,
        collateral: dict[str, str],
        qe_id: bytes,
        directory: Path | None,
    ) -> None:
        self._pki = pki
        self._tcb = tcb
        self._settings = settings
        self._collateral = collateral
        self._qe_id = qe_id
        self._directory = directory

    # -- construction --

    @classmethod
    def create(
        cls,
        *,
        now: int,
        settings: SimCollateralSettings | None = None,
        tcb: PlatformTcb | None = None,
    ) -> SimPlatform:
        """A fresh platform held in memory, with collateral issued at `now`."""
        tcb = tcb or PlatformTcb(
            fmspc=bytes.fromhex("00C0FFEE0000"),  # not a real Intel FMSPC
            pce_id=bytes(2),
            cpu_svn=bytes((7, 7, 2, 2, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
            pce_svn=13,
            ppid=secrets.token_bytes(16),
        )
        keys = {role: ec.generate_private_key(ec.SECP256R1()) for role in (*_ROLES, "attestation")}
        sgx_extension = x509.UnrecognizedExtension(x509.ObjectIdentifier(_SGX_EXT), tcb.extension_der())
        certs: dict[str, x509.Certificate] = {}
        for role, subject, issuer, ca, crl_path in _CHAIN:
            certs[role] = _issue_cert(
                subject=subject,
                key=keys[role],
                issuer=certs[issuer] if issuer else None,
                issuer_key=keys[issuer or role],
                ca=ca,
                now=now,
                crl_path=crl_path,
                extra=(sgx_extension,) if role == "pck" else (),
            )
        pki = _Pki(keys=keys, certs=certs)
        platform = cls(
            pki=pki,
            tcb=tcb,
            settings=settings or SimCollateralSettings(),
            collateral={},
            qe_id=secrets.token_bytes(16),
            directory=None,
        )
        platform._issue_collateral(now)
        return platform

    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        *,
        now: int,
        settings: SimCollateralSettings | None = None,
        tcb: PlatformTcb | None = None,
    ) -> SimPlatform:
        """Create a platform and save it into `directory` (created 0700; must not hold a platform yet)."""
        path = Path(directory)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (path / _PLATFORM_FILE).exists():
            raise SimPlatformError(f"{path} already holds a simulated platform")
        platform = cls.create(now=now, settings=settings, tcb=tcb)
        platform._directory = path
        platform._save_keys_and_certs()
        platform._save_state()
        return platform

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SimPlatform:
        path = Path(directory)
        try:
            state = json.loads(read_input_text(path / _PLATFORM_FILE, max_bytes=MAX_SMALL_FILE_BYTES))
            collateral = json.loads(read_input_text(path / _COLLATERAL_FILE, max_bytes=MAX_SMALL_FILE_BYTES))
            keys: dict[str, ec.EllipticCurvePrivateKey] = {}
            certs: dict[str, x509.Certificate] = {}
            for role in _ROLES:
                keys[role] = _load_key(path / f"{role}.key.pem")
                certs[role] = x509.load_pem_x509_certificate(
                    read_input(path / f"{role}.cert.pem", max_bytes=MAX_SMALL_FILE_BYTES)
                )
            keys["attestation"] = _load_key(path / _ATTESTATION_KEY_FILE)
            return cls(
                pki=_Pki(keys=keys, certs=certs),
                tcb=PlatformTcb.from_json(state["tcb"]),
                settings=SimCollateralSettings.from_json(state["settings"]),
                collateral={str(k): str(v) for k, v in collateral.items()},
                qe_id=bytes.fromhex(state["qe_id"]),
                directory=path,
            )
        except (OSError, ValueError, KeyError, TypeError, x509.InvalidVersion) as exc:
            raise SimPlatformError(
                f"cannot load the simulated platform in {path}: {type(exc).__name__}"
            ) from exc

    # -- public facts --

    @property
    def root_ca_der(self) -> bytes:
        """The simulated root certificate (DER): the trust anchor for this platform's quotes."""
        return self._pki.certs["root_ca"].public_bytes(serialization.Encoding.DER)

    @property
    def pck_certificate(self) -> x509.Certificate:
        return self._pki.certs["pck"]

    @property
    def tcb(self) -> PlatformTcb:
        return self._tcb

    @property
    def settings(self) -> SimCollateralSettings:
        return self._settings

    @property
    def directory(self) -> Path | None:
        return self._directory

    @property
    def collateral_json(self) -> str:
        """The collateral as dcap-qvl `QuoteCollateralV3` JSON (docs/formats.md#dcap-collateral)."""
        return json.dumps(self._collateral, indent=1)

    @property
    def collateral(self) -> Any:
        """The collateral as a `dcap_qvl.QuoteCollateralV3`."""
        return dcap_qvl.QuoteCollateralV3.from_json(json.dumps(self._collateral))

    @property
    def next_update(self) -> int:
        """The earliest nextUpdate of the current collateral (Unix seconds)."""
        return self._issued_at + self._settings.validity_seconds

    @property
    def _issued_at(self) -> int:
        tcb_info = json.loads(self._collateral["tcb_info"])
        return int(datetime.datetime.strptime(tcb_info["issueDate"], "%Y-%m-%dT%H:%M:%S%z").timestamp())

    # -- collateral --

    def refresh_collateral(self, now: int, settings: SimCollateralSettings | None = None) -> None:
        """Re-issue CRLs, TCB info and QE identity at `now`, optionally with new settings; save if on disk."""
        if settings is not None:
            self._settings = settings
        self._issue_collateral(now)
        if self._directory is not None:
            self._save_state()

    def _tcb_levels(self) -> list[dict[str, Any]]:
        s = self._settings

        def level(cpu_svn: bytes, pce_svn: int, status: str, advisories: tuple[str, ...]) -> dict[str, Any]:
            entry: dict[str, Any] = {
                "tcb": {"sgxtcbcomponents": [{"svn": c} for c in cpu_svn], "pcesvn": pce_svn},
                "tcbDate": "2025-01-01T00:00:00Z",
                "tcbStatus": status,
            }
            if advisories:
                entry["advisoryIDs"] = list(advisories)
            return entry

        ours = level(self._tcb.cpu_svn, self._tcb.pce_svn, s.tcb_status, s.advisory_ids)
        if s.tcb_status == "UpToDate":
            return [ours]
        # A newer level the platform does not reach comes first (levels are sorted newest first), so the
        # status is derived by dcap-qvl's level selection rather than by a single-level shortcut.
        newer = bytes(min(c + 1, 0xFF) for c in self._tcb.cpu_svn)  # pcesvn + 1 keeps it strictly newer
        return [level(newer, self._tcb.pce_svn + 1, "UpToDate", ()), ours]

    def _issue_collateral(self, now: int) -> None:
        s = self._settings
        keys, certs = self._pki.keys, self._pki.certs
        validity = s.validity_seconds
        tcb_info = _compact(
            {
                "id": "SGX",
                "version": 3,
                "issueDate": _iso(now),
                "nextUpdate": _iso(now + validity),
                "fmspc": self._tcb.fmspc.hex().upper(),
                "pceId": self._tcb.pce_id.hex().upper(),
                "tcbType": 0,
                "tcbEvaluationDataNumber": s.tcb_evaluation_data_number,
                "tcbLevels": self._tcb_levels(),
            }
        )
        qe_identity = _compact(
            {
                "id": "QE",
                "version": 2,
                "issueDate": _iso(now),
                "nextUpdate": _iso(now + validity),
                "tcbEvaluationDataNumber": s.tcb_evaluation_data_number,
                "miscselect": "00000000",
                "miscselectMask": "FFFFFFFF",
                "attributes": _QE_ATTRIBUTES.hex().upper(),
                "attributesMask": _QE_ATTRIBUTES_MASK.hex().upper(),
                "mrsigner": _QE_MR_SIGNER.hex().upper(),
                "isvprodid": _QE_ISV_PROD_ID,
                "tcbLevels": [
                    {
                        "tcb": {"isvsvn": _QE_ISV_SVN},
                        "tcbDate": "2025-01-01T00:00:00Z",
                        "tcbStatus": "UpToDate",
                    }
                ],
            }
        )
        root_crl = _issue_crl(
            issuer=certs["root_ca"],
            issuer_key=keys["root_ca"],
            revoked_serials=(),
            number=1,
            now=now,
            validity_seconds=validity,
        )
        pck_crl = _issue_crl(
            issuer=certs["pck_ca"],
            issuer_key=keys["pck_ca"],
            revoked_serials=(certs["pck"].serial_number,) if s.pck_revoked else (),
            number=1,
            now=now,
            validity_seconds=validity,
        )
        root_pem, tcb_signing_pem = _pem(certs["root_ca"]), _pem(certs["tcb_signing"])
        self._collateral = {
            "pck_crl_issuer_chain": _pem(certs["pck_ca"]) + root_pem,
            "root_ca_crl": root_crl.public_bytes(serialization.Encoding.DER).hex(),
            "pck_crl": pck_crl.public_bytes(serialization.Encoding.DER).hex(),
            "tcb_info_issuer_chain": tcb_signing_pem + root_pem,
            "tcb_info": tcb_info,
            "tcb_info_signature": _raw_signature(keys["tcb_signing"], tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": tcb_signing_pem + root_pem,
            "qe_identity": qe_identity,
            "qe_identity_signature": _raw_signature(keys["tcb_signing"], qe_identity.encode()).hex(),
        }

    # -- quoting --

    def quote(
        self,
        report_data: bytes,
        identity: EnclaveIdentity,
        *,
        debug: bool = False,
        attributes: bytes | None = None,
    ) -> bytes:
        """A DCAP v3 quote for an enclave of `identity` that put `report_data` (64 bytes) in its report."""
        if len(report_data) != 64:
            raise SimPlatformError("report_data must be 64 bytes")
        body = ReportBody.build(
            identity,
            report_data,
            attributes=attributes if attributes is not None else default_attributes(debug=debug),
            cpu_svn=self._tcb.cpu_svn,
        )
        return self.sign_report(body).to_bytes()

    def header(self) -> QuoteHeader:
        """The header this platform's QE writes (Intel's QE vendor ID, as dcap-qvl requires;
        docs/formats.md#quote-header)."""
        return QuoteHeader(
            version=3,
            att_key_type=2,
            tee_type=0,
            qe_svn=_QE_ISV_SVN,
            pce_svn=self._tcb.pce_svn,
            qe_vendor_id=INTEL_QE_VENDOR_ID,
            user_data=self._qe_id + bytes(4),
        )

    def sign_report(self, body: ReportBody, header: QuoteHeader | None = None) -> QuoteV3:
        """What the QE does: sign header || body with the attestation key and attach QE report + PCK chain."""
        header = header or self.header()
        attestation_key = self._pki.keys["attestation"]
        attest_pub = _raw_public_key(attestation_key)
        qe_report = ReportBody.build(
            EnclaveIdentity(
                mr_enclave=_QE_MR_ENCLAVE,
                mr_signer=_QE_MR_SIGNER,
                isv_prod_id=_QE_ISV_PROD_ID,
                isv_svn=_QE_ISV_SVN,
            ),
            hashlib.sha256(attest_pub + _QE_AUTH_DATA).digest() + bytes(32),  # E.3
            attributes=_QE_ATTRIBUTES,
            cpu_svn=self._tcb.cpu_svn,
        )
        certs = self._pki.certs
        chain = (_pem(certs["pck"]) + _pem(certs["pck_ca"]) + _pem(certs["root_ca"])).encode("ascii")
        unsigned = QuoteV3(
            header=header,
            report_body=body,
            signature_data=EcdsaSignatureData(
                isv_signature=bytes(64),
                attestation_key=attest_pub,
                qe_report=qe_report,
                qe_report_signature=_raw_signature(self._pki.keys["pck"], qe_report.to_bytes()),
                qe_auth_data=_QE_AUTH_DATA,
                certification_data=chain + b"\x00",  # a NUL, as QE3 writes (docs/formats.md#quote-signature)
            ),
        )
        signature = _raw_signature(attestation_key, unsigned.signed_bytes())
        return dataclasses.replace(
            unsigned, signature_data=dataclasses.replace(unsigned.signature_data, isv_signature=signature)
        )

    # -- the public part --

    def publish(self, directory: str | os.PathLike[str]) -> Path:
        """Write what verifiers need and nothing else: the root certificate and the current collateral
        (what a PCCS would serve). The key service and clients verify with this directory; the platform's
        own directory, with its private keys, stays with whoever plays the platform (the host)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        pf.write_public_file(
            out / _ROOT_CERT_FILE, _pem(self._pki.certs["root_ca"]).encode("ascii"), replace=True
        )
        pf.write_public_file(out / _COLLATERAL_FILE, self.collateral_json.encode(), replace=True)
        return out

    # -- persistence --

    def _save_keys_and_certs(self) -> None:
        assert self._directory is not None
        for role in _ROLES:
            pf.write_private_file(
                self._directory / f"{role}.key.pem", _key_pem(self._pki.keys[role]), replace=True
            )
            pf.write_public_file(
                self._directory / f"{role}.cert.pem",
                _pem(self._pki.certs[role]).encode("ascii"),
                replace=True,
            )
        pf.write_private_file(
            self._directory / _ATTESTATION_KEY_FILE, _key_pem(self._pki.keys["attestation"]), replace=True
        )

    def _save_state(self) -> None:
        assert self._directory is not None
        state = {
            "note": "confserve SIMULATED SGX platform - NOT INTEL; its quotes prove nothing about hardware",
            "tcb": self._tcb.to_json(),
            "settings": self._settings.to_json(),
            "qe_id": self._qe_id.hex(),
        }
        pf.write_public_file(
            self._directory / _PLATFORM_FILE, json.dumps(state, indent=1).encode(), replace=True
        )
        pf.write_public_file(self._directory / _COLLATERAL_FILE, self.collateral_json.encode(), replace=True)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(read_input(path, max_bytes=MAX_SMALL_FILE_BYTES), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not a P-256 key")
    return key
