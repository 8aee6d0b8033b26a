"""Version 2 of the extension: keys with release floors and the owner's lease bound. Byte layout, partial
grants, and every malformed input on either side as ProtocolError; versions 1 and Gramine unchanged."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confserve.provisioning import (
    GRAMINE_REQUEST,
    ClientConnection,
    Granted,
    ProtocolError,
    Refused,
    RequestKind,
    SecretRequest,
    ServerConnection,
)
from confserve.provisioning._protocol import (
    EXT2_REQUEST_MAGIC,
    EXT2_RESPONSE_MAGIC,
    EXT_REQUEST_MAGIC,
    MAX_FLOOR,
    MAX_MODELS,
    check_model_name,
)

KEY = bytes(range(16))


def request_v2(names: list[bytes], models: list[bytes]) -> bytes:
    out = EXT2_REQUEST_MAGIC + bytes([len(names)]) + b"".join(bytes([len(n)]) + n for n in names)
    return out + bytes([len(models)]) + b"".join(bytes([len(m)]) + m for m in models)


def test_layout_is_byte_exact() -> None:
    assert EXT2_REQUEST_MAGIC == b"CONFSERVE_SECRET_PROV_REQUEST_V2\x00"
    assert EXT2_RESPONSE_MAGIC == b"CONFSERVE_SECRET_PROV_RESPONSE_V2\x00"
    client = ClientConnection(["default", "digits"], models=["digits"])
    assert client.request_bytes() == request_v2([b"default", b"digits"], [b"digits"])
    server = ServerConnection()
    request = server.receive_data(request_v2([b"default", b"digits"], [b"digits"]))
    assert request == SecretRequest(RequestKind.LEASE, ("default", "digits"), ("digits",))
    reply = server.grant(
        [("default", KEY), ("digits", b"k" * 16)], floors=[("digits", 7)], max_lease_seconds=300
    )
    assert reply == (
        EXT2_RESPONSE_MAGIC
        + b"\x00\x02"
        + b"\x07default" + struct.pack(">I", 16) + KEY
        + b"\x06digits" + struct.pack(">I", 16) + b"k" * 16
        + b"\x01\x06digits" + struct.pack(">Q", 7)
        + struct.pack(">I", 300)
    )  # fmt: skip
    granted = client.receive_data(reply)
    assert granted == Granted({"default": KEY, "digits": b"k" * 16}, {"digits": 7}, 300)
    assert "floors={'digits': 7}" in repr(granted)
    assert "kkkk" not in repr(granted)


def test_a_partial_grant_leaves_out_names_not_granted() -> None:
    client = ClientConnection(["default", "withdrawn", "b"], models=["m", "n"])
    server = ServerConnection()
    request = server.receive_data(client.request_bytes())
    assert request is not None
    reply = server.grant([("default", KEY), ("b", b"2")], floors=[("m", 0), ("n", 2**40)])
    granted = client.receive_data(reply)
    assert isinstance(granted, Granted)
    assert list(granted.secrets) == ["default", "b"]
    assert dict(granted.floors) == {"m": 0, "n": 2**40}
    assert granted.max_lease_seconds == 0


def test_every_granted_name_and_no_model() -> None:
    client = ClientConnection(models=[])
    server = ServerConnection()
    assert server.receive_data(client.request_bytes()) == SecretRequest(RequestKind.LEASE, (), ())
    granted = client.receive_data(server.grant([("x", b"1"), ("y", b"2")]))
    assert granted == Granted({"x": b"1", "y": b"2"}, {}, 0)


def test_refusal_round_trip() -> None:
    client = ClientConnection(["default"], models=["m"])
    server = ServerConnection()
    server.receive_data(client.request_bytes())
    reply = server.refuse("secret not granted")
    assert reply.startswith(EXT2_RESPONSE_MAGIC + b"\x01")
    assert client.receive_data(reply) == Refused("secret not granted")


def test_split_in_every_place() -> None:
    data = request_v2([b"a", b"bb"], [b"m1", b"m2"])
    for cut in range(1, len(data)):
        server = ServerConnection()
        assert server.receive_data(data[:cut]) is None
        assert server.receive_data(data[cut:]) == SecretRequest(RequestKind.LEASE, ("a", "bb"), ("m1", "m2"))
    client = ClientConnection(["a"], models=["m"])
    server = ServerConnection()
    server.receive_data(client.request_bytes())
    reply = server.grant([("a", b"x")], floors=[("m", 3)], max_lease_seconds=60)
    for cut in range(1, len(reply)):
        client = ClientConnection(["a"], models=["m"])
        client.request_bytes()
        assert client.receive_data(reply[:cut]) is None
        with pytest.raises(ProtocolError, match="middle"):
            client.end_of_data()


def test_version_1_and_gramine_clients_never_see_version_2_bytes() -> None:
    for request, expected in (
        (GRAMINE_REQUEST, b"SECRET"),
        (EXT_REQUEST_MAGIC + b"\x00", b"CONFSERVE_SECRET_PROV_RESPONSE_V1"),
    ):
        server = ServerConnection()
        server.receive_data(request)
        reply = server.grant([("default", KEY)], floors=(), max_lease_seconds=300)
        assert reply.startswith(expected)
        assert b"V2" not in reply
    server = ServerConnection()
    server.receive_data(EXT_REQUEST_MAGIC + b"\x00")
    assert server.refuse("no").startswith(b"CONFSERVE_SECRET_PROV_RESPONSE_V1\x00\x01")


@pytest.mark.parametrize(
    ("request_bytes", "message"),
    [
        (request_v2([], []) + b"X", "unexpected bytes"),
        (EXT2_REQUEST_MAGIC + b"\x00" + bytes([MAX_MODELS + 1]), "at most 64"),
        (EXT2_REQUEST_MAGIC + b"\x00\x01\x00", "model name length 0"),
        (EXT2_REQUEST_MAGIC + b"\x00\x01\x81" + b"m" * 129, "model name length 129"),
        (request_v2([], [b"a/b"]), "invalid model name"),
        (request_v2([], [b"-a"]), "invalid model name"),
        (request_v2([], [b"m", b"m"]), "model twice"),
        (request_v2([b"a", b"a"], []), "secret twice"),
        (EXT2_REQUEST_MAGIC + b"\x00" * 20000, "too long"),
        (b"CONFSERVE_SECRET_PROV_REQUEST_V3\x00", "not a secret-provisioning request"),
    ],
)
def test_server_rejects_malformed_requests(request_bytes: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        ServerConnection().receive_data(request_bytes)


def test_the_largest_request_fits() -> None:
    names = [b"n%02d" % i + b"x" * 61 for i in range(32)]
    models = [b"m%02d" % i + b"y" * 125 for i in range(MAX_MODELS)]
    data = request_v2(names, models)
    assert len(data) == 10371
    request = ServerConnection().receive_data(data)
    assert request is not None
    assert len(request.models) == MAX_MODELS


@pytest.mark.parametrize(
    ("secrets", "floors", "lease", "message"),
    [
        ([("c", b"1")], [("m", 1)], 0, "requested secrets only"),
        ([("b", b"1"), ("a", b"1")], [("m", 1)], 0, "request order"),
        ([("a", b"1")], [], 0, "exactly the requested models"),
        ([("a", b"1")], [("n", 1)], 0, "exactly the requested models"),
        ([("a", b"1")], [("m", MAX_FLOOR + 1)], 0, "floor is out of range"),
        ([("a", b"1")], [("m", -1)], 0, "floor is out of range"),
        ([("a", b"1")], [("m", 1)], 2**32, "lease bound"),
        ([], [("m", 1)], 0, "1..32"),
    ],
)
def test_server_grant_shape_is_checked(
    secrets: list[tuple[str, bytes]], floors: list[tuple[str, int]], lease: int, message: str
) -> None:
    server = ServerConnection()
    server.receive_data(request_v2([b"a", b"b"], [b"m"]))
    with pytest.raises(ProtocolError, match=message):
        server.grant(secrets, floors=floors, max_lease_seconds=lease)


def _response(*parts: bytes) -> bytes:
    return EXT2_RESPONSE_MAGIC + b"".join(parts)


_SECRET_A = b"\x00\x01\x01a" + struct.pack(">I", 1) + b"x"


@pytest.mark.parametrize(
    ("names", "response", "message"),
    [
        (["a"], _response(b"\x00\x01\x01c", struct.pack(">I", 1), b"x\x01\x01m", struct.pack(">QI", 1, 0)), "not requested"),
        (["a"], _response(_SECRET_A, b"\x00", struct.pack(">I", 0)), "exactly the requested models"),
        (["a"], _response(_SECRET_A, b"\x02\x01m", struct.pack(">Q", 1)), "exactly the requested models"),
        (["a"], _response(_SECRET_A, b"\x01\x01n", struct.pack(">QI", 1, 0)), "exactly the requested models"),
        (["a"], _response(_SECRET_A, b"\x01\x01m", struct.pack(">QI", MAX_FLOOR + 1, 0)), "out of range"),
        (["a"], _response(_SECRET_A, b"\x01\x01m", struct.pack(">QI", 1, 0), b"Z"), "unexpected bytes"),
        (["a"], _response(_SECRET_A, b"\x01\x00"), "model name length 0"),
        (["a"], b"CONFSERVE_SECRET_PROV_RESPONSE_V1\x00" + _SECRET_A, "not a confserve"),
    ],
)  # fmt: skip
def test_client_rejects_malformed_responses(names: list[str], response: bytes, message: str) -> None:
    client = ClientConnection(names, models=["m"])
    client.request_bytes()
    with pytest.raises(ProtocolError, match=message):
        client.receive_data(response)


def test_client_arguments_are_checked() -> None:
    with pytest.raises(ProtocolError, match="at most 64 models"):
        ClientConnection(models=[f"m{i}" for i in range(MAX_MODELS + 1)])
    with pytest.raises(ProtocolError, match="invalid model name"):
        ClientConnection(models=["a b"])
    with pytest.raises(ProtocolError, match="named twice"):
        ClientConnection(models=["m", "m"])
    with pytest.raises(ProtocolError, match="no release floors"):
        ClientConnection(gramine=True, models=[])
    assert check_model_name("digits-v2.1") == "digits-v2.1"
    for bad in ("", "x" * 129, "_x", "ü"):
        with pytest.raises(ProtocolError):
            check_model_name(bad)


@given(st.binary(max_size=300))
def test_server_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    server = ServerConnection()
    with contextlib.suppress(ProtocolError):
        server.receive_data(EXT2_REQUEST_MAGIC + data)


@given(st.binary(max_size=300))
def test_client_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    client = ClientConnection(["a"], models=["m"])
    client.request_bytes()
    try:
        client.receive_data(EXT2_RESPONSE_MAGIC + data)
        client.end_of_data()
    except ProtocolError:
        pass


@given(
    st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True), unique=True, max_size=5),
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True),
        st.integers(0, MAX_FLOOR),
        max_size=5,
    ),
    st.integers(0, 2**32 - 1),
)
def test_round_trip_any(names: list[str], floors: dict[str, int], lease: int) -> None:
    client = ClientConnection(names or ["default"], models=list(floors))
    server = ServerConnection()
    request = server.receive_data(client.request_bytes())
    assert request is not None
    secrets = [(name, name.encode()) for name in request.names]
    granted = client.receive_data(server.grant(secrets, floors=list(floors.items()), max_lease_seconds=lease))
    assert granted == Granted(dict(secrets), floors, lease)
