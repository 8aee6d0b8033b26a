"""Producing quotes: inside Gramine-SGX through /dev/attestation, or from a simulated platform.

An `Attester` turns 64 bytes of report_data (typically a hash binding a TLS key or a nonce) into a DCAP quote.
`GramineAttester` follows docs/formats.md#dev-attestation: write all 64 bytes to `user_report_data` in one
`write`, then open `quote` and read it to EOF (the quote is generated at open time). Its file operations go
through `AttestationFiles`, so tests drive it with an in-memory fake; the real implementation is
`DevAttestationFiles`. Every quote handed out is parsed and checked to carry the requested report_data, so a
stale or foreign quote never leaves this module.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from confserve.attestation._errors import AttestationError
from confserve.attestation._simplatform import SimPlatform
from confserve.attestation._structs import MAX_QUOTE_BYTES, parse_quote_v3
from confserve.attestation._types import EnclaveIdentity
from confserve.errors import Status

__all__ = [
    "DEV_ATTESTATION",
    "REPORT_DATA_SIZE",
    "AttestationFiles",
    "Attester",
    "AttesterUnavailableError",
    "DevAttestationFiles",
    "GramineAttester",
    "SimulatedAttester",
    "detect_attester",
]

DEV_ATTESTATION: Final = Path("/dev/attestation")
REPORT_DATA_SIZE: Final = 64  # SGX REPORTDATA (docs/formats.md#quote-body)
# attestation_type holds "none", "epid" or "dcap" (docs/formats.md#dev-attestation); longer is not Gramine's.
_MAX_TYPE_BYTES: Final = 16


class AttesterUnavailableError(AttestationError, status=Status.FAILED_PRECONDITION):
    """No way to produce a quote here (not in Gramine-SGX with DCAP, and no simulation configured)."""


@runtime_checkable
class Attester(Protocol):
    """Produces a DCAP quote over 64 bytes of report_data."""

    @property
    def simulated(self) -> bool: ...

    def quote(self, report_data: bytes) -> bytes: ...


def _check_report_data(report_data: bytes) -> None:
    if not isinstance(report_data, bytes) or len(report_data) != REPORT_DATA_SIZE:
        raise AttestationError(f"report_data must be exactly {REPORT_DATA_SIZE} bytes")


class SimulatedAttester:
    """Quotes from a `SimPlatform` for an enclave of the given identity (no SGX hardware involved)."""

    def __init__(self, platform: SimPlatform, identity: EnclaveIdentity, *, debug: bool = False) -> None:
        self._platform = platform
        self._identity = identity
        self._debug = debug

    @property
    def simulated(self) -> bool:
        return True

    @property
    def identity(self) -> EnclaveIdentity:
        return self._identity

    def quote(self, report_data: bytes) -> bytes:
        _check_report_data(report_data)
        return self._platform.quote(report_data, self._identity, debug=self._debug)


class AttestationFiles(Protocol):
    """The three operations GramineAttester needs on /dev/attestation."""

    def exists(self, name: str) -> bool: ...

    def read(self, name: str, max_bytes: int) -> bytes: ...

    def write(self, name: str, data: bytes) -> None: ...


class DevAttestationFiles:
    """The real /dev/attestation pseudo-files (Gramine's Linux-SGX PAL)."""

    def __init__(self, root: Path = DEV_ATTESTATION) -> None:
        self._root = root

    def exists(self, name: str) -> bool:
        return (self._root / name).exists()

    def read(self, name: str, max_bytes: int) -> bytes:
        """Read to EOF, at most `max_bytes` (+1 so the caller can tell oversize from exactly full)."""
        chunks: list[bytes] = []
        total = 0
        with open(self._root / name, "rb", buffering=0) as handle:
            while total <= max_bytes:
                chunk = handle.read(max_bytes + 1 - total)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        return b"".join(chunks)

    def write(self, name: str, data: bytes) -> None:
        """One `write` call: every write replaces the pseudo-file's whole value
        (docs/formats.md#dev-attestation)."""
        fd = os.open(self._root / name, os.O_WRONLY)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise AttestationError(f"short write to /dev/attestation/{name}")


class GramineAttester:
    """DCAP quotes from inside a Gramine-SGX enclave (`sgx.remote_attestation = "dcap"` in the manifest)."""

    def __init__(self, files: AttestationFiles | None = None) -> None:
        self._files = files if files is not None else DevAttestationFiles()
        # user_report_data is process-wide: writing it and reading the quote must not interleave.
        self._lock = threading.Lock()
        try:
            kind = self._files.read("attestation_type", _MAX_TYPE_BYTES)
        except OSError as exc:
            raise AttesterUnavailableError("cannot read /dev/attestation/attestation_type") from exc
        if kind.strip(b"\0\n ") != b"dcap":
            shown = kind[:_MAX_TYPE_BYTES].decode("ascii", "replace").strip()
            raise AttesterUnavailableError(f"Gramine attestation type is {shown!r}, not 'dcap'")

    @property
    def simulated(self) -> bool:
        return False

    def quote(self, report_data: bytes) -> bytes:
        _check_report_data(report_data)
        with self._lock:
            try:
                self._files.write("user_report_data", report_data)
                quote = self._files.read("quote", MAX_QUOTE_BYTES)
            except OSError as exc:
                raise AttestationError(
                    "Gramine could not produce a quote (is the AESM service running?)"
                ) from exc
        parsed = parse_quote_v3(quote)  # QuoteFormatError on garbage, oversize, TDX, ...
        if parsed.report_body.report_data != report_data:
            raise AttestationError("quote from /dev/attestation does not carry the requested report_data")
        return quote


def detect_attester(simulated: Attester | None = None, *, files: AttestationFiles | None = None) -> Attester:
    """Gramine's attester when /dev/attestation/attestation_type exists, else `simulated` if given.

    A deployment that must run on SGX passes no `simulated`, so a missing /dev/attestation is an error
    rather than a silent fall back to simulation.
    """
    files = files if files is not None else DevAttestationFiles()
    if files.exists("attestation_type"):
        return GramineAttester(files)
    if simulated is not None:
        return simulated
    raise AttesterUnavailableError("not inside Gramine-SGX (/dev/attestation is missing) and no simulation")
