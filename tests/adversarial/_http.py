"""Raw HTTP/1.x requests for the REST framing tests: every malformed framing we could think of, each
carrying a marker in its body and headers (a leak shows as the marker in a log)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

PATH = b"/v1/models/clf:predict"


def _json_with(marker: bytes) -> bytes:
    return b'{"instances": [[1.0, 2.0, 3.0, 4.0]], "note": "' + marker + b'"}'


def framing_variants(marker: bytes) -> list[tuple[str, bytes]]:
    """(name, raw bytes): requests a strict HTTP/1.1 parser must refuse, or must read without echoing."""
    body = _json_with(marker)
    length = str(len(body)).encode()
    head = b"POST " + PATH + b" HTTP/1.1\r\nHost: localhost\r\nX-Marker: " + marker + b"\r\n"
    chunk = hex(len(body))[2:].encode()
    variants = [
        ("bare LF", head.replace(b"\r\n", b"\n") + b"Content-Length: " + length + b"\n\n" + body),
        ("bare CR", head.replace(b"\r\n", b"\r") + b"Content-Length: " + length + b"\r\r" + body),
        (
            "LF after request line only",
            b"POST " + PATH + b" HTTP/1.1\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n" + body,
        ),
        (
            "obs-fold",
            head + b"X-Folded: a\r\n " + marker + b"\r\nContent-Length: " + length + b"\r\n\r\n" + body,
        ),
        (
            "invalid chunk size",
            head + b"Transfer-Encoding: chunked\r\n\r\nzz" + marker + b"\r\n" + body + b"\r\n0\r\n\r\n",
        ),
        (
            "huge chunk size",
            head + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n" + body + b"\r\n0\r\n\r\n",
        ),
        ("negative chunk size", head + b"Transfer-Encoding: chunked\r\n\r\n-5\r\n" + body + b"\r\n0\r\n\r\n"),
        (
            "chunk missing CRLF",
            head + b"Transfer-Encoding: chunked\r\n\r\n" + chunk + b"\r\n" + body + b"XX0\r\n\r\n",
        ),
        (
            "chunk extension with marker",
            head
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + chunk
            + b";ext="
            + marker
            + b"\x01\r\n"
            + body
            + b"\r\n0\r\n\r\n",
        ),
        (
            "trailer with marker",
            head
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + chunk
            + b"\r\n"
            + body
            + b"\r\n0\r\nX-T: \x00"
            + marker
            + b"\r\n\r\n",
        ),
        (
            "duplicate Content-Length",
            head + b"Content-Length: " + length + b"\r\nContent-Length: 3\r\n\r\n" + body,
        ),
        ("Content-Length list", head + b"Content-Length: " + length + b", 3\r\n\r\n" + body),
        (
            "Content-Length and Transfer-Encoding",
            head
            + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk
            + b"\r\n"
            + body
            + b"\r\n0\r\n\r\n",
        ),
        ("Transfer-Encoding not chunked last", head + b"Transfer-Encoding: chunked, gzip\r\n\r\n" + body),
        ("Transfer-Encoding unknown", head + b"Transfer-Encoding: " + marker + b"\r\n\r\n" + body),
        ("negative Content-Length", head + b"Content-Length: -1\r\n\r\n" + body),
        ("Content-Length not a number", head + b"Content-Length: 1e3" + marker + b"\r\n\r\n" + body),
        ("Content-Length with plus", head + b"Content-Length: +" + length + b"\r\n\r\n" + body),
        ("space before colon", head + b"Content-Length : " + length + b"\r\n\r\n" + body),
        (
            "NUL in header value",
            head + b"X-Nul: a\x00" + marker + b"\r\nContent-Length: " + length + b"\r\n\r\n" + body,
        ),
        (
            "control byte in header name",
            head + b"X-\x01" + marker + b": 1\r\nContent-Length: " + length + b"\r\n\r\n" + body,
        ),
        ("header without colon", head + marker + b"\r\nContent-Length: " + length + b"\r\n\r\n" + body),
        (
            "oversized header",
            head
            + b"X-Big: "
            + marker * (16384 // len(marker) + 1)
            + b"\r\nContent-Length: "
            + length
            + b"\r\n\r\n"
            + body,
        ),
        (
            "oversized request line",
            b"POST /"
            + marker * (16384 // len(marker) + 1)
            + b" HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + length
            + b"\r\n\r\n"
            + body,
        ),
        (
            "too many headers",
            head
            + b"".join(b"X-%d: %s\r\n" % (i, marker) for i in range(200))
            + b"Content-Length: "
            + length
            + b"\r\n\r\n"
            + body,
        ),
        ("HTTP/0.9", b"GET /" + marker + b"\r\n"),
        (
            "HTTP/1.0 POST without length",
            b"POST " + PATH + b" HTTP/1.0\r\nHost: x\r\nX-Marker: " + marker + b"\r\n\r\n" + body,
        ),
        ("HTTP/1.1 POST without length", head + b"\r\n" + body),
        (
            "garbage method",
            b"M" + marker + b"@ " + PATH + b" HTTP/1.1\r\nContent-Length: " + length + b"\r\n\r\n" + body,
        ),
        (
            "lowercase method",
            b"post " + PATH + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n" + body,
        ),
        (
            "bad version",
            b"POST " + PATH + b" HTTP/9." + marker + b"\r\nContent-Length: " + length + b"\r\n\r\n" + body,
        ),
        ("no version", b"POST " + PATH + b" " + marker + b"\r\n\r\n" + body),
        (
            "non-ASCII target",
            b"POST /v1/models/\xff\xfe"
            + marker
            + b":predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + length
            + b"\r\n\r\n"
            + body,
        ),
        (
            "absolute-form with marker",
            b"POST http://"
            + marker
            + b"/v1/models/clf:predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + length
            + b"\r\n\r\n"
            + body,
        ),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + body),
        (
            "upgrade h2c with body",
            head
            + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: "
            + marker
            + b"\r\nContent-Length: "
            + length
            + b"\r\n\r\n"
            + body,
        ),
        (
            "upgrade websocket then garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: "
            + marker
            + b"\r\n\r\n\x00\xff"
            + body,
        ),
        (
            "Expect 100-continue then garbage",
            head
            + b"Expect: 100-continue\r\nContent-Length: "
            + length
            + b"\r\n\r\n"
            + body
            + b"\x00GARBAGE "
            + marker,
        ),
        ("truncated body", head + b"Content-Length: 100000\r\n\r\n" + body),
        ("body longer than Content-Length", head + b"Content-Length: 10\r\n\r\n" + body),
        (
            "pipelined garbage after a request",
            head + b"Content-Length: " + length + b"\r\n\r\n" + body + b"\x16\x03\x01" + marker + b"\r\n\r\n",
        ),
        (
            "gzip body that is not gzip",
            head + b"Content-Encoding: gzip\r\nContent-Length: " + length + b"\r\n\r\n" + body,
        ),
        (
            "deflate body that is not deflate",
            head + b"Content-Encoding: deflate\r\nContent-Length: " + length + b"\r\n\r\n" + body,
        ),
        (
            "unknown Content-Encoding",
            head + b"Content-Encoding: " + marker + b"\r\nContent-Length: " + length + b"\r\n\r\n" + body,
        ),
        ("headers only then close", head),
        ("NUL bytes only", b"\x00" * 64 + marker),
        ("binary garbage", bytes(range(256)) + marker),
    ]
    return variants


def tls_client_hello_bytes() -> bytes:
    """The first flight of a real TLS client (sent to a plaintext port)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def exchange(
    port: int, data: bytes, *, context: ssl.SSLContext | None = None, wait_seconds: float = 2.0
) -> bytes:
    """Send `data` (inside TLS when `context` is given) and read until the server closes or goes quiet.

    Returns what came back (b"" if the connection failed: a server may refuse a handshake or reset)."""
    received = bytearray()
    deadline = time.monotonic() + wait_seconds
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=wait_seconds))
            if context is not None:
                sock = stack.enter_context(context.wrap_socket(sock, server_hostname="localhost"))
            sock.sendall(data)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
    except (OSError, ssl.SSLError):
        pass
    return bytes(received)


def status_of(response: bytes) -> int | None:
    """The status code of the first HTTP response in `response`, if any."""
    if not response.startswith(b"HTTP/1."):
        return None
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def good_request(port: int, context: ssl.SSLContext | None) -> int | None:
    from tests.adversarial.conftest import GOOD_BODY

    raw = (
        b"POST " + PATH + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(GOOD_BODY)).encode()
        + b"\r\n\r\n"
        + GOOD_BODY
    )
    return status_of(exchange(port, raw, context=context, wait_seconds=30))
