"""REST JSON against a live replica: mutated and hostile bodies for TF Serving's REST API (predict,
classify, regress, metadata). Each is answered with a status the client caused (never 5xx), the replica
stays up and serves a good request after every batch, and no value from a body ever reaches its log."""

from __future__ import annotations

import http.client
import json
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.adversarial._fuzz import Budget, mutate, rng_for
from tests.adversarial.conftest import GOOD_BODY, Replica

MARKER = "CSADVJSON5d21"
PATHS = (
    "/v1/models/clf:predict",
    "/v1/models/clf:predict",
    "/v1/models/clf:classify",
    "/v1/models/clf:regress",
    "/v1/models/clf/versions/2:predict",
    "/v1/models/clf/labels/stable:predict",
    "/v1/models/clf/metadata",
    "/v1/models/" + MARKER + ":predict",
)
SEEDS: tuple[Any, ...] = (
    {"instances": [[1.0, 2.0, 3.0, 4.0]]},
    {"inputs": {"x": [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]}},
    {"signature_name": "strings", "instances": [{"text": MARKER, "n": 3}]},
    {"signature_name": "strings", "inputs": {"text": [{"b64": "Q1NBRFY="}], "n": [1]}},
    {"examples": [{"x": [1.0, 2.0, 3.0, 4.0], "note": MARKER}]},
    {"signature_name": "classify", "examples": [{"x": [1.0, 2.0, 3.0, 4.0]}], "context": {"y": MARKER}},
)
HOSTILE: tuple[bytes, ...] = (
    b"[" * 100000 + b"]" * 100000,
    b'{"instances": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}",
    b'{"inputs": {"x": ' + b"[" * 3000 + b"]" * 3000 + b"}}",
    b'{"instances": [[1e999, -1e999, 1, 2]]}',
    b'{"instances": [[NaN, Infinity, -Infinity, 0]]}',
    b'{"instances": [[' + b"1" * 100000 + b", 2, 3, 4]]}",
    b'{"instances": [[1, 2, 3, 4]], "instances": [[5, 6, 7, 8]]}',
    b'{"instances": [' + b"[1, 2, 3, 4]," * 20000 + b"[1, 2, 3, 4]]}",
    b'{"instances": [{"b64": "' + MARKER.encode() + b'!!"}]}',
    b'{"instances": "' + MARKER.encode() + b'"}',
    b'{"instances": [[1, 2, 3, "' + MARKER.encode() + b'"]]}',
    b'{"inputs": {"x": [[1, 2, 3, 4]]}, "instances": [[1, 2, 3, 4]]}',
    b'{"instances": [[1, 2, 3, 4]]}\x00' + MARKER.encode(),
    b"\xef\xbb\xbf" + GOOD_BODY,
    b'{"instances": [[1, 2, 3, 4]], "signature_name": "' + b"\\ud800" * 10 + b'"}',
    b"\xff\xfe" + MARKER.encode(),
    b"",
    b"null",
    b"[]",
    b'"' + MARKER.encode() + b'"',
)


class Client:
    """One keep-alive HTTPS connection, opened again whenever the server closed it."""

    def __init__(self, replica: Replica) -> None:
        self._replica = replica
        self._connection: http.client.HTTPSConnection | None = None

    def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        for attempt in range(2):
            if self._connection is None:
                self._connection = http.client.HTTPSConnection(
                    "localhost", self._replica.rest_port, context=self._replica.client_context(), timeout=120
                )
            try:
                self._connection.request(
                    method, path, body=body, headers={"Content-Type": "application/json"}
                )
                response = self._connection.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@pytest.fixture(scope="module")
def client(replica: Replica) -> Iterator[Client]:
    connection = Client(replica)
    yield connection
    connection.close()


def _mutate_json(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """A structure-aware change: a value replaced, dropped or wrapped, somewhere in the document."""
    if isinstance(value, dict) and value and depth < 6 and rng.random() < 0.7:
        key = rng.choice(sorted(value))
        out = dict(value)
        if rng.random() < 0.2:
            del out[key]
        else:
            out[key] = _mutate_json(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value and depth < 6 and rng.random() < 0.7:
        index = rng.randrange(len(value))
        out_list = list(value)
        out_list[index] = _mutate_json(rng, value[index], depth + 1)
        return out_list
    return rng.choice(
        (
            None,
            True,
            0,
            -1,
            1 << 70,
            1e308,
            "",
            MARKER,
            {"b64": MARKER},
            [],
            {},
            [value],
            [value, value],
            {MARKER: value},
            [[1.0] * rng.choice((3, 4, 5))] * rng.choice((1, 2, 100)),
        )
    )


def _body(rng: random.Random) -> bytes:
    choice = rng.random()
    seed = rng.choice(SEEDS)
    if choice < 0.1:
        return rng.choice(HOSTILE)
    if choice < 0.55:
        return json.dumps(_mutate_json(rng, seed)).encode()
    return mutate(json.dumps(seed).encode(), rng).data


def _check_alive(replica: Replica, client: Client) -> None:
    assert replica.alive(), replica.log_text()
    status, body = client.request("POST", "/v1/models/clf:predict", GOOD_BODY)
    assert status == 200, body[:300]


def test_hostile_json_bodies_are_refused_cleanly(replica: Replica, client: Client, budget: Budget) -> None:
    rng = rng_for("rest-json", 1)
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    cases = budget.cases(1500, 40000)
    for case in range(cases):
        path = rng.choice(PATHS)
        method = "GET" if path.endswith("metadata") and rng.random() < 0.5 else "POST"
        body = _body(rng)
        status, answer = client.request(method, path, body)
        statuses[status] += 1
        if status >= 500:
            problems.append(f"case {case}: {status} {answer[:200]!r} for {method} {path} {body[:200]!r}")
        if case % 100 == 99:
            _check_alive(replica, client)
    _check_alive(replica, client)
    print(f"REST JSON fuzz: {cases} cases, statuses {dict(sorted(statuses.items()))}")
    assert problems == [], "\n".join(problems[:20])
    assert replica.log_leaks([MARKER.encode()]) == []


def test_every_hostile_body_on_every_path(replica: Replica, client: Client) -> None:
    for body in HOSTILE:
        for path in sorted(set(PATHS)):
            status, answer = client.request("POST", path, body)
            assert status < 500, (path, body[:100], answer[:300])
    _check_alive(replica, client)
    assert replica.log_leaks([MARKER.encode()]) == []


def test_f7_large_valid_body_leaves_the_replica_up(replica: Replica, client: Client, budget: Budget) -> None:
    """F7: one valid 40 MiB REST body (1.6 million rows of four floats; 8 MiB without --long, as the
    40 MiB one takes this 2-core machine longer than the 30 s REST deadline). The replica answers it (504
    past the deadline) and stays up; how much memory it keeps afterwards is printed (run with -s). The
    per-request memory budget that bounds this belongs to serving."""
    row = "[0.25, -1.5, 3.125, 0.5]"
    rows = ((40 if budget.long else 8) << 20) // (len(row) + 2)
    body = ('{"instances": [' + ", ".join([row] * rows) + "]}").encode()
    rss_before, peak_before = replica.rss_bytes()
    status, _ = client.request("POST", "/v1/models/clf:predict", body)
    rss_after, peak_after = replica.rss_bytes()
    assert status in (200, 400, 413, 429, 504), status
    _check_alive(replica, client)
    print(
        f"F7: {len(body) >> 20} MiB body -> {status}; replica RSS {rss_before >> 20} MiB before, "
        f"{rss_after >> 20} MiB after, peak {peak_after >> 20} MiB (before: {peak_before >> 20} MiB)"
    )
