"""The hash-chained audit log: appends, reopen, and detection of every kind of tampering."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from confserve.provisioning import AuditLog, AuditLogError, verify_audit_log
from confserve.provisioning._audit import GENESIS


def make_log(path: Path, count: int = 5) -> list[bytes]:
    log = AuditLog(path, fsync=False)
    for i in range(count):
        log.append({"outcome": "released", "secrets": ["default"], "i": i})
    log.close()
    return path.read_bytes().splitlines(keepends=True)


def test_chain_links_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = make_log(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    first = json.loads(lines[0])
    assert first["seq"] == 0
    assert first["prev"] == GENESIS
    result = verify_audit_log(path)
    assert result.ok
    assert result.entries == 5
    assert result.first_bad_line is None
    assert verify_audit_log(path, expected_head=result.head).ok


def test_empty_log_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"")
    result = verify_audit_log(path)
    assert result.ok
    assert result.head == GENESIS


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    make_log(path, 2)
    log = AuditLog(path, fsync=True)
    assert log.entries == 2
    head = log.append({"outcome": "refused", "reason": "x"})
    assert log.head == head
    log.close()
    log.close()
    with pytest.raises(AuditLogError, match="closed"):
        log.append({"a": 1})
    result = verify_audit_log(path)
    assert result.ok
    assert result.entries == 3
    assert result.head == head


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def test_edit_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = make_log(path)
    lines[2] = lines[2].replace(b"released", b"refused!")
    _write(path, lines)
    result = verify_audit_log(path)
    assert not result.ok
    assert result.first_bad_line == 4  # line 3 is canonical still; line 4's prev no longer matches
    assert result.entries == 3


def test_non_canonical_edit_is_detected_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = make_log(path)
    lines[1] = lines[1].replace(b'"outcome":', b'"outcome": ')
    _write(path, lines)
    result = verify_audit_log(path)
    assert result.first_bad_line == 2
    assert result.reason is not None
    assert "canonical" in result.reason


def test_delete_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = make_log(path)
    del lines[1]
    _write(path, lines)
    result = verify_audit_log(path)
    assert result.first_bad_line == 2
    assert result.reason is not None
    assert "sequence" in result.reason


def test_reorder_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = make_log(path)
    lines[1], lines[2] = lines[2], lines[1]
    _write(path, lines)
    assert verify_audit_log(path).first_bad_line == 2


def test_renumbered_forgery_is_detected_by_the_hash(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = make_log(path)
    entry = json.loads(lines[1])
    entry["i"] = 99  # rewrite the content but keep seq/prev: the *next* line's prev breaks
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    _write(path, lines)
    result = verify_audit_log(path)
    assert result.first_bad_line == 3
    assert result.reason is not None
    assert "hash chain" in result.reason


def test_torn_last_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = make_log(path)
    _write(path, [*lines[:-1], lines[-1][:20]])
    result = verify_audit_log(path)
    assert result.first_bad_line == 5
    assert result.entries == 4


def test_cut_back_entries_detected_with_expected_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = make_log(path)
    head = verify_audit_log(path).head
    _write(path, lines[:3])
    assert verify_audit_log(path).ok  # a shorter chain is valid on its own...
    result = verify_audit_log(path, expected_head=head)  # ...but not against a recorded head
    assert not result.ok
    assert result.reason is not None
    assert "not found" in result.reason
    earlier = verify_audit_log(path).head
    _write(path, lines)
    assert not verify_audit_log(path, expected_head=earlier).ok


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", "not a JSON line"),
        (b"[1,2]", "not a JSON object"),
        (b"\xff\xfe", "not a JSON line"),
        (b'{"prev":"' + GENESIS.encode() + b'","seq":true}', "sequence"),
        (b"x" * (64 * 1024 + 1), "too long"),
    ],
)
def test_garbage_lines(tmp_path: Path, line: bytes, reason: str) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(line + b"\n")
    result = verify_audit_log(path)
    assert result.first_bad_line == 1
    assert result.reason is not None
    assert reason in result.reason


def test_damaged_log_is_not_extended(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = make_log(path)
    del lines[0]
    _write(path, lines)
    with pytest.raises(AuditLogError, match="damaged at line 1"):
        AuditLog(path)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(AuditLogError, match="cannot read"):
        verify_audit_log(tmp_path / "missing")
    with pytest.raises(AuditLogError, match="cannot open"):
        AuditLog(tmp_path / "no-dir" / "audit.log")
    log = AuditLog(tmp_path / "a.log", fsync=False)
    with pytest.raises(AuditLogError, match="set by the audit log"):
        log.append({"seq": 3})
    with pytest.raises(AuditLogError, match="too long"):
        log.append({"x": "y" * 70000})
    log.close()


def test_write_failure_is_an_error(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.log", fsync=False)
    os.close(log._fd)  # simulate the file going away under the server
    log._fd = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(AuditLogError, match="cannot write"):
        log.append({"a": 1})
    log.close()


def test_concurrent_appends_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, fsync=False)

    def worker(n: int) -> None:
        for i in range(25):
            log.append({"worker": n, "i": i})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    result = verify_audit_log(path)
    assert result.ok
    assert result.entries == 200


def test_a_write_failing_part_way_leaves_no_half_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk mid-record: the record is refused and cut away, so the chain stays intact and the next
    record (once there is room) extends it."""
    import errno

    from confserve.provisioning import _audit

    path = tmp_path / "audit.log"
    log = AuditLog(path, fsync=False)
    log.append({"event": "first"})
    real_write = _audit.os.write
    calls = {"n": 0}

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_audit.os, "write", half_then_full)
    with pytest.raises(AuditLogError, match="No space left"):
        log.append({"event": "second"})
    monkeypatch.setattr(_audit.os, "write", real_write)
    assert verify_audit_log(path).ok
    log.append({"event": "third"})
    log.close()
    result = verify_audit_log(path)
    assert result.ok
    assert result.entries == 2
