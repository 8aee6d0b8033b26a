"""Request memory: what each request may make the replica hold, checked before anything is allocated.

Theory of operation. Every inference request gets a `RequestMemory` from the replica's one `MemoryBudget`
(both front ends share it through the DataPlane). Before a byte is allocated for it, the code that is
about to allocate charges the size it will need:

- each input tensor, at its decoded size: elements x item size, the broadcast fill of a short `*_val`
  field included (a 49-byte TensorProto with one value and shape [1048576, 8, 8, 1] is charged 256 MiB
  before numpy or TensorFlow sees it); strings at their bytes plus 64 per element
  (`confserve.tensor_proto.decoded_nbytes`);
- serialized tf.Examples of Classify, Regress and MultiInference, at their serialized size;
- for REST, the body (charged from Content-Length before it is read) and what parsing it builds
  (`frontends/rest/_json.py`).

A charge that takes the request over `per_request_bytes` fails with `RequestTooLargeError`
(INVALID_ARGUMENT / 400: the same request will never fit); one that takes the sum over all requests in
flight over `in_flight_bytes` fails with `ResourceExhaustedError` (RESOURCE_EXHAUSTED / 429: retry
later). Either way nothing was allocated for the charge, and what the request had charged is released.
Messages name sizes and limits, never values.

What is not charged: the gRPC message itself (bounded by --grpc_max_message_size before the request is
seen), TensorFlow's copy of a fed tensor and the model's intermediate tensors (a multiple of the input
that depends on the model), the response. The limits are therefore budgets for what a client brings, and
the defaults leave the rest of the memory to the model (docs/deployment.md, "Request memory").

After a request that charged `TRIM_AFTER_BYTES` or more, the C heap is trimmed (glibc's `malloc_trim`),
so the pages its arrays and TensorFlow's buffers used go back to the system instead of staying in the
allocator's free lists: glibc raises its mmap threshold after freeing a large block, so later large
blocks come from the heap and stay there when freed. The trim runs `TRIM_DELAY_SECONDS` after the
request ends, once the front end has written and dropped the response, and once for a burst of large
requests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from confserve.serving._errors import RequestTooLargeError, ResourceExhaustedError

__all__ = [
    "MemoryBudget",
    "MemoryLimits",
    "RequestMemory",
    "default_memory_limits",
    "replica_memory_bytes",
    "trim_heap",
]

# Requests that charged this much trim the heap when they end (a trim costs well under a millisecond when
# there is little to return; requests this large take far longer themselves).
TRIM_AFTER_BYTES: Final = 8 * 1024 * 1024
TRIM_DELAY_SECONDS: Final = 0.25
# Share of the replica's memory that requests in flight may hold: the decoded inputs are only the part
# that can be counted; TensorFlow's copy of each feed and the model's intermediate tensors (a model-
# dependent multiple of the input), the models themselves and the runtime need the rest.
IN_FLIGHT_SHARE: Final = 8
# The per-request default is at most this many of the largest message: a gRPC message decodes to its size
# (or less) unless it uses broadcast fill, and a REST body takes about its size again while it is parsed,
# so every request that spells out its values fits; a request beyond it asks, through fill or JSON's
# expansion, for more memory than any message the replica accepts could carry.
MESSAGES_PER_REQUEST: Final = 2
# ... and at most this share of the in-flight total, so that several such requests can run at once.
REQUESTS_IN_FLIGHT_AT_LEAST: Final = 4

_CGROUP_LIMITS: Final = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2 (Kubernetes' resources.limits.memory)
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


@dataclass(frozen=True)
class MemoryLimits:
    """Bytes one request may charge, and bytes all requests in flight may charge together."""

    per_request_bytes: int
    in_flight_bytes: int

    def __post_init__(self) -> None:
        if self.per_request_bytes < 1 or self.in_flight_bytes < 1:
            raise ValueError("memory limits must be positive")


def replica_memory_bytes() -> int:
    """The memory this process may use: physical memory, or less when a cgroup limit says so.

    Under Gramine the "physical" memory a process sees is the enclave's size (`sgx.enclave_size`): Gramine
    answers sysinfo(2), from which glibc computes _SC_PHYS_PAGES, with the enclave's memory.
    """
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        total = 0
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (total or int(text) + 1):
            total = int(text)
    if total <= 0:
        raise OSError("cannot tell how much memory this process may use")
    return total


def default_memory_limits(
    max_message_bytes: int,
    *,
    per_request_bytes: int = 0,
    in_flight_bytes: int = 0,
    memory_bytes: int | None = None,
) -> MemoryLimits:
    """--max_request_memory_bytes and --max_inflight_memory_bytes, a 0 replaced by its default: an eighth
    of the replica's memory (`memory_bytes`, else `replica_memory_bytes()`) in flight; per request the
    smaller of two messages and a quarter of the in-flight total (see the constants for why)."""
    if not in_flight_bytes:
        memory = replica_memory_bytes() if memory_bytes is None else memory_bytes
        in_flight_bytes = max(1, memory // IN_FLIGHT_SHARE)
    if not per_request_bytes:
        most = min(MESSAGES_PER_REQUEST * max_message_bytes, in_flight_bytes // REQUESTS_IN_FLIGHT_AT_LEAST)
        per_request_bytes = max(1, most)
    return MemoryLimits(per_request_bytes=per_request_bytes, in_flight_bytes=in_flight_bytes)


def _load_malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_malloc_trim = _load_malloc_trim()


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's malloc_trim); False where unavailable."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def _start_timer(delay_seconds: float, action: Callable[[], object]) -> None:
    timer = threading.Timer(delay_seconds, action)
    timer.daemon = True
    timer.name = "heap-trim"
    timer.start()


class MemoryBudget:
    """The replica's budget (thread-safe); `limits=None` counts without refusing anything. `trim` and
    `later` (run an action after a delay) are the heap trim and a timer thread unless a test passes its
    own."""

    def __init__(
        self,
        limits: MemoryLimits | None = None,
        *,
        trim: Callable[[], object] | None = None,
        later: Callable[[float, Callable[[], object]], None] = _start_timer,
    ) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._in_flight = 0
        self._trim_pending = False
        self._trim = trim
        self._later = later

    @property
    def in_flight_bytes(self) -> int:
        with self._lock:
            return self._in_flight

    def request(self) -> RequestMemory:
        """A new request's account; use it as a context manager (or call `close`) to release it."""
        return RequestMemory(self)

    def _take(self, account: RequestMemory, nbytes: int, what: str) -> None:
        limits = self.limits
        with self._lock:
            if limits is not None:
                if account.charged + nbytes > limits.per_request_bytes:
                    raise RequestTooLargeError(
                        f"{what} needs {nbytes} bytes of memory; this request would hold "
                        f"{account.charged + nbytes} bytes, above the per-request limit of "
                        f"{limits.per_request_bytes} bytes"
                    )
                if self._in_flight + nbytes > limits.in_flight_bytes:
                    raise ResourceExhaustedError(
                        f"{what} needs {nbytes} bytes of memory; requests in flight hold "
                        f"{self._in_flight} of {limits.in_flight_bytes} bytes; try again later"
                    )
            self._in_flight += nbytes
            account.charged += nbytes

    def _give_back(self, nbytes: int) -> None:
        with self._lock:
            self._in_flight -= nbytes

    def _schedule_trim(self) -> None:
        with self._lock:
            if self._trim_pending:
                return
            self._trim_pending = True
        self._later(TRIM_DELAY_SECONDS, self._run_trim)

    def _run_trim(self) -> None:
        with self._lock:
            self._trim_pending = False
        (self._trim or trim_heap)()


class RequestMemory:
    """What one request has charged; closing it releases the charges (and trims after large ones)."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.charged = 0
        self.peak = 0

    def charge(self, nbytes: int, what: str) -> None:
        """Account `nbytes` for `what` (a name such as "input 'x'", never a value) before allocating."""
        if nbytes < 0:
            raise ValueError("a charge cannot be negative")
        self._budget._take(self, nbytes, what)
        self.peak = max(self.peak, self.charged)

    def close(self) -> None:
        charged, self.charged = self.charged, 0
        if charged:
            self._budget._give_back(charged)
        if self.peak >= TRIM_AFTER_BYTES:
            self.peak = 0
            self._budget._schedule_trim()

    def __enter__(self) -> RequestMemory:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
