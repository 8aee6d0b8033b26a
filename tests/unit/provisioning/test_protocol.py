"""The wire protocol: exact Gramine bytes, the extension, and every malformed input as ProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confserve.provisioning import (
    GRAMINE_REQUEST,
    GRAMINE_RESPONSE_PREFIX,
    ClientConnection,
    Granted,
    ProtocolError,
    Refused,
    RequestKind,
    SecretRequest,
    ServerConnection,
)
from confserve.provisioning._protocol import (
    EXT_REQUEST_MAGIC,
    EXT_RESPONSE_MAGIC,
    MAX_NAMES,
    MAX_SECRET_BYTES,
    ClientState,
    ServerState,
    check_secret_name,
)

KEY = bytes(range(16))


def feed_bytewise(conn: ServerConnection | ClientConnection, data: bytes) -> object:
    result = None
    for i in range(len(data)):
        result = conn.receive_data(data[i : i + 1])
        if i < len(data) - 1:
            assert result is None
    return result


# -- Gramine bytes --------------------------------------------------------------------------------


def test_gramine_constants_are_byte_exact() -> None:
    assert GRAMINE_REQUEST == b"SECRET_PROVISION_RA_TLS_REQUEST_V1\x00"
    assert len(GRAMINE_REQUEST) == 35
    assert GRAMINE_RESPONSE_PREFIX == b"SECRET_PROVISION_RA_TLS_RESPONSE_V1:\x00"
    assert len(GRAMINE_RESPONSE_PREFIX) == 37


def test_gramine_request_and_response_layout() -> None:
    server = ServerConnection()
    request = server.receive_data(GRAMINE_REQUEST)
    assert request == SecretRequest(RequestKind.GRAMINE, ("default",))
    assert server.state is ServerState.REQUEST_RECEIVED
    reply = server.grant([("default", KEY)])
    assert reply[:37] == GRAMINE_RESPONSE_PREFIX
    assert reply[37:41] == b"\x00\x00\x00\x10"  # u32 big-endian length
    assert reply[41:] == KEY
    assert len(reply) == 41 + 16
    assert server.state is ServerState.DONE


def test_gramine_request_split_in_every_place() -> None:
    assert feed_bytewise(ServerConnection(), GRAMINE_REQUEST) == SecretRequest(
        RequestKind.GRAMINE, ("default",)
    )


def test_gramine_refusal_sends_nothing() -> None:
    server = ServerConnection()
    server.receive_data(GRAMINE_REQUEST)
    assert server.refuse("policy says no") == b""


def test_gramine_client_round_trip() -> None:
    client = ClientConnection(gramine=True)
    server = ServerConnection()
    request = server.receive_data(client.request_bytes())
    assert request is not None
    assert request.kind is RequestKind.GRAMINE
    outcome = feed_bytewise(client, server.grant([("default", KEY)]))
    assert isinstance(outcome, Granted)
    assert outcome.secrets == {"default": KEY}
    assert client.state is ClientState.DONE
    assert client.end_of_data() is None


def test_gramine_client_refused_by_close() -> None:
    client = ClientConnection(gramine=True)
    client.request_bytes()
    assert client.end_of_data() == Refused("")


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"SECRET_PROVISION_RA_TLS_RESPONSE_V2", "not a Gramine"),
        (GRAMINE_RESPONSE_PREFIX + struct.pack(">I", 0), "size 0"),
        (GRAMINE_RESPONSE_PREFIX + struct.pack(">I", MAX_SECRET_BYTES + 1), "size"),
        (GRAMINE_RESPONSE_PREFIX + struct.pack(">I", 2) + b"abc", "unexpected bytes"),
    ],
)
def test_gramine_client_rejects_malformed_response(response: bytes, message: str) -> None:
    client = ClientConnection(gramine=True)
    client.request_bytes()
    with pytest.raises(ProtocolError, match=message):
        client.receive_data(response)
    assert client.state is ClientState.DONE
    with pytest.raises(ProtocolError):
        client.receive_data(b"x")


def test_gramine_client_truncated_response() -> None:
    client = ClientConnection(gramine=True)
    client.request_bytes()
    full = GRAMINE_RESPONSE_PREFIX + struct.pack(">I", 16) + KEY
    for cut in (1, 36, 37, 40, 41, len(full) - 1):
        client = ClientConnection(gramine=True)
        client.request_bytes()
        assert client.receive_data(full[:cut]) is None
        with pytest.raises(ProtocolError, match="middle of the response"):
            client.end_of_data()


def test_gramine_client_can_only_ask_default() -> None:
    with pytest.raises(ProtocolError):
        ClientConnection(["a"], gramine=True)
    assert ClientConnection(["default"], gramine=True).request_bytes() == GRAMINE_REQUEST


# -- extension -----------------------------------------------------------------------------------


def test_extension_magics_differ_from_gramine_at_first_byte() -> None:
    assert EXT_REQUEST_MAGIC[:1] == b"C"
    assert GRAMINE_REQUEST[:1] == b"S"
    assert not GRAMINE_RESPONSE_PREFIX.startswith(EXT_RESPONSE_MAGIC[:1])


def test_extension_request_layout() -> None:
    data = ClientConnection(["default", "tls.key"]).request_bytes()
    assert data == EXT_REQUEST_MAGIC + b"\x02" + b"\x07default" + b"\x07tls.key"


def test_extension_round_trip_named() -> None:
    client = ClientConnection(["a", "b-2"])
    server = ServerConnection()
    request = feed_bytewise(server, client.request_bytes())
    assert request == SecretRequest(RequestKind.EXTENSION, ("a", "b-2"))
    reply = server.grant([("a", b"1"), ("b-2", KEY)])
    assert reply.startswith(EXT_RESPONSE_MAGIC + b"\x00\x02")
    outcome = feed_bytewise(client, reply)
    assert isinstance(outcome, Granted)
    assert dict(outcome.secrets) == {"a": b"1", "b-2": KEY}


def test_extension_all_granted() -> None:
    client = ClientConnection()
    server = ServerConnection()
    request = server.receive_data(client.request_bytes())
    assert request is not None
    assert request.wants_all
    outcome = client.receive_data(server.grant([("x", b"1"), ("y", b"2")]))
    assert isinstance(outcome, Granted)
    assert set(outcome.secrets) == {"x", "y"}


def test_extension_refusal_round_trip() -> None:
    client = ClientConnection(["a"])
    server = ServerConnection()
    server.receive_data(client.request_bytes())
    reply = server.refuse("refused by policy\n\x00")
    assert reply == EXT_RESPONSE_MAGIC + b"\x01\x13refused by policy??"
    assert feed_bytewise(client, reply) == Refused("refused by policy??")


def test_refusal_reason_is_bounded() -> None:
    server = ServerConnection()
    server.receive_data(ClientConnection().request_bytes())
    reply = server.refuse("x" * 1000)
    assert len(reply) == len(EXT_RESPONSE_MAGIC) + 2 + 255


def test_granted_repr_hides_values() -> None:
    text = repr(Granted({"default": b"TOPSECRETVALUE!!"}))
    assert "TOPSECRET" not in text
    assert "16 bytes" in text


@pytest.mark.parametrize(
    ("request_bytes", "message"),
    [
        (b"GET / HTTP/1.1\r\n", "not a secret-provisioning request"),
        (b"SECRET_PROVISION_RA_TLS_REQUEST_V2\x00", "not a secret-provisioning request"),
        (b"SECRET_PROVISION_RA_TLS_REQUEST_V1\x01", "not a secret-provisioning request"),
        (GRAMINE_REQUEST + b"\x00", "unexpected bytes"),
        (EXT_REQUEST_MAGIC + bytes([MAX_NAMES + 1]), "at most 32"),
        (EXT_REQUEST_MAGIC + b"\x01\x00", "name length 0"),
        (EXT_REQUEST_MAGIC + b"\x01\x41" + b"a" * 65, "name length 65"),
        (EXT_REQUEST_MAGIC + b"\x01\x02a/", "invalid secret name"),
        (EXT_REQUEST_MAGIC + b"\x01\x02.a", "invalid secret name"),
        (EXT_REQUEST_MAGIC + b"\x01\x02\xff\xfe", "invalid secret name"),
        (EXT_REQUEST_MAGIC + b"\x02\x01a\x01a", "twice"),
        (EXT_REQUEST_MAGIC + b"\x01\x01aX", "unexpected bytes"),
        (EXT_REQUEST_MAGIC + b"\x00" + b"X" * 3000, "too long"),
    ],
)
def test_server_rejects_malformed_requests(request_bytes: bytes, message: str) -> None:
    server = ServerConnection()
    with pytest.raises(ProtocolError, match=message):
        server.receive_data(request_bytes)
    assert server.state is ServerState.DONE


def test_server_truncated_and_empty() -> None:
    server = ServerConnection()
    with pytest.raises(ProtocolError, match="without a request"):
        server.end_of_data()
    for partial in (
        GRAMINE_REQUEST[:34],
        EXT_REQUEST_MAGIC,
        EXT_REQUEST_MAGIC + b"\x01",
        EXT_REQUEST_MAGIC + b"\x01\x03ab",
    ):
        server = ServerConnection()
        assert server.receive_data(partial) is None
        with pytest.raises(ProtocolError, match="middle of the request"):
            server.end_of_data()


def test_server_bytes_after_request_and_close_after_request() -> None:
    server = ServerConnection()
    assert server.receive_data(b"") is None
    server.receive_data(GRAMINE_REQUEST)
    server.end_of_data()  # a half-close after the request is fine
    with pytest.raises(ProtocolError, match="after the request"):
        server.receive_data(b"more")


def test_server_response_state_errors() -> None:
    server = ServerConnection()
    with pytest.raises(ProtocolError, match="no complete request"):
        server.grant([("default", KEY)])
    assert server.refuse("early") == b""  # before a request: just close
    server = ServerConnection()
    server.receive_data(GRAMINE_REQUEST)
    server.grant([("default", KEY)])
    with pytest.raises(ProtocolError):
        server.grant([("default", KEY)])


@pytest.mark.parametrize(
    ("request_bytes", "secrets", "message"),
    [
        (GRAMINE_REQUEST, [], "1..32"),
        (GRAMINE_REQUEST, [("default", b"")], "size"),
        (GRAMINE_REQUEST, [("default", b"x" * (MAX_SECRET_BYTES + 1))], "size"),
        (GRAMINE_REQUEST, [("a", b"1"), ("b", b"2")], "exactly one"),
        (GRAMINE_REQUEST, [("bad name", b"1")], "invalid secret name"),
        (GRAMINE_REQUEST, [("a", b"1"), ("a", b"2")], "twice"),
        (EXT_REQUEST_MAGIC + b"\x01\x01a", [("b", b"1")], "exactly the requested"),
        (EXT_REQUEST_MAGIC + b"\x00", [(f"n{i}", b"1") for i in range(33)], "1..32"),
    ],
)
def test_server_grant_shape_is_checked(
    request_bytes: bytes, secrets: list[tuple[str, bytes]], message: str
) -> None:
    server = ServerConnection()
    server.receive_data(request_bytes)
    with pytest.raises(ProtocolError, match=message):
        server.grant(secrets)


def _ext_response(*parts: bytes) -> bytes:
    return EXT_RESPONSE_MAGIC + b"".join(parts)


@pytest.mark.parametrize(
    ("names", "response", "message"),
    [
        ((), b"CONFSERVE_SECRET_PROV_RESPONSE_V9\x00", "not a confserve"),
        ((), GRAMINE_RESPONSE_PREFIX, "not a confserve"),
        ((), _ext_response(b"\x07"), "unknown response status 7"),
        ((), _ext_response(b"\x00\x00"), "carries 0 secrets"),
        ((), _ext_response(b"\x00\x21"), "carries 33 secrets"),
        ((), _ext_response(b"\x00\x01\x00"), "name length 0"),
        ((), _ext_response(b"\x00\x01\x01a", struct.pack(">I", 0)), "size 0"),
        ((), _ext_response(b"\x00\x01\x01a", struct.pack(">I", MAX_SECRET_BYTES + 1)), "size"),
        (
            (),
            _ext_response(b"\x00\x02\x01a", struct.pack(">I", 1), b"x\x01a", struct.pack(">I", 1), b"y"),
            "twice",
        ),
        ((), _ext_response(b"\x00\x01\x01a", struct.pack(">I", 1), b"xZ"), "unexpected bytes"),
        (("b",), _ext_response(b"\x00\x01\x01a", struct.pack(">I", 1), b"x"), "exactly the requested"),
        ((), _ext_response(b"\x01\x02no!"), "unexpected bytes"),
        ((), _ext_response(b"\x01\x02\x00\x01"), "printable"),
    ],
)
def test_client_rejects_malformed_extension_responses(
    names: tuple[str, ...], response: bytes, message: str
) -> None:
    client = ClientConnection(names)
    client.request_bytes()
    with pytest.raises(ProtocolError, match=message):
        client.receive_data(response)


def test_client_truncated_extension_response() -> None:
    full = _ext_response(b"\x00\x01\x01a", struct.pack(">I", 3), b"xyz")
    for cut in range(1, len(full)):
        client = ClientConnection()
        client.request_bytes()
        assert client.receive_data(full[:cut]) is None
        with pytest.raises(ProtocolError, match="middle"):
            client.end_of_data()
    refusal = _ext_response(b"\x01\x03abc")
    for cut in range(1, len(refusal)):
        client = ClientConnection()
        client.request_bytes()
        assert client.receive_data(refusal[:cut]) is None


def test_client_state_errors_and_limits() -> None:
    client = ClientConnection()
    with pytest.raises(ProtocolError, match="before the request"):
        client.end_of_data()
    with pytest.raises(ProtocolError, match="unexpected bytes"):
        client.receive_data(b"x")
    client = ClientConnection()
    client.request_bytes()
    assert client.receive_data(b"") is None
    with pytest.raises(ProtocolError, match="already sent"):
        client.request_bytes()
    with pytest.raises(ProtocolError, match="at most 32"):
        ClientConnection([f"n{i}" for i in range(33)])
    with pytest.raises(ProtocolError, match="twice"):
        ClientConnection(["a", "a"])
    with pytest.raises(ProtocolError, match="invalid"):
        ClientConnection(["../etc"])
    with pytest.raises(ProtocolError, match="max_secret_bytes"):
        ClientConnection(max_secret_bytes=0)
    small = ClientConnection(gramine=True, max_secret_bytes=16)
    small.request_bytes()
    with pytest.raises(ProtocolError, match="size 17"):
        small.receive_data(GRAMINE_RESPONSE_PREFIX + struct.pack(">I", 17))


@pytest.mark.parametrize("name", ["", "a" * 65, "-a", "a b", "é", "a\x00"])
def test_check_secret_name_rejects(name: str) -> None:
    with pytest.raises(ProtocolError):
        check_secret_name(name)


@given(st.binary(max_size=3000))
def test_server_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    server = ServerConnection()
    try:
        server.receive_data(data)
        server.end_of_data()
    except ProtocolError:
        pass


@given(st.binary(max_size=300), st.booleans())
def test_client_never_crashes_on_arbitrary_bytes(data: bytes, gramine: bool) -> None:
    client = ClientConnection(gramine=gramine)
    client.request_bytes()
    try:
        client.receive_data(data)
        client.end_of_data()
    except ProtocolError:
        pass


@given(st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True), max_size=5, unique=True))
def test_extension_round_trip_any_names(names: list[str]) -> None:
    client = ClientConnection(names)
    server = ServerConnection()
    request = server.receive_data(client.request_bytes())
    assert request is not None
    assert request.names == tuple(names)
    if names:
        outcome = client.receive_data(server.grant([(n, n.encode()) for n in names]))
        assert isinstance(outcome, Granted)
        assert outcome.secrets == {n: n.encode() for n in names}
