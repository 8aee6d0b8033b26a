"""The REST server: aiohttp on its own thread and event loop, TLS with the same certificate as gRPC.

Why aiohttp (pinned in pyproject): one well-maintained, typed package that is both the HTTP server and
the asyncio app, serves TLS from an `ssl.SSLContext` directly, and needs no separate ASGI server
(starlette would need uvicorn, plus its own TLS options layer). All API logic is in `RestApi.handle`,
which this module runs on a bounded thread pool so slow inferences never block the event loop.

The event loop is uvloop's (libuv; the loop uvicorn uses): its transports and TLS layer are compiled,
and the loop's own work per request is a large share of a small model's REST cost. Measured on the
digits CNN over TLS, alternating rounds in one process: 1,600 -> 1,790 requests/s at 16 clients and
1,000 -> 1,080 at 1 (docs/server.md). libuv needs eventfd, which some Gramine versions refuse inside an
enclave unless the manifest allows it (an option we never set): where uvloop cannot start, the server
says so in its log and runs on asyncio's own loop.

TLS material stays in memory: Python's `ssl` loads certificates and keys only from paths, so the PEM bytes
are written to anonymous memory files (memfd_create, Linux) and loaded through /proc/self/fd; nothing
reaches a disk path.

Logging: no request or response byte reaches a log. aiohttp's own error messages quote what it received
(a malformed request's offending line or the body after it; a handler's exception text), so its request
handler logs through `_HttpErrorLog`, which keeps only a category (the exception's class name), and the
event loop's exception handler does the same; access logging is off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvloop
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from confserve.errors import ConfserveError, Status
from confserve.frontends._tls import Plaintext, TlsConfig, server_tls
from confserve.frontends.rest._api import ExtraEndpoints, RestApi, RestResponse, error_response
from confserve.frontends.rest._status import HTTP_STATUS
from confserve.serving import Admission, DataPlane, RequestMemory

__all__ = ["RestServer", "RestSettings", "server_ssl_context"]

_log = logging.getLogger(__name__)
_http_log = logging.getLogger(f"{__name__}.http")
_STARTUP_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class RestSettings:
    host: str = "127.0.0.1"
    port: int = 8501  # TF Serving's conventional --rest_api_port; 0 picks a free port
    num_threads: int = 8  # TF Serving's --rest_api_num_threads defaults to 4 x cores; bounded here
    # TF Serving's --rest_api_timeout_in_ms default (30000). Past it the client gets 504; the inference
    # already running finishes in its worker thread (TensorFlow cannot be interrupted).
    request_timeout_seconds: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024  # same bound as the gRPC max message size


class _HttpErrorLog(logging.LoggerAdapter[logging.Logger]):
    """The logger aiohttp's request handler gets: each record reduced to a fixed text and a category.

    aiohttp's messages and tracebacks carry request bytes (its parser errors quote the offending line,
    header or trailing body; a handler's exception may quote the input), so nothing of the original record
    is kept but the exception's class name. A malformed request or a client gone mid-request is the
    client's doing and logged at DEBUG (a flood of them must not fill the log); any other exception is a
    server fault, logged at ERROR.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1] if exc_info else None
        if exc is None:
            self.logger.debug("REST connection event (details withheld)")
        elif isinstance(exc, HttpProcessingError | web.RequestPayloadError | ConnectionError):
            self.logger.debug("REST: malformed or abandoned request (%s)", type(exc).__name__)
        else:
            self.logger.error("REST: error while handling a request (%s)", type(exc).__name__)


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: the default one prints the context (handles with their
    arguments, transports, protocols), which may hold request bytes; only the exception's class is kept."""
    exc = context.get("exception")
    _log.error("REST event loop: unhandled %s", "error" if exc is None else type(exc).__name__)


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop, or asyncio's where libuv cannot start (see the module docstring)."""
    try:
        return uvloop.new_event_loop()
    except OSError as exc:
        _log.warning("REST: uvloop unavailable (%s), serving on asyncio's event loop", exc.__class__.__name__)
        return asyncio.new_event_loop()


@contextmanager
def _memory_file(data: bytes, name: str) -> Iterator[str]:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def server_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """A TLS 1.2+ server context from in-memory PEM; client certificates required when a CA is given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with (
        _memory_file(tls.cert_chain_pem, "confserve-cert") as cert_path,
        _memory_file(tls.private_key_pem, "confserve-key") as key_path,
    ):
        context.load_cert_chain(cert_path, key_path)
    if tls.client_ca_pem is not None:
        context.load_verify_locations(cadata=tls.client_ca_pem.decode("ascii"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class RestServer:
    """Serves `RestApi` over HTTPS, or over HTTP with `PLAINTEXT` for `tls`."""

    def __init__(
        self,
        dataplane: DataPlane,
        tls: TlsConfig | Plaintext,
        settings: RestSettings | None = None,
        *,
        ops: ExtraEndpoints | None = None,
    ) -> None:
        tls_config = server_tls(tls, "REST")
        self._settings = settings or RestSettings()
        self._api = RestApi(dataplane, ops)
        self._memory = dataplane.memory
        self._ssl = None if tls_config is None else server_ssl_context(tls_config)
        self._pool = futures.ThreadPoolExecutor(self._settings.num_threads, thread_name_prefix="rest")
        self._loop = _new_event_loop()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._requests = Admission()
        self.draining = threading.Event()  # set when stop() begins
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        if self.draining.is_set():
            return _to_aiohttp(error_response(HTTP_STATUS[Status.UNAVAILABLE], "server is shutting down"))
        with self._requests.admit():  # never refuses (no limit): counts requests for the drain
            return _to_aiohttp(await self._respond(request))

    async def _respond(self, request: web.Request) -> RestResponse:
        # The body is charged to the request's memory account before it is read (Content-Length; a chunked
        # body once read, bounded by max_body_bytes); the worker thread closes the account when done.
        length = request.content_length
        if length is not None and length > self._settings.max_body_bytes:
            return error_response(413, "request body too large")
        memory = self._memory.request()
        handed_over = False
        try:
            memory.charge(length or 0, "the request body")
            body = await request.read()
            if length is None:
                memory.charge(len(body), "the request body")
            loop = asyncio.get_running_loop()
            work = loop.run_in_executor(
                self._pool, self._in_worker, request.method, request.path, body, memory
            )
            handed_over = True
            return await asyncio.wait_for(work, self._settings.request_timeout_seconds)
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, "request body too large")
        except (HttpProcessingError, web.RequestPayloadError):  # bad chunking or Content-Encoding
            return error_response(400, "malformed request body")
        except ConfserveError as exc:  # the body's charge refused
            return error_response(HTTP_STATUS[exc.status], str(exc))
        except TimeoutError:
            return error_response(HTTP_STATUS[Status.DEADLINE_EXCEEDED], "request timed out")
        finally:
            if not handed_over:
                memory.close()

    def _in_worker(self, method: str, path: str, body: bytes, memory: RequestMemory) -> RestResponse:
        with memory:
            return self._api.handle(method, path, body, memory)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rest-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(_STARTUP_TIMEOUT_SECONDS):
            raise TimeoutError("REST server did not start")
        if self._startup_error is not None:
            raise self._startup_error
        _log.info("REST server listening on port %d", self.port)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(_loop_exception)
        app = web.Application(client_max_size=self._settings.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # No access log (request lines name models and carry query strings) and no request bytes in
        # aiohttp's error logging (see _HttpErrorLog).
        runner = web.AppRunner(app, access_log=None, logger=_HttpErrorLog(_http_log, {}))
        try:
            self._loop.run_until_complete(runner.setup())
            site = web.TCPSite(
                runner, self._settings.host, self._settings.port, ssl_context=self._ssl, reuse_port=False
            )
            self._loop.run_until_complete(site.start())
            self.port = int(runner.addresses[0][1])
        except BaseException as exc:
            self._startup_error = exc
            self._loop.run_until_complete(runner.cleanup())
            self._loop.close()
            self._ready.set()  # only now: start() raises and the thread is finished with the loop
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(runner.cleanup())
            self._loop.close()

    def stop(self, grace_seconds: float = 0.0) -> None:
        """Answer new requests 503, wait up to `grace_seconds` for those in flight, then close."""
        self.draining.set()
        if not self._requests.wait_idle(grace_seconds):
            _log.warning("REST: %d request(s) still running after the grace period", self._requests.in_flight)
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _to_aiohttp(result: RestResponse) -> web.Response:
    return web.Response(status=result.status, body=result.body, headers={"Content-Type": result.content_type})
