"""Hash-chained, append-only audit log of key-release decisions (JSON lines).

Each line is one canonical JSON object (sorted keys, no spaces, ASCII) with these chain fields:

| field  | meaning                                                                          |
|--------|----------------------------------------------------------------------------------|
| seq    | 0 for the first entry, then +1 per entry                                         |
| prev   | SHA-256 hex of the previous line's bytes (without its newline); 64 zeros for seq 0 |

and the decision fields the server writes (`time`, `peer`, `outcome`, `identity`, `tcb_status`,
`simulated`, `secrets` or `reason`, ...). Editing, deleting, inserting or reordering an entry breaks the
chain at that entry; `verify_audit_log` reports the first broken one. Cutting whole entries off the end
leaves a valid shorter chain, so operators anchor the head (`AuditVerification.head`, also a metric) in
another system and pass it back as `expected_head`. Never put a secret byte into an entry: the server only
writes names, identities and reasons.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from confserve.files import read_input
from confserve.provisioning._errors import AuditLogError

__all__ = ["GENESIS", "AuditLog", "AuditVerification", "verify_audit_log"]

GENESIS: Final = "0" * 64
# One decision line is well under 2 KB (an identity, a few names, a short reason); a longer one is damage.
_MAX_LINE_BYTES: Final = 64 * 1024


def _canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """Result of `verify_audit_log`. `first_bad_line` is 1-based; None when the chain is intact."""

    ok: bool
    entries: int  # entries verified before the first problem (all of them when ok)
    head: str  # SHA-256 hex of the last good line (GENESIS for an empty log)
    first_bad_line: int | None = None
    reason: str | None = None


def _check_line(raw: bytes, index: int, prev: str) -> str | None:  # noqa: PLR0911 (one check per return)
    """None if line `index` (0-based) continues the chain from `prev`, else the reason."""
    if len(raw) > _MAX_LINE_BYTES:
        return "line too long"
    try:
        entry = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return "not a JSON line"
    if not isinstance(entry, dict):
        return "not a JSON object"
    if _canonical(entry) != raw:
        return "not in canonical form (edited?)"
    if entry.get("seq") != index or isinstance(entry.get("seq"), bool):
        return f"sequence number {entry.get('seq')!r}, expected {index}"
    if entry.get("prev") != prev:
        return "hash chain broken (previous entry edited, deleted or reordered)"
    return None


def verify_audit_log(path: str | os.PathLike[str], *, expected_head: str | None = None) -> AuditVerification:
    """Check every entry's sequence number and hash link; report the first broken entry.

    A missing final newline (a torn last write) is reported as a broken last entry. With `expected_head`
    (a head recorded earlier), a log cut back to fewer entries is detected as well.
    """
    try:
        data = read_input(path)
    except OSError as exc:
        raise AuditLogError(f"cannot read audit log: {exc.strerror}") from None
    prev = GENESIS
    count = 0
    heads = {GENESIS}
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    for index, raw in enumerate(complete):
        reason = _check_line(raw, index, prev)
        if reason is not None:
            return AuditVerification(False, count, prev, index + 1, reason)
        prev = _digest(raw)
        heads.add(prev)
        count += 1
    if tail:
        return AuditVerification(False, count, prev, count + 1, "last entry is truncated (no newline)")
    if expected_head is not None and expected_head != prev:
        reason = "log was cut back (expected head is earlier in the log)"
        if expected_head not in heads:
            reason = "expected head not found (log truncated or replaced)"
        return AuditVerification(False, count, prev, count + 1, reason)
    return AuditVerification(True, count, prev)


class AuditLog:
    """Appends chained entries to a file; thread-safe. Opening verifies the existing chain (fail closed:
    a damaged log is not extended, the operator must look at it first)."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self._path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        if self._path.exists():
            result = verify_audit_log(self._path)
            if not result.ok:
                raise AuditLogError(
                    f"audit log is damaged at line {result.first_bad_line}: {result.reason}; "
                    "refusing to extend it"
                )
            self._seq, self._prev = result.entries, result.head
        else:
            self._seq, self._prev = 0, GENESIS
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditLogError(f"cannot open audit log: {exc.strerror}") from None
        self._fd = fd

    @property
    def head(self) -> str:
        with self._lock:
            return self._prev

    @property
    def entries(self) -> int:
        with self._lock:
            return self._seq

    def append(self, fields: Mapping[str, Any]) -> str:
        """Write one entry (fields plus `seq` and `prev`); return the new head. Raises AuditLogError."""
        if "seq" in fields or "prev" in fields:
            raise AuditLogError("seq and prev are set by the audit log")
        with self._lock:
            if self._fd < 0:
                raise AuditLogError("audit log is closed")
            line = _canonical({**fields, "seq": self._seq, "prev": self._prev})
            if len(line) > _MAX_LINE_BYTES:
                raise AuditLogError("audit entry too long")
            end: int | None = None
            try:
                end = os.fstat(self._fd).st_size  # where this record starts (the log is append-only)
                view = memoryview(line + b"\n")
                while view:
                    view = view[os.write(self._fd, view) :]
                if self._fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                # A write that failed part-way (e.g. a full disk) must not leave half a record: the next
                # record would then break the chain. Cut the log back to its last complete record.
                if end is not None:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, end)
                raise AuditLogError(f"cannot write audit log: {exc.strerror}") from None
            self._prev = _digest(line)
            self._seq += 1
            return self._prev

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
