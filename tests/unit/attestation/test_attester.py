"""Attesters: the simulated one end to end, Gramine's through a fake /dev/attestation."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from confserve.attestation import (
    AttestationError,
    Attester,
    AttesterUnavailableError,
    DevAttestationFiles,
    GramineAttester,
    QuoteFormatError,
    SimPlatform,
    SimulatedAttester,
    TrustConfig,
    VerificationError,
    detect_attester,
    verify,
)
from confserve.attestation._structs import MAX_QUOTE_BYTES, parse_quote_v3
from tests.unit.attestation.dcap_helpers import IDENTITY, REPORT_DATA, SIM_NOW


@pytest.fixture(scope="module")
def platform() -> SimPlatform:
    return SimPlatform.create(now=SIM_NOW)


class FakeGramine:
    """In-memory /dev/attestation whose `quote` is produced, as Gramine's, from user_report_data."""

    def __init__(self, platform: SimPlatform | None, kind: bytes = b"dcap") -> None:
        self.files: dict[str, bytes] = {"attestation_type": kind}
        self.platform = platform
        self.writes: list[tuple[str, bytes]] = []
        self.fail_on: str | None = None
        self.quote_override: bytes | None = None

    def exists(self, name: str) -> bool:
        return name in self.files

    def read(self, name: str, max_bytes: int) -> bytes:
        if name == self.fail_on:
            raise OSError(5, "Input/output error")
        if name == "quote":
            if self.quote_override is not None:
                return self.quote_override[: max_bytes + 1]
            assert self.platform is not None
            return self.platform.quote(self.files["user_report_data"], IDENTITY)
        return self.files[name][: max_bytes + 1]

    def write(self, name: str, data: bytes) -> None:
        if name == self.fail_on:
            raise OSError(5, "Input/output error")
        self.writes.append((name, data))
        self.files[name] = data


def test_simulated_attester_quotes_verify(platform: SimPlatform) -> None:
    attester = SimulatedAttester(platform, IDENTITY)
    assert isinstance(attester, Attester)
    assert attester.simulated is True
    assert attester.identity == IDENTITY
    evidence = verify(
        attester.quote(REPORT_DATA), platform.collateral, TrustConfig.simulated(platform.root_ca_der), SIM_NOW
    )
    assert evidence.report_data == REPORT_DATA
    assert evidence.identity == IDENTITY


def test_simulated_debug_attester_quotes_do_not_verify(platform: SimPlatform) -> None:
    quote = SimulatedAttester(platform, IDENTITY, debug=True).quote(REPORT_DATA)
    assert parse_quote_v3(quote).report_body.debug
    with pytest.raises(VerificationError, match="Debug"):
        verify(quote, platform.collateral, TrustConfig.simulated(platform.root_ca_der), SIM_NOW)


@pytest.mark.parametrize("report_data", [b"", bytes(63), bytes(65), "x" * 64])
def test_report_data_must_be_64_bytes(platform: SimPlatform, report_data: object) -> None:
    for attester in (SimulatedAttester(platform, IDENTITY), GramineAttester(FakeGramine(platform))):
        with pytest.raises(AttestationError, match="exactly 64 bytes"):
            attester.quote(report_data)  # type: ignore[arg-type]


def test_gramine_attester_protocol(platform: SimPlatform) -> None:
    fake = FakeGramine(platform)
    attester = GramineAttester(fake)
    assert isinstance(attester, Attester)
    assert attester.simulated is False
    quote = attester.quote(REPORT_DATA)
    assert fake.writes == [("user_report_data", REPORT_DATA)]  # all 64 bytes in one write
    assert parse_quote_v3(quote).report_body.report_data == REPORT_DATA


@pytest.mark.parametrize("kind", [b"dcap", b"dcap\n", b"dcap\0"])
def test_gramine_attestation_type_dcap(platform: SimPlatform, kind: bytes) -> None:
    GramineAttester(FakeGramine(platform, kind))


@pytest.mark.parametrize("kind", [b"none", b"epid", b"", b"dcapx", b"x" * 100])
def test_gramine_attestation_type_not_dcap(kind: bytes) -> None:
    with pytest.raises(AttesterUnavailableError, match="not 'dcap'"):
        GramineAttester(FakeGramine(None, kind))


def test_gramine_attestation_type_unreadable() -> None:
    fake = FakeGramine(None)
    fake.fail_on = "attestation_type"
    with pytest.raises(AttesterUnavailableError, match="cannot read"):
        GramineAttester(fake)


@pytest.mark.parametrize("failing", ["user_report_data", "quote"])
def test_gramine_io_errors(platform: SimPlatform, failing: str) -> None:
    fake = FakeGramine(platform)
    attester = GramineAttester(fake)
    fake.fail_on = failing
    with pytest.raises(AttestationError, match="could not produce a quote"):
        attester.quote(REPORT_DATA)


def test_gramine_quote_for_other_report_data_is_refused(platform: SimPlatform) -> None:
    fake = FakeGramine(platform)
    fake.quote_override = platform.quote(bytes(64), IDENTITY)
    with pytest.raises(AttestationError, match="does not carry the requested report_data"):
        GramineAttester(fake).quote(REPORT_DATA)


@pytest.mark.parametrize("bad", [b"", b"garbage", bytes(MAX_QUOTE_BYTES + 1)])
def test_gramine_malformed_quote_is_refused(platform: SimPlatform, bad: bytes) -> None:
    fake = FakeGramine(platform)
    fake.quote_override = bad
    with pytest.raises(QuoteFormatError):
        GramineAttester(fake).quote(REPORT_DATA)


def test_gramine_concurrent_quotes_keep_their_report_data(platform: SimPlatform) -> None:
    attester = GramineAttester(FakeGramine(platform))
    results: dict[int, bytes] = {}

    def work(i: int) -> None:
        results[i] = attester.quote(bytes([i]) * 64)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, quote in results.items():
        assert parse_quote_v3(quote).report_body.report_data == bytes([i]) * 64


def test_detect_attester(platform: SimPlatform) -> None:
    simulated = SimulatedAttester(platform, IDENTITY)
    assert isinstance(detect_attester(simulated, files=FakeGramine(platform)), GramineAttester)
    absent = FakeGramine(platform)
    del absent.files["attestation_type"]
    assert detect_attester(simulated, files=absent) is simulated
    with pytest.raises(AttesterUnavailableError, match="not inside Gramine-SGX"):
        detect_attester(files=absent)


def test_detect_attester_on_this_machine_without_gramine(tmp_path: Path, platform: SimPlatform) -> None:
    simulated = SimulatedAttester(platform, IDENTITY)
    assert detect_attester(simulated, files=DevAttestationFiles(tmp_path / "attestation")) is simulated


def test_dev_attestation_files_on_a_directory(tmp_path: Path, platform: SimPlatform) -> None:
    """The real file operations, against plain files standing in for Gramine's pseudo-files."""
    (tmp_path / "attestation_type").write_bytes(b"dcap")
    (tmp_path / "user_report_data").write_bytes(b"")
    files = DevAttestationFiles(tmp_path)
    assert files.exists("attestation_type")
    assert not files.exists("quote")
    files.write("user_report_data", REPORT_DATA)
    assert (tmp_path / "user_report_data").read_bytes() == REPORT_DATA
    quote = platform.quote(REPORT_DATA, IDENTITY)
    (tmp_path / "quote").write_bytes(quote)
    assert files.read("quote", MAX_QUOTE_BYTES) == quote
    assert files.read("quote", 100) == quote[:101]  # one byte more than allowed: the caller sees oversize
    assert GramineAttester(files).quote(REPORT_DATA) == quote
    with pytest.raises(OSError):  # noqa: PT011 (any OS error: the pseudo-file is missing)
        files.write("missing", b"x")


def test_short_write_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_report_data").write_bytes(b"")
    monkeypatch.setattr("confserve.attestation._attester.os.write", lambda fd, data: len(data) - 1)
    with pytest.raises(AttestationError, match="short write"):
        DevAttestationFiles(tmp_path).write("user_report_data", REPORT_DATA)


def test_fake_gramine_quote_is_what_a_sim_platform_makes(platform: SimPlatform) -> None:
    quote = GramineAttester(FakeGramine(platform)).quote(REPORT_DATA)
    parsed = parse_quote_v3(quote)
    assert dataclasses.replace(parsed.report_body, report_data=bytes(64)).identity == IDENTITY
