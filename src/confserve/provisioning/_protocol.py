"""The secret-provisioning wire protocol as sans-I/O state machines: bytes in, events or bytes out.

Theory of operation
-------------------
Both protocols run inside one TLS session, after the handshake in which the enclave presented its RA-TLS
certificate. Nothing here touches a socket, a clock or TLS: the server and the client drivers feed the
decrypted bytes they read into `ServerConnection.receive_data` / `ClientConnection.receive_data` and write
out the bytes these objects return. Every input is bounded; anything malformed, oversized, truncated or
out of order raises `ProtocolError` (never another exception).

**Gramine protocol** (docs/formats.md#sp-wire; unchanged from Gramine v1.0 to v1.9):

| direction        | offset | size | content                                                    |
|------------------|--------|------|------------------------------------------------------------|
| client -> server | 0      | 35   | `SECRET_PROVISION_RA_TLS_REQUEST_V1` + NUL                 |
| server -> client | 0      | 37   | `SECRET_PROVISION_RA_TLS_RESPONSE_V1:` + NUL               |
|                  | 37     | 4    | N, u32 big-endian, 0 < N                                   |
|                  | 41     | N    | the secret                                                 |

A refused Gramine client gets no byte at all: the server closes the connection, as Gramine's server does
(the client then fails with a read error). A Gramine client always receives the secret named `default`.

**confserve extension** (several named secrets in one session). Its request magic starts with `C`, where
Gramine's starts with `S`, so the server knows from the client's first byte which protocol it speaks and
never sends extension bytes to a Gramine client: a Gramine client always sends Gramine's request first.

Request (client -> server), at most 33 + 1 + 32 * 65 = 2114 bytes:

| offset | size | content                                                                      |
|--------|------|------------------------------------------------------------------------------|
| 0      | 33   | `CONFSERVE_SECRET_PROV_REQUEST_V1` + NUL                                     |
| 33     | 1    | n, the number of names, 0..32; 0 asks for every secret the enclave is granted |
| 34     | ...  | n times: u8 length L (1..64), then L bytes of name `[A-Za-z0-9][A-Za-z0-9._-]*` |

Response (server -> client):

| offset | size | content                                                                       |
|--------|------|-------------------------------------------------------------------------------|
| 0      | 34   | `CONFSERVE_SECRET_PROV_RESPONSE_V1` + NUL                                     |
| 34     | 1    | status: 0 granted, 1 refused                                                  |
| granted| 1    | m, the number of secrets, 1..32; then m times: u8 name length L (1..64), L    |
|        |      | bytes of name, u32 big-endian size S (1..65536), S bytes of secret            |
| refused| 1    | reason length R (0..255), then R bytes of printable ASCII (a generic reason)  |

The request is all or nothing: a name that is not granted refuses the whole request. Names are unique and
the granted names are exactly the requested ones (or, for n = 0, every granted name). After the response
the server closes the connection; bytes after a complete message are a protocol error on either side.

**Version 2: keys with release floors and a lease bound** (docs/releases.md). A replica that renews its
keys on a lease also needs, inside the same attested session, each model's lowest acceptable release
(its *floor*) and the longest lease the owner allows. Same first byte `C`, so the server tells the three
protocols apart as before; a Gramine client and a version 1 client never see a version 2 byte.

Request, at most 33 + 1 + 32 * 65 + 1 + 64 * 129 = 10,371 bytes:

| offset | size | content                                                                       |
|--------|------|-------------------------------------------------------------------------------|
| 0      | 33   | `CONFSERVE_SECRET_PROV_REQUEST_V2` + NUL                                      |
| 33     | 1    | n names, 0..32, then the names as in version 1 (0: every granted secret)      |
| ...    | 1    | k models, 0..64; then k times: u8 length (1..128), model name                 |
|        |      | `[A-Za-z0-9][A-Za-z0-9._-]*`, unique                                          |

Response: `CONFSERVE_SECRET_PROV_RESPONSE_V2` + NUL (34 bytes), u8 status; refused as in version 1;
granted:

| size | content                                                                                     |
|------|---------------------------------------------------------------------------------------------|
| 1    | m secrets, 1..32; then m times: name (u8 length, bytes), u32 big-endian size 1..65536, secret |
| 1    | k, the number of models requested; then k times, in request order: name, u64 BE floor      |
| 4    | u32 big-endian: the longest lease the owner allows, in seconds (0: no bound)                |

Unlike version 1 the names are not all or nothing: the server grants the requested names the policy
grants, in request order, and leaves out the others (a model whose key was withdrawn must not stop the
replica's other models); at least one, or the request is refused. The client checks that the granted
names are requested ones, in order, and that the floors are exactly the requested models, in order.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from confserve.provisioning._errors import ProtocolError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_SECRET_NAME",
    "EXT2_REQUEST_MAGIC",
    "EXT2_RESPONSE_MAGIC",
    "EXT_REQUEST_MAGIC",
    "EXT_RESPONSE_MAGIC",
    "GRAMINE_REQUEST",
    "GRAMINE_RESPONSE_PREFIX",
    "MAX_MODELS",
    "MAX_MODEL_NAME_BYTES",
    "MAX_NAMES",
    "MAX_NAME_BYTES",
    "MAX_REASON_BYTES",
    "MAX_SECRET_BYTES",
    "ClientConnection",
    "Granted",
    "Refused",
    "RequestKind",
    "SecretRequest",
    "ServerConnection",
    "check_model_name",
    "check_secret_name",
]

DEFAULT_PORT: Final = 4433  # Gramine's port, its clients' and servers' default (docs/formats.md#sp-wire)
GRAMINE_REQUEST: Final = b"SECRET_PROVISION_RA_TLS_REQUEST_V1\0"  # 35 bytes
GRAMINE_RESPONSE_PREFIX: Final = b"SECRET_PROVISION_RA_TLS_RESPONSE_V1:\0"  # 37 bytes
EXT_REQUEST_MAGIC: Final = b"CONFSERVE_SECRET_PROV_REQUEST_V1\0"  # 33 bytes
EXT_RESPONSE_MAGIC: Final = b"CONFSERVE_SECRET_PROV_RESPONSE_V1\0"  # 34 bytes
EXT2_REQUEST_MAGIC: Final = b"CONFSERVE_SECRET_PROV_REQUEST_V2\0"  # 33 bytes
EXT2_RESPONSE_MAGIC: Final = b"CONFSERVE_SECRET_PROV_RESPONSE_V2\0"  # 34 bytes
assert len(GRAMINE_REQUEST) == 35
assert len(GRAMINE_RESPONSE_PREFIX) == 37
assert GRAMINE_REQUEST[0] != EXT_REQUEST_MAGIC[0] == EXT2_REQUEST_MAGIC[0]
assert len(EXT2_REQUEST_MAGIC) == len(EXT_REQUEST_MAGIC)

DEFAULT_SECRET_NAME: Final = "default"  # noqa: S105 (a name) - what a Gramine client receives (SECRET_PROVISION_SET_KEY=default)
# A model server needs one or a few keys; 32 names per session is generous and bounds the request.
MAX_NAMES: Final = 32
# The attestation policy's limit on secret names (confserve.attestation._policy._MAX_NAME_CHARS).
MAX_NAME_BYTES: Final = 64
# A wrap key is 16 bytes and a TLS private key a few KB; 64 KiB bounds what either side buffers.
MAX_SECRET_BYTES: Final = 64 * 1024
MAX_REASON_BYTES: Final = 255  # a u8 length
# A replica serves a handful of models; 64 per session bounds the request. Model names as releases
# name them (confserve.releases: at most 128 characters).
MAX_MODELS: Final = 64
MAX_MODEL_NAME_BYTES: Final = 128
MAX_FLOOR: Final = 2**53 - 1  # release numbers are exact JSON numbers (confserve.releases)
MAX_LEASE_SECONDS: Final = 2**32 - 1  # a u32
_STATUS_GRANTED: Final = 0
_STATUS_REFUSED: Final = 1
_NAME_RE: Final = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]*")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_MAX_REQUEST_BYTES: Final = len(EXT_REQUEST_MAGIC) + 1 + MAX_NAMES * (1 + MAX_NAME_BYTES)
_MAX_REQUEST_V2_BYTES: Final = _MAX_REQUEST_BYTES + 1 + MAX_MODELS * (1 + MAX_MODEL_NAME_BYTES)


def check_secret_name(name: str) -> str:
    """Return `name` if it is a valid secret name, else raise ProtocolError."""
    raw = name.encode("ascii", "replace") if isinstance(name, str) else b""
    if not (1 <= len(raw) <= MAX_NAME_BYTES and _NAME_RE.fullmatch(raw)):
        raise ProtocolError("invalid secret name")
    return name


def check_model_name(name: str) -> str:
    """Return `name` if it is a valid model name for a floor, else raise ProtocolError."""
    raw = name.encode("ascii", "replace") if isinstance(name, str) else b""
    if not (1 <= len(raw) <= MAX_MODEL_NAME_BYTES and _NAME_RE.fullmatch(raw)):
        raise ProtocolError("invalid model name")
    return name


class RequestKind(enum.Enum):
    GRAMINE = "gramine"
    EXTENSION = "confserve"
    LEASE = "confserve-v2"  # version 2: keys with release floors and a lease bound


@dataclass(frozen=True, slots=True)
class SecretRequest:
    """A complete request. `names` is empty when an extension client asks for everything it is granted;
    `models` (version 2 only) are those whose release floors it asks for."""

    kind: RequestKind
    names: tuple[str, ...]
    models: tuple[str, ...] = ()

    @property
    def wants_all(self) -> bool:
        return not self.names


@dataclass(frozen=True, slots=True)
class Granted:
    """The secrets a client received (version 2: also the floors of the models it asked about and the
    owner's lease bound, 0 for none). The repr shows names and sizes only, never a secret byte."""

    secrets: Mapping[str, bytes]
    floors: Mapping[str, int] = field(default_factory=dict)
    max_lease_seconds: int = 0

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}: {len(value)} bytes" for name, value in self.secrets.items())
        if not self.floors and not self.max_lease_seconds:
            return f"Granted({{{sizes}}})"
        return f"Granted({{{sizes}}}, floors={dict(self.floors)}, max_lease_seconds={self.max_lease_seconds})"


@dataclass(frozen=True, slots=True)
class Refused:
    """The server refused; `reason` is the short generic reason it sent (empty for a Gramine server)."""

    reason: str


class _Reader:
    """Cursor over a buffer that may not be complete yet: `take` returns None when more bytes are needed."""

    def __init__(self, data: bytes | bytearray) -> None:
        self._data = data
        self.offset = 0

    def take(self, size: int) -> bytes | None:
        end = self.offset + size
        if end > len(self._data):
            return None
        chunk = bytes(self._data[self.offset : end])
        self.offset = end
        return chunk

    def u8(self) -> int | None:
        chunk = self.take(1)
        return None if chunk is None else chunk[0]

    def u32(self) -> int | None:
        chunk = self.take(4)
        return None if chunk is None else int(_U32.unpack(chunk)[0])

    @property
    def remaining(self) -> int:
        return len(self._data) - self.offset


def _read_name(reader: _Reader, *, limit: int = MAX_NAME_BYTES, what: str = "secret") -> str | None:
    length = reader.u8()
    if length is None:
        return None
    if not 1 <= length <= limit:
        raise ProtocolError(f"{what} name length {length} outside 1..{limit}")
    raw = reader.take(length)
    if raw is None:
        return None
    if not _NAME_RE.fullmatch(raw):
        raise ProtocolError(f"invalid {what} name")
    return raw.decode("ascii")


def _read_names(reader: _Reader, limit: int, *, name_limit: int, what: str) -> tuple[str, ...] | None:
    """A u8 count (at most `limit`) and that many unique names; None when more bytes are needed."""
    count = reader.u8()
    if count is None:
        return None
    if count > limit:
        raise ProtocolError(f"request names {count} {what}s (at most {limit})")
    names: list[str] = []
    for _ in range(count):
        name = _read_name(reader, limit=name_limit, what=what)
        if name is None:
            return None
        if name in names:
            raise ProtocolError(f"request names a {what} twice")
        names.append(name)
    return tuple(names)


def _is_prefix(data: bytes | bytearray, magic: bytes) -> bool:
    n = min(len(data), len(magic))
    return bytes(data[:n]) == magic[:n]


def _reader_after(data: bytes | bytearray, magic: bytes, what: str) -> _Reader | None:
    """A reader past `magic` at the start of `data`; None while `data` is shorter than `magic`. Raises when
    `data` cannot be `what` (it does not start as `magic` does)."""
    if not _is_prefix(data, magic):
        raise ProtocolError(f"not {what}")
    reader = _Reader(data)
    return None if reader.take(len(magic)) is None else reader


def _read_secret(reader: _Reader, max_size: int) -> bytes | None:
    """A u32 size (1..`max_size`) and that many bytes; None when more bytes are needed."""
    size = reader.u32()
    if size is None:
        return None
    if not 1 <= size <= max_size:
        raise ProtocolError(f"secret size {size} outside 1..{max_size} bytes")
    return reader.take(size)


def _encode_name(name: str) -> bytes:
    raw = check_secret_name(name).encode("ascii")
    return bytes((len(raw),)) + raw


def _encode_model(name: str) -> bytes:
    raw = check_model_name(name).encode("ascii")
    return bytes((len(raw),)) + raw


# --------------------------------------------------------------------------------------------------
# Server side


class ServerState(enum.Enum):
    AWAIT_REQUEST = "await-request"
    REQUEST_RECEIVED = "request-received"
    DONE = "done"


class ServerConnection:
    """The server's half: parse one request, then produce the grant or refusal bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = ServerState.AWAIT_REQUEST
        self._request: SecretRequest | None = None

    @property
    def state(self) -> ServerState:
        return self._state

    def receive_data(self, data: bytes) -> SecretRequest | None:
        """Feed bytes read from the client; returns the request once it is complete."""
        if not data:
            return None
        if self._state is not ServerState.AWAIT_REQUEST:
            self._state = ServerState.DONE
            raise ProtocolError("unexpected bytes after the request")
        self._buffer += data
        try:
            request = self._parse()
        except ProtocolError:
            self._state = ServerState.DONE
            raise
        if request is not None:
            self._request = request
            self._state = ServerState.REQUEST_RECEIVED
        return request

    def end_of_data(self) -> None:
        """The client closed its side. Raises ProtocolError if no complete request had arrived."""
        if self._state is ServerState.AWAIT_REQUEST:
            self._state = ServerState.DONE
            if not self._buffer:
                raise ProtocolError("connection closed without a request")
            raise ProtocolError("connection closed in the middle of the request")

    def _parse(self) -> SecretRequest | None:
        buf = self._buffer
        if _is_prefix(buf, GRAMINE_REQUEST):
            if len(buf) < len(GRAMINE_REQUEST):
                return None
            if len(buf) > len(GRAMINE_REQUEST):
                raise ProtocolError("unexpected bytes after the request")
            return SecretRequest(RequestKind.GRAMINE, (DEFAULT_SECRET_NAME,))
        if not (_is_prefix(buf, EXT_REQUEST_MAGIC) or _is_prefix(buf, EXT2_REQUEST_MAGIC)):
            raise ProtocolError("not a secret-provisioning request")
        if len(buf) < len(EXT_REQUEST_MAGIC):
            return None
        v2 = bytes(buf[: len(EXT2_REQUEST_MAGIC)]) == EXT2_REQUEST_MAGIC
        if len(buf) > (_MAX_REQUEST_V2_BYTES if v2 else _MAX_REQUEST_BYTES):
            raise ProtocolError("request too long")
        reader = _Reader(buf)
        reader.take(len(EXT_REQUEST_MAGIC))
        names = _read_names(reader, MAX_NAMES, name_limit=MAX_NAME_BYTES, what="secret")
        if names is None:
            return None
        models: tuple[str, ...] = ()
        if v2:
            found = _read_names(reader, MAX_MODELS, name_limit=MAX_MODEL_NAME_BYTES, what="model")
            if found is None:
                return None
            models = found
        if reader.remaining:
            raise ProtocolError("unexpected bytes after the request")
        return SecretRequest(RequestKind.LEASE if v2 else RequestKind.EXTENSION, names, models)

    def _responding(self) -> SecretRequest:
        if self._state is not ServerState.REQUEST_RECEIVED or self._request is None:
            raise ProtocolError("no complete request to respond to")
        self._state = ServerState.DONE
        return self._request

    def grant(
        self,
        secrets: Sequence[tuple[str, bytes]],
        *,
        floors: Sequence[tuple[str, int]] = (),
        max_lease_seconds: int = 0,
    ) -> bytes:
        """The bytes that release `secrets` (name, value) in the client's protocol.

        A Gramine client takes exactly one secret; a version 1 client exactly the names it asked for (or
        at least one when it asked for all); a version 2 client some of the names it asked for, in order,
        and `floors` for exactly the models it asked about, with `max_lease_seconds`. The caller decides
        what is granted; this checks the shape.
        """
        request = self._responding()
        if not secrets or len(secrets) > MAX_NAMES:
            raise ProtocolError("a grant carries 1..32 secrets")
        for name, value in secrets:
            check_secret_name(name)
            if not 1 <= len(value) <= MAX_SECRET_BYTES:
                raise ProtocolError(f"secret {name!r} size outside 1..{MAX_SECRET_BYTES} bytes")
        names = [name for name, _ in secrets]
        if len(set(names)) != len(names):
            raise ProtocolError("a grant names a secret twice")
        if request.kind is RequestKind.GRAMINE:
            if len(secrets) != 1:
                raise ProtocolError("a Gramine client receives exactly one secret")
            value = secrets[0][1]
            return GRAMINE_RESPONSE_PREFIX + _U32.pack(len(value)) + value
        if request.kind is RequestKind.LEASE:
            return self._grant_v2(request, secrets, floors, max_lease_seconds)
        if request.names and tuple(names) != request.names:
            raise ProtocolError("a grant must carry exactly the requested secrets, in order")
        out = bytearray(EXT_RESPONSE_MAGIC)
        out += bytes((_STATUS_GRANTED, len(secrets)))
        for name, value in secrets:
            out += _encode_name(name) + _U32.pack(len(value)) + value
        return bytes(out)

    @staticmethod
    def _grant_v2(
        request: SecretRequest,
        secrets: Sequence[tuple[str, bytes]],
        floors: Sequence[tuple[str, int]],
        max_lease_seconds: int,
    ) -> bytes:
        names = [name for name, _ in secrets]
        if request.names and names != [n for n in request.names if n in names]:
            raise ProtocolError("a grant must carry requested secrets only, in request order")
        if tuple(model for model, _ in floors) != request.models:
            raise ProtocolError("a grant must carry the floors of exactly the requested models, in order")
        if not all(0 <= floor <= MAX_FLOOR for _, floor in floors):
            raise ProtocolError("a release floor is out of range")
        if not 0 <= max_lease_seconds <= MAX_LEASE_SECONDS:
            raise ProtocolError("the lease bound is out of range")
        out = bytearray(EXT2_RESPONSE_MAGIC)
        out += bytes((_STATUS_GRANTED, len(secrets)))
        for name, value in secrets:
            out += _encode_name(name) + _U32.pack(len(value)) + value
        out += bytes((len(floors),))
        for model, floor in floors:
            out += _encode_model(model) + _U64.pack(floor)
        out += _U32.pack(max_lease_seconds)
        return bytes(out)

    def refuse(self, reason: str) -> bytes:
        """The refusal bytes: none for a Gramine client (just close), a short reason for an extension one.

        Also valid when no complete request arrived, or a malformed one (returns b"", the caller closes)."""
        if self._request is None:  # no complete request (none yet, or a malformed one): just close
            self._state = ServerState.DONE
            return b""
        request = self._responding()
        if request.kind is RequestKind.GRAMINE:
            return b""
        text = "".join(c if " " <= c <= "~" else "?" for c in reason)[:MAX_REASON_BYTES]
        raw = text.encode("ascii")
        magic = EXT2_RESPONSE_MAGIC if request.kind is RequestKind.LEASE else EXT_RESPONSE_MAGIC
        return magic + bytes((_STATUS_REFUSED, len(raw))) + raw


# --------------------------------------------------------------------------------------------------
# Client side


class ClientState(enum.Enum):
    IDLE = "idle"
    AWAIT_RESPONSE = "await-response"
    DONE = "done"


class ClientConnection:
    """The enclave's half. `gramine=True` speaks Gramine's request (one secret, returned as `default`);
    otherwise the extension asks for `names` (empty: every granted secret). `models` (a sequence, even
    empty) speaks version 2: some of `names`, and the release floors of `models`."""

    def __init__(
        self,
        names: Sequence[str] = (),
        *,
        gramine: bool = False,
        models: Sequence[str] | None = None,
        max_secret_bytes: int = MAX_SECRET_BYTES,
    ) -> None:
        names = tuple(names)
        if gramine and names not in ((), (DEFAULT_SECRET_NAME,)):
            raise ProtocolError("the Gramine protocol can only ask for the default secret")
        if gramine and models is not None:
            raise ProtocolError("the Gramine protocol carries no release floors")
        if len(names) > MAX_NAMES:
            raise ProtocolError(f"at most {MAX_NAMES} secret names per request")
        for name in names:
            check_secret_name(name)
        if len(set(names)) != len(names):
            raise ProtocolError("a secret name is requested twice")
        self._models = None if models is None else tuple(models)
        if self._models is not None:
            if len(self._models) > MAX_MODELS:
                raise ProtocolError(f"at most {MAX_MODELS} models per request")
            for model in self._models:
                check_model_name(model)
            if len(set(self._models)) != len(self._models):
                raise ProtocolError("a model is named twice")
        if not 1 <= max_secret_bytes <= MAX_SECRET_BYTES:
            raise ProtocolError(f"max_secret_bytes must be in 1..{MAX_SECRET_BYTES}")
        self._names = names
        self._gramine = gramine
        self._max_secret = max_secret_bytes
        self._buffer = bytearray()
        self._state = ClientState.IDLE

    @property
    def state(self) -> ClientState:
        return self._state

    def request_bytes(self) -> bytes:
        if self._state is not ClientState.IDLE:
            raise ProtocolError("the request was already sent")
        self._state = ClientState.AWAIT_RESPONSE
        if self._gramine:
            return GRAMINE_REQUEST
        names = bytes((len(self._names),)) + b"".join(map(_encode_name, self._names))
        if self._models is None:
            return EXT_REQUEST_MAGIC + names
        return (
            EXT2_REQUEST_MAGIC
            + names
            + bytes((len(self._models),))
            + b"".join(map(_encode_model, self._models))
        )

    def receive_data(self, data: bytes) -> Granted | Refused | None:
        """Feed bytes from the server; returns the outcome once the response is complete."""
        if not data:
            return None
        if self._state is not ClientState.AWAIT_RESPONSE:
            self._state = ClientState.DONE
            raise ProtocolError("unexpected bytes from the server")
        self._buffer += data
        try:
            outcome = self._parse_gramine() if self._gramine else self._parse_extension()
        except ProtocolError:
            self._state = ClientState.DONE
            raise
        if outcome is not None:
            self._state = ClientState.DONE
        return outcome

    def end_of_data(self) -> Refused | None:
        """The server closed. Before any byte that is a refusal (Gramine's way); mid-response an error."""
        if self._state is ClientState.IDLE:
            raise ProtocolError("connection closed before the request was sent")
        if self._state is ClientState.DONE:
            return None
        self._state = ClientState.DONE
        if not self._buffer:
            return Refused("")
        raise ProtocolError("connection closed in the middle of the response")

    def _parse_gramine(self) -> Granted | None:
        reader = _reader_after(
            self._buffer, GRAMINE_RESPONSE_PREFIX, "a Gramine secret-provisioning response"
        )
        if reader is None:
            return None
        value = _read_secret(reader, self._max_secret)
        if value is None:
            return None
        if reader.remaining:
            raise ProtocolError("unexpected bytes after the response")
        return Granted({DEFAULT_SECRET_NAME: value})

    def _parse_extension(self) -> Granted | Refused | None:  # noqa: PLR0911, PLR0912 (one field per step)
        magic = EXT_RESPONSE_MAGIC if self._models is None else EXT2_RESPONSE_MAGIC
        reader = _reader_after(self._buffer, magic, "a confserve secret-provisioning response")
        if reader is None:
            return None
        status = reader.u8()
        if status is None:
            return None
        if status == _STATUS_REFUSED:
            return self._parse_refusal(reader)
        if status != _STATUS_GRANTED:
            raise ProtocolError(f"unknown response status {status}")
        count = reader.u8()
        if count is None:
            return None
        if not 1 <= count <= MAX_NAMES:
            raise ProtocolError(f"response carries {count} secrets (1..{MAX_NAMES})")
        secrets: dict[str, bytes] = {}
        for _ in range(count):
            name = _read_name(reader)
            if name is None:
                return None
            if name in secrets:
                raise ProtocolError("response names a secret twice")
            value = _read_secret(reader, self._max_secret)
            if value is None:
                return None
            secrets[name] = value
        if self._models is not None:
            return self._parse_floors(reader, secrets)
        if reader.remaining:
            raise ProtocolError("unexpected bytes after the response")
        if self._names and tuple(secrets) != self._names:
            raise ProtocolError("response does not carry exactly the requested secrets")
        return Granted(secrets)

    def _parse_floors(self, reader: _Reader, secrets: dict[str, bytes]) -> Granted | None:
        """Version 2, after the secrets: the floors of the requested models and the lease bound."""
        assert self._models is not None
        if self._names and list(secrets) != [n for n in self._names if n in secrets]:
            raise ProtocolError("response carries secrets that were not requested, or out of order")
        count = reader.u8()
        if count is None:
            return None
        if count != len(self._models):
            raise ProtocolError("response does not carry the floors of exactly the requested models")
        floors: dict[str, int] = {}
        for model in self._models:
            name = _read_name(reader, limit=MAX_MODEL_NAME_BYTES, what="model")
            if name is None:
                return None
            if name != model:
                raise ProtocolError("response does not carry the floors of exactly the requested models")
            chunk = reader.take(8)
            if chunk is None:
                return None
            floor = int(_U64.unpack(chunk)[0])
            if floor > MAX_FLOOR:
                raise ProtocolError("a release floor is out of range")
            floors[name] = floor
        lease = reader.u32()
        if lease is None:
            return None
        if reader.remaining:
            raise ProtocolError("unexpected bytes after the response")
        return Granted(secrets, floors, lease)

    @staticmethod
    def _parse_refusal(reader: _Reader) -> Refused | None:
        length = reader.u8()
        if length is None:
            return None
        raw = reader.take(length)
        if raw is None:
            return None
        if reader.remaining:
            raise ProtocolError("unexpected bytes after the response")
        if not all(0x20 <= c <= 0x7E for c in raw):
            raise ProtocolError("refusal reason is not printable ASCII")
        return Refused(raw.decode("ascii"))
