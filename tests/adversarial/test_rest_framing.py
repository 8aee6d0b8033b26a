"""REST framing (finding F2): malformed HTTP leaks no request byte into any log and takes nothing down.

aiohttp's own error logging quotes what it received (the offending line, header or the body after it);
the REST server logs a category only (`_HttpErrorLog`). Every variant carries a marker in its headers
and body; the marker must appear in no log file and no captured stream, at the replica's INFO level and
in-process with every logger at DEBUG and the event loop's debug mode on.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest

from tests.adversarial._http import (
    exchange,
    framing_variants,
    good_request,
    status_of,
    tls_client_hello_bytes,
)
from tests.adversarial.conftest import Replica


def _marker() -> bytes:
    return b"CSADV" + secrets.token_hex(8).encode() + b"MARK"


def _send_all(port: int, variants: list[tuple[str, bytes]], context: Any) -> dict[str, bytes]:
    with futures.ThreadPoolExecutor(8) as pool:
        replies = pool.map(lambda item: exchange(port, item[1], context=context, wait_seconds=1.5), variants)
        return {name: reply for (name, _), reply in zip(variants, replies, strict=True)}


def _no_server_error(replies: dict[str, bytes]) -> None:
    """A malformed request is the client's fault: never a 5xx."""
    errors = {name: status_of(reply) for name, reply in replies.items() if (status_of(reply) or 0) >= 500}
    assert not errors, errors


def test_f2_malformed_framing_leaks_nothing_from_the_replica(replica: Replica) -> None:
    marker = _marker()
    variants = framing_variants(marker)
    replies = _send_all(replica.rest_port, variants, replica.client_context())
    _no_server_error(replies)
    refused = [name for name, reply in replies.items() if status_of(reply) == 400]
    assert len(refused) >= 20, replies  # the parser really refused them (the test exercised the error path)
    # Plain HTTP to the TLS port, and TLS inside TLS.
    exchange(replica.rest_port, variants[0][1])
    exchange(replica.rest_port, tls_client_hello_bytes() + marker, context=replica.client_context())
    assert replica.alive(), replica.log_text()
    assert good_request(replica.rest_port, replica.client_context()) == 200
    assert replica.log_leaks([marker]) == []


class _Everything(logging.Handler):
    """Keeps every record, formatted with its traceback, as the log file would show it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def debug_logging() -> Iterator[_Everything]:
    root = logging.getLogger()
    handler = _Everything()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_f2_malformed_framing_leaks_nothing_at_debug_level(
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    debug_logging: _Everything,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """In-process plaintext server, every logger at DEBUG, the event loop's debug mode: still no marker."""
    from confserve.frontends import PLAINTEXT
    from confserve.frontends.rest import RestServer, RestSettings
    from tests.unit.serving.models import make_dataplane

    monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")
    server = RestServer(make_dataplane(tmp_path), PLAINTEXT, RestSettings(port=0, num_threads=2))
    assert server._loop.get_debug()  # the variable reached the loop (uvloop reads it as asyncio does)
    server.start()
    marker = _marker()
    try:
        replies = _send_all(server.port, framing_variants(marker), None)
        exchange(server.port, tls_client_hello_bytes() + marker)  # TLS to the plaintext port
        _no_server_error(replies)
        assert good_request(server.port, None) == 200
    finally:
        server.stop()
    out, err = capfd.readouterr()
    leaks = [line for line in debug_logging.lines if marker.decode() in line or marker.hex() in line]
    assert leaks == []
    assert marker.decode() not in out + err
    # The error path ran and logged its category (so this test can fail).
    assert any("REST: malformed or abandoned request (" in line for line in debug_logging.lines)
