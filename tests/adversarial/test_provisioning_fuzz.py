"""Mutation fuzzing of the secret-provisioning protocol's sans-I/O halves (docs/secret-provisioning.md).

Valid requests and responses of both protocols (Gramine's and confserve's extension) are mutated and fed
in random chunkings. Each side raises only `ProtocolError`; whatever it does accept is canonical (encoding
it again gives exactly the bytes received) and within every bound; no error message or repr carries a
secret byte.
"""

from __future__ import annotations

import random
from collections import Counter

from confserve.provisioning import ProtocolError
from confserve.provisioning._protocol import (
    EXT_REQUEST_MAGIC,
    GRAMINE_REQUEST,
    MAX_NAME_BYTES,
    MAX_NAMES,
    MAX_REASON_BYTES,
    MAX_SECRET_BYTES,
    ClientConnection,
    Granted,
    Refused,
    RequestKind,
    SecretRequest,
    ServerConnection,
    check_secret_name,
)
from tests.adversarial._fuzz import Budget, mutate, rng_for, splits

MARKER = b"CSADV-SECRET-MARK"
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"


def _name(rng: random.Random) -> str:
    first = rng.choice(_NAME_CHARS[:62])
    return first + "".join(
        rng.choice(_NAME_CHARS) for _ in range(rng.randint(0, min(12, MAX_NAME_BYTES - 1)))
    )


def _names(rng: random.Random) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_name(rng) for _ in range(rng.choice((0, 1, 2, 5, MAX_NAMES)))))


def _secret(rng: random.Random) -> bytes:
    return MARKER + rng.randbytes(rng.choice((0, 1, 16, 300)))


def _encode_request(request: SecretRequest) -> bytes:
    if request.kind is RequestKind.GRAMINE:
        return GRAMINE_REQUEST
    return (
        EXT_REQUEST_MAGIC
        + bytes((len(request.names),))
        + b"".join(bytes((len(n),)) + n.encode() for n in request.names)
    )


def _valid_request(rng: random.Random) -> tuple[bytes, ClientConnection]:
    client = ClientConnection(gramine=True) if rng.random() < 0.3 else ClientConnection(_names(rng))
    return client.request_bytes(), client


def _feed_server(data: bytes, rng: random.Random) -> SecretRequest | None:
    server = ServerConnection()
    request = None
    for piece in splits(data, rng):
        got = server.receive_data(piece)
        request = request or got
    server.end_of_data()
    return request


def test_server_side_accepts_only_canonical_requests(budget: Budget) -> None:
    rng = rng_for("prov-server", 1)
    counts: Counter[str] = Counter()
    errors: list[str] = []
    cases = budget.cases(6000, 200000)
    for case in range(cases):
        valid, _ = _valid_request(rng)
        data = rng.randbytes(rng.randint(0, 80)) if rng.random() < 0.1 else mutate(valid, rng).data
        try:
            request = _feed_server(data, rng)
        except ProtocolError as exc:
            errors.append(str(exc))
            counts["ProtocolError"] += 1
            continue
        except Exception as exc:
            raise AssertionError(f"case {case}: {type(exc).__name__}: {exc} on {data!r}") from exc
        assert request is not None, f"case {case}: end of data without a request and no error"
        assert _encode_request(request) == data, f"case {case}: accepted a non-canonical request {data!r}"
        assert len(request.names) <= MAX_NAMES
        assert len(set(request.names)) == len(request.names)
        for name in request.names:
            check_secret_name(name)
        counts["accepted"] += 1
    print(f"provisioning server side: {cases} cases, outcomes {dict(counts)}")
    assert [e for e in errors if MARKER.decode() in e] == []


def _valid_response(rng: random.Random, client_names: tuple[str, ...], gramine: bool) -> bytes:
    server = ServerConnection()
    request_bytes = (
        GRAMINE_REQUEST if gramine else _encode_request(SecretRequest(RequestKind.EXTENSION, client_names))
    )
    server.receive_data(request_bytes)
    if not gramine and rng.random() < 0.3:
        return server.refuse(rng.choice(("refused", "policy refuses the enclave", "x" * 300, "caf\u00e9")))
    names = client_names or _names(rng) or ("default",)
    secrets = [(names[0], _secret(rng) or b"k")] if gramine else [(n, _secret(rng) or b"k") for n in names]
    return server.grant(secrets)


def _encode_outcome(outcome: Granted | Refused, gramine: bool) -> bytes:
    """The response bytes a server would have sent for `outcome`."""
    server = ServerConnection()
    if gramine:
        server.receive_data(GRAMINE_REQUEST)
    else:
        names = tuple(outcome.secrets) if isinstance(outcome, Granted) else ()
        server.receive_data(_encode_request(SecretRequest(RequestKind.EXTENSION, names)))
    if isinstance(outcome, Refused):
        return server.refuse(outcome.reason)
    return server.grant(list(outcome.secrets.items()))


def test_client_side_accepts_only_canonical_responses(budget: Budget) -> None:
    rng = rng_for("prov-client", 1)
    counts: Counter[str] = Counter()
    errors: list[str] = []
    cases = budget.cases(6000, 200000)
    for case in range(cases):
        gramine = rng.random() < 0.3
        names = () if gramine or rng.random() < 0.3 else _names(rng)
        valid = _valid_response(rng, names, gramine)
        data = rng.randbytes(rng.randint(0, 80)) if rng.random() < 0.1 else mutate(valid, rng).data
        client = ClientConnection(names, gramine=gramine)
        client.request_bytes()
        outcome: Granted | Refused | None = None
        try:
            for piece in splits(data, rng):
                got = client.receive_data(piece)  # every piece is fed, also after an outcome
                outcome = outcome or got
            ended = client.end_of_data()
            outcome = outcome or ended
        except ProtocolError as exc:
            errors.append(str(exc))
            counts["ProtocolError"] += 1
            continue
        except Exception as exc:
            raise AssertionError(f"case {case}: {type(exc).__name__}: {exc}") from exc
        assert outcome is not None, f"case {case}: no outcome and no error"
        assert MARKER.decode() not in repr(outcome)
        if isinstance(outcome, Refused):
            assert len(outcome.reason) <= MAX_REASON_BYTES
            assert all(" " <= c <= "~" for c in outcome.reason)
            if data:  # a Gramine refusal is a close without a byte
                assert _encode_outcome(outcome, gramine) == data, f"case {case}: non-canonical refusal"
            counts["refused"] += 1
            continue
        assert 1 <= len(outcome.secrets) <= MAX_NAMES
        assert all(1 <= len(value) <= MAX_SECRET_BYTES for value in outcome.secrets.values())
        if names:
            assert tuple(outcome.secrets) == names, f"case {case}: secrets other than the requested ones"
        assert _encode_outcome(outcome, gramine) == data, f"case {case}: accepted a non-canonical response"
        counts["granted"] += 1
    print(f"provisioning client side: {cases} cases, outcomes {dict(counts)}")
    assert [e for e in errors if MARKER.decode() in e] == []
