"""The key service's pre-authentication stage: fair admission, TLS handshakes and request reads, bounded.

Theory of operation
-------------------
Anyone can open a TCP connection, and a connection proves nothing until its TLS handshake has completed
and the client's RA-TLS certificate has been verified. So nothing an anonymous peer can do before that may
hold what authenticated enclaves need (the workers that verify, decide and answer). This stage runs in one
thread with non-blocking sockets and a selector; it never waits on a peer:

1. **Accept**, then admit or close at once without reading. Refused are connections over the source
   address's rate (`RateLimiter`), over its cap of connections in this stage (`max_pending_per_address`),
   and, when the stage is full (`max_pending_connections`), the oldest connection of the address that
   holds the most is evicted to make room (`AdmissionTable.victim`): a flood from a few addresses
   displaces its own connections, not a newcomer. Only when every connection in the stage has finished its
   I/O and waits for a worker is a new one refused.
2. **Handshake**, driven by `PreAuthSession` (memory BIOs: bytes in, bytes out), within
   `handshake_timeout_seconds` of the accept.
3. **Request**, read within `read_timeout_seconds` of the handshake, parsed by `_protocol`.
4. **Hand-off**: the connection (handshake done, request read or failed to arrive) goes to a worker when one
   is free; the worker verifies the evidence, decides (`_decision`) and answers.

Addresses are grouped for the caps and the rate limit by `admission_key`: an IPv4 address, or an IPv6
/64 (one host usually holds a whole /64, so per-address limits on single IPv6 addresses would be moot).

Sans-I/O parts, tested without sockets: `admission_key`, `AdmissionTable`, `PreAuthSession`. The loop
(`AdmissionStage`) only moves bytes between sockets and those.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import heapq
import ipaddress
import itertools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from OpenSSL import SSL

from confserve.provisioning._decision import ReadFailure
from confserve.provisioning._errors import ProtocolError
from confserve.provisioning._protocol import SecretRequest, ServerConnection
from confserve.provisioning._secrets import RateLimiter
from confserve.provisioning._tls import RECV_BYTES, describe_tls_error

__all__ = [
    "MAX_PREAUTH_INPUT_BYTES",
    "AdmissionHooks",
    "AdmissionStage",
    "AdmissionTable",
    "Admitted",
    "PreAuthSession",
    "PreAuthState",
    "StageLimits",
    "admission_key",
]

_log = logging.getLogger("confserve.provisioning.admission")

# Bytes a client may send before its request is complete: a ClientHello (at most a few KB), a certificate
# of at most about 12 KB (RA-TLS evidence is at most 8 KB; an RSA-3072 key and signature about 1 KB) and a
# 2 KB request fit with room to spare; more is not a secret-provisioning client.
MAX_PREAUTH_INPUT_BYTES: Final = 64 * 1024
# Connections accepted per listener wake-up before the loop serves the connections it already holds.
_ACCEPTS_PER_WAKEUP: Final = 64
# After EMFILE/ENFILE/ENOBUFS the listener is left alone this long (the kernel keeps the backlog).
_ACCEPT_PAUSE_SECONDS: Final = 0.05
# The loop wakes at least this often, for the periodic work of `AdmissionHooks.tick`.
_TICK_SECONDS: Final = 1.0


def admission_key(address: str) -> str:
    """The key the per-address limits count by: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AdmissionTable:
    """Who holds the stage: connection ids (increasing with arrival) per address key.

    A connection is *busy* while it does I/O (handshake, request) and *ready* once it waits for a worker;
    only busy ones can be evicted."""

    def __init__(self) -> None:
        self._key_of: dict[int, str] = {}
        self._counts: collections.Counter[str] = collections.Counter()
        self._busy: dict[str, dict[int, None]] = {}  # key -> ids in arrival order

    @property
    def total(self) -> int:
        return len(self._key_of)

    def count(self, key: str) -> int:
        return self._counts[key]

    def add(self, conn: int, key: str) -> None:
        if conn in self._key_of:
            raise ValueError(f"connection {conn} is already admitted")
        self._key_of[conn] = key
        self._counts[key] += 1
        self._busy.setdefault(key, {})[conn] = None

    def _unbusy(self, conn: int, key: str) -> None:
        busy = self._busy.get(key)
        if busy is not None and conn in busy:
            del busy[conn]
            if not busy:
                del self._busy[key]

    def mark_ready(self, conn: int) -> None:
        self._unbusy(conn, self._key_of[conn])

    def remove(self, conn: int) -> None:
        key = self._key_of.pop(conn, None)
        if key is None:
            return
        self._unbusy(conn, key)
        self._counts[key] -= 1
        if not self._counts[key]:
            del self._counts[key]

    def victim(self) -> int | None:
        """The busy connection to evict for a newcomer: the oldest of the key holding the most connections
        (ties: the key whose oldest busy connection is older). None when no connection is busy."""
        best: tuple[int, int] | None = None  # (-count, oldest id): smallest wins
        for key, busy in self._busy.items():
            candidate = (-self._counts[key], next(iter(busy)))
            if best is None or candidate < best:
                best = candidate
        return None if best is None else best[1]


class PreAuthState(enum.Enum):
    HANDSHAKE = "handshake"
    REQUEST = "request"
    READY = "ready"  # the request was read, or failed to arrive: a worker decides
    FAILED = "failed"  # the handshake failed: close


class PreAuthSession:
    """One connection before authentication, sans-I/O: ciphertext in (`receive_data`), ciphertext out
    (`data_to_send`); first the TLS handshake, then the request.

    When READY, `request` holds the request or the `ReadFailure`; when FAILED, `failure` holds the
    handshake failure's metric reason (`tls` or `timeout_or_closed`) and its detail."""

    def __init__(self, context: SSL.Context, *, max_input_bytes: int = MAX_PREAUTH_INPUT_BYTES) -> None:
        self.connection = SSL.Connection(context, None)
        self.connection.set_accept_state()
        self.protocol = ServerConnection()
        self.state = PreAuthState.HANDSHAKE
        self.eof = False
        self.request: SecretRequest | ReadFailure | None = None
        self.failure: tuple[str, str] | None = None
        self._received = 0
        self._max_input = max_input_bytes

    def receive_data(self, data: bytes) -> None:
        """Feed what the socket gave; b"" is the peer's EOF. Ignored once READY or FAILED."""
        if self.state in (PreAuthState.READY, PreAuthState.FAILED):
            return
        if data:
            self._received += len(data)
            if self._received > self._max_input:
                too_much = f"more than {self._max_input} bytes before the request was complete"
                if self.state is PreAuthState.HANDSHAKE:
                    self._fail("tls", f"TLS handshake failed: {too_much}")
                else:
                    self._ready(ReadFailure.protocol(too_much))
                return
            self.connection.bio_write(data)
        elif not self.eof:
            self.eof = True
            self.connection.bio_shutdown()
        self._advance()

    def data_to_send(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(self.connection.bio_read(RECV_BYTES))
            except SSL.WantReadError:
                return b"".join(chunks)

    def expire(self) -> None:
        """The stage's deadline for the current step passed."""
        if self.state is PreAuthState.HANDSHAKE:
            self._fail("timeout_or_closed", "TLS handshake did not complete: timed out waiting for the peer")
        elif self.state is PreAuthState.REQUEST:
            self._ready(ReadFailure.timeout("timed out waiting for the peer"))

    def _fail(self, reason: str, detail: str) -> None:
        self.state = PreAuthState.FAILED
        self.failure = (reason, detail)

    def _ready(self, request: SecretRequest | ReadFailure) -> None:
        self.state = PreAuthState.READY
        self.request = request

    def _advance(self) -> None:
        if self.state is PreAuthState.HANDSHAKE:
            closed = "TLS handshake did not complete: connection closed during the TLS handshake"
            try:
                self.connection.do_handshake()
            except SSL.WantReadError:
                if self.eof:
                    self._fail("timeout_or_closed", closed)
                return
            except SSL.Error as exc:
                if self.eof:
                    self._fail("timeout_or_closed", closed)
                else:
                    self._fail("tls", f"TLS handshake failed: {describe_tls_error(exc)}")
                return
            self.state = PreAuthState.REQUEST
        if self.state is PreAuthState.REQUEST:
            self._read_request()

    def _read_request(self) -> None:
        while self.state is PreAuthState.REQUEST:
            try:
                data = self.connection.recv(RECV_BYTES)
            except SSL.WantReadError:
                if self.eof:
                    self._end_of_data()
                return
            except (SSL.ZeroReturnError, SSL.SysCallError):  # close_notify, or EOF without it
                self._end_of_data()
                return
            except SSL.Error as exc:
                self._ready(ReadFailure.timeout(f"TLS error: {describe_tls_error(exc)}"))
                return
            if not data:
                self._end_of_data()
                return
            try:
                request = self.protocol.receive_data(data)
            except ProtocolError as exc:
                self._ready(ReadFailure.protocol(exc))
                return
            if request is not None:
                self._ready(request)

    def _end_of_data(self) -> None:
        try:
            self.protocol.end_of_data()
        except ProtocolError as exc:
            self._ready(ReadFailure.protocol(exc))
            return
        self._ready(ReadFailure.protocol("connection closed"))  # pragma: no cover - READY before this


@dataclass(slots=True)
class Admitted:
    """A connection that finished the stage, handed to a worker (which closes `sock`)."""

    sock: socket.socket
    address: str
    port: int
    session: PreAuthSession
    unsent: bytes  # ciphertext the socket did not take yet
    accepted_at: float  # monotonic


class AdmissionHooks(Protocol):
    """What the stage reports to, and asks of, the server."""

    def rejected(self, reason: str, address: str) -> None:
        """A connection was closed unread (rate_limited, address_limit, connection_limit, evicted)."""

    def handshake_failed(self, reason: str, detail: str, address: str) -> None: ...

    def handshake_completed(self, seconds: float) -> None: ...

    def pending(self, count: int, waiting: int) -> None:
        """Connections now in the stage, and how many of them wait for a worker."""

    def reserve_worker(self) -> bool:
        """Take a worker slot if one is free (then `dispatch` follows)."""

    def dispatch(self, admitted: Admitted) -> None: ...

    def tick(self) -> None:
        """Periodic work (at least every second, from the stage's thread)."""


@dataclass(eq=False, slots=True)
class _Pending:
    conn_id: int
    sock: socket.socket
    address: str
    port: int
    session: PreAuthSession
    accepted_at: float
    deadline: float
    out: bytearray = field(default_factory=bytearray)
    writing: bool = False  # registered for EVENT_WRITE too
    broken: bool = False  # sending failed: the peer is gone


@dataclass(frozen=True, slots=True)
class StageLimits:
    handshake_timeout_seconds: float
    read_timeout_seconds: float
    max_pending_connections: int
    max_pending_per_address: int


def _busy(pending: _Pending) -> bool:
    return pending.session.state in (PreAuthState.HANDSHAKE, PreAuthState.REQUEST)


_LISTENER: Final = object()
_WAKE: Final = object()


class AdmissionStage:
    """The selector loop (see the module docstring). `run()` in its own thread; `stop()` from another:
    the listener is closed at once, connections already in the stage finish (each within its deadlines)."""

    def __init__(
        self,
        listener: socket.socket,
        context: SSL.Context,
        limits: StageLimits,
        rate: RateLimiter,
        hooks: AdmissionHooks,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listener: socket.socket | None = listener
        self._context = context
        self._limits = limits
        self._rate = rate
        self._hooks = hooks
        self._monotonic = monotonic
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (listener, self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, _LISTENER)
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._listener_paused_until: float | None = None
        self._pending: dict[int, _Pending] = {}
        self._table = AdmissionTable()
        self._deadlines: list[tuple[float, int]] = []  # heap; stale entries skipped
        self._ready: collections.deque[_Pending] = collections.deque()
        self._ids = itertools.count()
        self._stopping = threading.Event()

    def worker_freed(self) -> None:
        """A worker slot was released (call after releasing it): wake the loop if connections wait for one.
        (The loop queues a connection before it tries for a slot, so one of the two always sees the other.)"""
        if self._ready:
            self.wake()

    def wake(self) -> None:
        """Make the loop look again."""
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        self._stopping.set()
        self.wake()

    # -- the loop --

    def run(self) -> None:
        try:
            while True:
                if self._stopping.is_set():
                    self._close_listener()
                    if not self._pending:
                        return
                for key, mask in self._selector.select(self._timeout()):
                    if key.data is _LISTENER:
                        self._accept()
                    elif key.data is _WAKE:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        self._io_contained(key.data, mask)
                self._expire()
                self._resume_listener()
                self._dispatch()
                self._hooks.pending(len(self._pending), len(self._ready))
                self._hooks.tick()
        finally:
            self._close_all()

    def _timeout(self) -> float:
        now = self._monotonic()
        timeout = _TICK_SECONDS
        while self._deadlines:
            deadline, conn_id = self._deadlines[0]
            pending = self._pending.get(conn_id)
            if pending is None or pending.deadline != deadline or not _busy(pending):
                heapq.heappop(self._deadlines)  # stale
                continue
            timeout = min(timeout, deadline - now)
            break
        if self._listener_paused_until is not None:
            timeout = min(timeout, self._listener_paused_until - now)
        return max(timeout, 0.0)

    # -- admission --

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                self._pause_listener()  # EMFILE, ENFILE, ENOBUFS, ENOMEM: keep serving, retry shortly
                return
            self._admit(sock, str(peer[0]), int(peer[1]))

    def _admit(self, sock: socket.socket, address: str, port: int) -> None:
        key = admission_key(address)
        reason: str | None = None
        if not self._rate.allow(key):
            reason = "rate_limited"
        elif self._table.count(key) >= self._limits.max_pending_per_address:
            reason = "address_limit"
        elif self._table.total >= self._limits.max_pending_connections:
            victim = self._table.victim()
            if victim is None:
                reason = "connection_limit"
            else:
                evicted = self._pending[victim]
                self._hooks.rejected("evicted", evicted.address)
                self._close(evicted)
        if reason is not None:
            self._hooks.rejected(reason, address)
            sock.close()
            return
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # the peer may already be gone
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        now = self._monotonic()
        pending = _Pending(
            conn_id=next(self._ids),
            sock=sock,
            address=address,
            port=port,
            session=PreAuthSession(self._context),
            accepted_at=now,
            deadline=now + self._limits.handshake_timeout_seconds,
        )
        self._pending[pending.conn_id] = pending
        self._table.add(pending.conn_id, key)
        heapq.heappush(self._deadlines, (pending.deadline, pending.conn_id))
        self._selector.register(sock, selectors.EVENT_READ, pending)

    def _pause_listener(self) -> None:
        if self._listener is not None and self._listener_paused_until is None:
            self._selector.unregister(self._listener)
            self._listener_paused_until = self._monotonic() + _ACCEPT_PAUSE_SECONDS

    def _resume_listener(self) -> None:
        paused = self._listener_paused_until
        if paused is not None and self._listener is not None and self._monotonic() >= paused:
            self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
            self._listener_paused_until = None

    def _close_listener(self) -> None:
        if self._listener is None:
            return
        if self._listener_paused_until is None:
            self._selector.unregister(self._listener)
        self._listener.close()
        self._listener = None

    # -- per connection --

    def _io_contained(self, pending: _Pending, mask: int) -> None:
        """A bug in one connection's handling closes that connection, not the stage."""
        try:
            self._io(pending, mask)
        except Exception:
            _log.exception("unexpected error in the pre-authentication stage; closing %s", pending.address)
            with contextlib.suppress(Exception):
                self._close(pending)

    def _io(self, pending: _Pending, mask: int) -> None:
        if self._pending.get(pending.conn_id) is not pending or not _busy(pending):
            return  # closed or queued earlier in this round
        if mask & selectors.EVENT_WRITE:
            self._send(pending)
            if pending.broken:
                self._feed(pending, b"")
                return
        if mask & selectors.EVENT_READ:
            try:
                data = pending.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""  # reset: the same as EOF for the session
            self._feed(pending, data)

    def _feed(self, pending: _Pending, data: bytes) -> None:
        session = pending.session
        was_handshaking = session.state is PreAuthState.HANDSHAKE
        session.receive_data(data)
        if session.state is not PreAuthState.READY:  # after the request, nothing goes out before the decision
            pending.out += session.data_to_send()
        self._send(pending)
        if pending.broken:
            session.receive_data(b"")  # the peer is gone: EOF for the session
        self._settle(pending, was_handshaking)

    def _send(self, pending: _Pending) -> None:
        if pending.broken:
            pending.out.clear()
        if pending.out:
            try:
                sent = pending.sock.send(pending.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                pending.broken = True
                pending.out.clear()
                sent = 0
            del pending.out[:sent]
        want_write = bool(pending.out) and _busy(pending)
        if want_write != pending.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self._selector.modify(pending.sock, events, pending)
            pending.writing = want_write

    def _settle(self, pending: _Pending, was_handshaking: bool) -> None:
        session = pending.session
        if pending.conn_id not in self._pending:
            return
        if session.state is PreAuthState.FAILED:
            assert session.failure is not None
            self._hooks.handshake_failed(
                *session.failure, pending.address
            )  # counted before the peer sees EOF
            self._close(pending)
            return
        if was_handshaking and session.state is not PreAuthState.HANDSHAKE:
            now = self._monotonic()
            self._hooks.handshake_completed(now - pending.accepted_at)
            pending.deadline = now + self._limits.read_timeout_seconds
            heapq.heappush(self._deadlines, (pending.deadline, pending.conn_id))
        if session.state is PreAuthState.READY:
            if pending.writing:
                pending.writing = False
            self._selector.unregister(pending.sock)
            self._table.mark_ready(pending.conn_id)
            self._ready.append(pending)

    def _expire(self) -> None:
        now = self._monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, conn_id = heapq.heappop(self._deadlines)
            pending = self._pending.get(conn_id)
            if pending is None or pending.deadline != deadline:
                continue
            if not _busy(pending):
                continue
            pending.session.expire()
            self._settle(pending, was_handshaking=False)

    def _dispatch(self) -> None:
        while self._ready and self._hooks.reserve_worker():
            pending = self._ready.popleft()
            del self._pending[pending.conn_id]
            self._table.remove(pending.conn_id)
            self._hooks.dispatch(
                Admitted(
                    sock=pending.sock,
                    address=pending.address,
                    port=pending.port,
                    session=pending.session,
                    unsent=bytes(pending.out),
                    accepted_at=pending.accepted_at,
                )
            )

    def _close(self, pending: _Pending) -> None:
        if self._pending.pop(pending.conn_id, None) is None:
            return
        self._table.remove(pending.conn_id)
        if pending.session.state is not PreAuthState.READY:
            self._selector.unregister(pending.sock)
        else:
            self._ready.remove(pending)
        pending.sock.close()

    def _close_all(self) -> None:
        for pending in list(self._pending.values()):
            self._close(pending)
        self._close_listener()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
