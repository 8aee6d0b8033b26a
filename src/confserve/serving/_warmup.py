"""Model warmup (TF Serving's --enable_model_warmup, g3doc/saved_model_warmup.md).

A version may carry `assets.extra/tf_serving_warmup_requests`: a TFRecord file of `PredictionLog` protos,
at most 1000 records. With warmup on, `WarmupLoader` loads the version with the wrapped loader, then
replays every record against that servable through the DataPlane's own request semantics (signature
lookup, input checks, output contracts) before the manager marks it AVAILABLE. The file is read through
the same `FileOpener` as the model, so an encrypted model's warmup file is decrypted and authenticated like
the rest of it. Any failure (unreadable or corrupt file, too many records, a request the model rejects)
unloads the servable and fails the load, so the version ends in error instead of serving cold or broken.

TFRecord framing (tensorflow/core/lib/io/record_writer.cc), parsed here without I/O:

| offset   | size | field                                 |
|----------|------|---------------------------------------|
| 0        | 8    | length n, little-endian uint64        |
| 8        | 4    | masked CRC-32C of the 8 length bytes  |
| 12       | n    | data (one serialized PredictionLog)   |
| 12 + n   | 4    | masked CRC-32C of the data            |

masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32) (tensorflow/core/lib/hash/crc32c.h).
"""

from __future__ import annotations

import logging
import posixpath
import struct
from collections.abc import Callable, Iterator
from typing import Any, Final, Generic, TypeVar

from confserve.serving._errors import LoadError, ServingError, log_unexpected
from confserve.serving._manager import Loader, ServableHandle, State, VersionStatus
from confserve.serving._opener import FileOpener

__all__ = ["MAX_WARMUP_RECORDS", "WARMUP_FILE", "WarmupLoader", "crc32c", "split_tfrecords"]

_log = logging.getLogger(__name__)
S = TypeVar("S")

WARMUP_FILE: Final = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS: Final = 1000  # TF Serving's kMaxNumRecords (saved_model_warmup_util.cc)
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli polynomial, reflected
        table.append(crc)
    return tuple(table)


_TABLE: Final = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses. Pure Python: warmup files are small."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def split_tfrecords(data: bytes, *, max_records: int = MAX_WARMUP_RECORDS) -> list[bytes]:
    """The records of a TFRecord file, every CRC checked; ValueError on any framing error."""
    records: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + _HEADER.size > len(data):
            raise ValueError(f"truncated record header at byte {offset}")
        length, length_crc = _HEADER.unpack_from(data, offset)
        if _masked(crc32c(data[offset : offset + 8])) != length_crc:
            raise ValueError(f"corrupt record length at byte {offset}")
        start = offset + _HEADER.size
        end = start + length
        if end + _FOOTER.size > len(data):
            raise ValueError(f"truncated record at byte {offset}")
        record = data[start:end]
        if _masked(crc32c(record)) != _FOOTER.unpack_from(data, end)[0]:
            raise ValueError(f"corrupt record data at byte {offset}")
        if len(records) == max_records:
            raise ValueError(f"more than {max_records} warmup records")
        records.append(record)
        offset = end + _FOOTER.size
    return records


class _OneVersion:
    """The version being loaded, as the DataPlane's only servable (it is not in the manager yet)."""

    def __init__(self, model: str, version: int, servable: Any) -> None:
        self._model = model
        self._version = version
        self._servable = servable

    def acquire(
        self, model: str, *, version: int | None = None, label: str | None = None
    ) -> ServableHandle[Any]:
        return ServableHandle(lambda: None, self._model, self._version, self._servable)

    def knows(self, model: str) -> bool:
        return model == self._model

    def is_ready(self) -> bool:
        return False

    def model_status(
        self, model: str, *, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        return [VersionStatus(self._model, self._version, State.LOADING)]


def _requests(records: list[bytes]) -> Iterator[tuple[str, Any]]:
    from confserve.tfs_protos import prediction_log_pb2  # noqa: PLC0415  (the proto, not the runtime)

    for record in records:
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except Exception:
            raise ValueError("a warmup record is not a PredictionLog") from None
        kind = log.WhichOneof("log_type")
        if kind not in ("predict_log", "classify_log", "regress_log", "multi_inference_log"):
            raise ValueError(f"unsupported warmup record type {kind}")
        yield kind, getattr(log, kind).request


def replay(model: str, version: int, servable: Any, records: list[bytes]) -> None:
    """Run each record's request against `servable` as version `version` of `model`."""
    from confserve.serving._dataplane import DataPlane  # noqa: PLC0415

    dataplane = DataPlane(_OneVersion(model, version, servable))
    calls: dict[str, Callable[[Any], Any]] = {
        "predict_log": dataplane.predict,
        "classify_log": dataplane.classify,
        "regress_log": dataplane.regress,
        "multi_inference_log": dataplane.multi_inference,
    }
    for kind, request in _requests(records):
        specs = (
            [task.model_spec for task in request.tasks]
            if kind == "multi_inference_log"
            else [request.model_spec]
        )
        for spec in specs:  # the recorded name and version may be anything: this version is meant
            spec.name = model
            spec.version.value = version
        calls[kind](request)


class WarmupLoader(Generic[S]):
    """Wraps a Loader: a loaded version is warmed up with its warmup file (if any) before it serves."""

    def __init__(self, inner: Loader[S], opener: FileOpener) -> None:
        self._inner = inner
        self._opener = opener

    def load(self, model: str, version: int, path: str) -> S:
        servable = self._inner.load(model, version, path)
        try:
            count = self._warm_up(model, version, path, servable)
        except BaseException:
            self._inner.unload(servable)
            raise
        if count:
            _log.info("model %s version %d: warmed up with %d record(s)", model, version, count)
        return servable

    def unload(self, servable: S) -> None:
        self._inner.unload(servable)

    def _warm_up(self, model: str, version: int, path: str, servable: S) -> int:
        try:
            if WARMUP_FILE not in self._opener.list_files(path):
                return 0
            data = self._opener.read_bytes(posixpath.join(path, WARMUP_FILE))
        except Exception as exc:  # OSError, or a protected file that fails authentication
            raise LoadError(
                f"model warmup failed: cannot read {WARMUP_FILE} ({exc.__class__.__name__})"
            ) from None
        try:
            records = split_tfrecords(data)
            replay(model, version, servable, records)
        except ValueError as exc:
            raise LoadError(f"model warmup failed: {exc}") from None
        except ServingError as exc:
            raise LoadError(f"model warmup failed: {exc.message}") from None
        except Exception as exc:
            log_unexpected(_log, f"model {model} version {version}: warmup", exc)
            raise LoadError(f"model warmup failed ({exc.__class__.__name__})") from None
        return len(records)
