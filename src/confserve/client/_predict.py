"""A TF Serving client over gRPC or REST, with TLS from a client bundle.

It speaks TF Serving's public API only, so it works against confserve and against a real
tensorflow_model_server alike. It never loads the TensorFlow runtime: the protos come from
confserve.tfs_protos and tensors are converted by confserve.tensor_proto (see docs/client.md).
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt

from confserve.client._errors import ClientError, RemoteError
from confserve.client._tls import ClientTls
from confserve.tensor_proto import DTYPES, TensorProtoError, dtype_name, to_array, to_proto

if TYPE_CHECKING:  # the attestation stack is imported only by a client that attests
    from confserve.client._attest import AttestationCheck, AttestedServer

__all__ = ["PredictClient", "Signature", "TensorSpec"]

Protocol_ = Literal["grpc", "rest"]
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024  # the server's default limit (GrpcSettings)
# How gRPC core begins the details of an UNAVAILABLE status when no connection could be made.
_NO_CONNECTION: Final = "failed to connect to all addresses"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    dtype: str  # numpy dtype name, or "string" for DT_STRING (TensorFlow's name for other dtypes)
    shape: tuple[int, ...] | None  # -1 for an unknown dimension; None for unknown rank

    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of this input or output (object for strings); ClientError if there is none."""
        row = _BY_SPEC_NAME.get(self.dtype)
        if row is None:
            raise ClientError(f"dtype {self.dtype} has no numpy counterpart")
        return row.numpy_dtype()


@dataclass(frozen=True, slots=True)
class Signature:
    name: str
    method: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


_BY_SPEC_NAME: Final = {"string" if row.kind == "string" else row.numpy: row for row in DTYPES.values()}
_ENUM_BY_NAME: Final = {row.enum_name: row.enum for row in DTYPES.values()}


def _spec_from_enum(dtype_enum: int, dims: list[int] | None) -> TensorSpec:
    row = DTYPES.get(dtype_enum)
    name = dtype_name(dtype_enum) if row is None else ("string" if row.kind == "string" else row.numpy)
    return TensorSpec(name, None if dims is None else tuple(dims))


def _spec_from_json(dtype: str, dims: list[int] | None) -> TensorSpec:
    """From REST metadata, which names dtypes as the enum does ("DT_FLOAT")."""
    enum = _ENUM_BY_NAME.get(dtype)
    if enum is None:
        return TensorSpec(dtype.removeprefix("DT_").lower(), None if dims is None else tuple(dims))
    return _spec_from_enum(enum, dims)


@dataclass(frozen=True, slots=True)
class _Call:
    """One Predict request as `PredictClient.predict` was given it, for the transport to send."""

    model: str
    inputs: Mapping[str, npt.NDArray[Any]]
    signature_name: str
    version: int | None
    label: str | None
    outputs: tuple[str, ...]


def _signature_named(model: str, signature_name: str, available: Collection[str]) -> str:
    """The signature a call means (TF Serving's default when none is named); ClientError if the model
    has no such signature."""
    name = signature_name or "serving_default"
    if name not in available:
        raise ClientError(f"model {model!r} has no signature {name!r} (has: {', '.join(sorted(available))})")
    return name


def _arrays(protos: Mapping[str, Any]) -> dict[str, npt.NDArray[Any]]:
    try:
        return {alias: to_array(proto) for alias, proto in sorted(protos.items())}
    except TensorProtoError as e:
        raise ClientError(f"server returned an output that cannot be read: {e}") from None


class _Transport(Protocol):
    def signature(self, model: str, signature_name: str, version: int | None) -> Signature: ...

    def predict(self, call: _Call) -> dict[str, npt.NDArray[Any]]: ...

    def evidence(self, request: bytes) -> bytes: ...

    def close(self) -> None: ...


class _Grpc:
    def __init__(self, target: str, tls: ClientTls | None, timeout: float, max_message_bytes: int) -> None:
        import grpc  # noqa: PLC0415

        from confserve.tfs_protos import prediction_service_pb2_grpc  # noqa: PLC0415

        self._grpc = grpc
        self._target = target
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls.ca_pem, private_key=tls.key_pem(), certificate_chain=tls.cert_pem()
            )
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
                options.append(("grpc.default_authority", tls.server_name))
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._timeout = timeout

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout)
        except self._grpc.RpcError as e:
            details = e.details() or ""
            if e.code() == self._grpc.StatusCode.UNAVAILABLE and details.startswith(_NO_CONNECTION):
                # No server answered at all (refused, unreachable, TLS handshake failed): not a server error.
                raise ClientError(f"cannot reach {self._target}: {details}") from None
            raise RemoteError(e.code().name, details) from None

    def signature(self, model: str, signature_name: str, version: int | None) -> Signature:
        from confserve.tfs_protos import get_model_metadata_pb2  # noqa: PLC0415

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        request.metadata_field.append("signature_def")
        response = self._call(self._stub.GetModelMetadata, request)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        name = _signature_named(model, signature_name, sig_map.signature_def)
        sig = sig_map.signature_def[name]

        def specs(infos: Any) -> dict[str, TensorSpec]:
            return {
                alias: _spec_from_enum(
                    info.dtype,
                    None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim],
                )
                for alias, info in sorted(infos.items())
            }

        return Signature(name, sig.method_name, specs(sig.inputs), specs(sig.outputs))

    def predict(self, call: _Call) -> dict[str, npt.NDArray[Any]]:
        from confserve.tfs_protos import predict_pb2  # noqa: PLC0415

        request = predict_pb2.PredictRequest()
        request.model_spec.name = call.model
        request.model_spec.signature_name = call.signature_name
        if call.version is not None:
            request.model_spec.version.value = call.version
        if call.label is not None:
            request.model_spec.version_label = call.label
        for alias, array in call.inputs.items():
            try:
                request.inputs[alias].CopyFrom(to_proto(array))
            except TensorProtoError as e:
                raise ClientError(f"input {alias!r}: {e}") from None
        request.output_filter.extend(call.outputs)
        response = self._call(self._stub.Predict, request)
        return _arrays(response.outputs)

    def evidence(self, request: bytes) -> bytes:
        call = self._channel.unary_unary("/confserve.Attestation/GetEvidence")
        return bytes(self._call(call, request))

    def close(self) -> None:
        self._channel.close()


class _HttpsConnection(http.client.HTTPSConnection):
    """HTTPS with the certificate checked against `server_name` instead of the dialled host."""

    def __init__(
        self, host: str, port: int, *, context: ssl.SSLContext, server_name: str, timeout: float
    ) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._server_name = server_name
        self._context = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        # As http.client's own connect does: headers and body go out in separate writes, and Nagle's
        # algorithm with delayed ACKs would hold the second one back by ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_name)


def _json_array(value: Any, spec: TensorSpec) -> npt.NDArray[Any]:
    if spec.dtype == "string":

        def decode(v: Any) -> Any:
            if isinstance(v, dict) and set(v) == {"b64"}:
                return base64.b64decode(v["b64"])
            if isinstance(v, list):
                return [decode(x) for x in v]
            return str(v).encode()

        return np.array(decode(value), dtype=object)
    return np.asarray(value, dtype=spec.numpy_dtype())


def _json_value(array: npt.NDArray[Any]) -> Any:
    if array.dtype == object or array.dtype.kind == "S":

        def encode(v: Any) -> Any:
            if isinstance(v, list):
                return [encode(x) for x in v]
            data = v if isinstance(v, bytes) else str(v).encode()
            return {"b64": base64.b64encode(data).decode()}

        return encode(array.tolist())
    return array.tolist()


class _Rest:
    def __init__(self, target: str, tls: ClientTls | None, timeout: float) -> None:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ClientError(f"REST target must be HOST:PORT, not {target!r}")
        self._host, self._port, self._tls, self._timeout = host.strip("[]"), int(port), tls, timeout
        self._context = tls.ssl_context() if tls else None
        self._signatures: dict[tuple[str, str, int | None], Signature] = {}
        self._local = threading.local()

    def _drop(self) -> None:
        conn = getattr(self._local, "connection", None)
        self._local.connection = None
        if conn is not None:
            conn.close()

    def evidence(self, request: bytes) -> bytes:
        return json.dumps(self._request("POST", "/v1/confserve/evidence", json.loads(request))).encode()

    def _connect(self) -> http.client.HTTPConnection:
        if self._tls is not None and self._context is not None:
            return _HttpsConnection(
                self._host,
                self._port,
                context=self._context,
                server_name=self._tls.server_name or self._host,
                timeout=self._timeout,
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        # One kept-alive connection per thread (HTTP/1.1): a TLS handshake per request would cost more than
        # a small model's inference. A kept connection the server has closed meanwhile is replaced once.
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        for attempt in (1, 2):
            conn = getattr(self._local, "connection", None)
            fresh = conn is None
            if conn is None:
                conn = self._local.connection = self._connect()
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.will_close:
                    self._drop()
                break
            except ssl.SSLCertVerificationError as e:
                self._drop()
                raise ClientError(
                    f"TLS with {self._host}:{self._port} failed: "
                    f"the server's certificate is refused ({e.verify_message})"
                ) from None
            except ssl.SSLError as e:
                self._drop()
                raise ClientError(f"TLS with {self._host}:{self._port} failed: {e.reason or e}") from None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self._drop()
                if fresh or attempt == 2:
                    raise ClientError(f"cannot reach {self._host}:{self._port}: {e}") from None
            except OSError as e:
                self._drop()
                raise ClientError(f"cannot reach {self._host}:{self._port}: {e.strerror or e}") from None
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            raise ClientError(
                f"server answered HTTP {response.status} with a body that is not JSON"
            ) from None
        if response.status != 200:
            message = parsed.get("error", "") if isinstance(parsed, dict) else ""
            raise RemoteError(f"HTTP {response.status}", str(message))
        return parsed

    @staticmethod
    def _path(model: str, version: int | None, label: str | None) -> str:
        path = f"/v1/models/{model}"
        if version is not None:
            path += f"/versions/{version}"
        elif label is not None:
            path += f"/labels/{label}"
        return path

    def signature(self, model: str, signature_name: str, version: int | None) -> Signature:
        key = (model, signature_name, version)
        if key not in self._signatures:
            self._signatures[key] = self._fetch_signature(model, signature_name, version)
        return self._signatures[key]

    def _fetch_signature(self, model: str, signature_name: str, version: int | None) -> Signature:
        meta = self._request("GET", self._path(model, version, None) + "/metadata")
        try:
            sigs = meta["metadata"]["signature_def"]["signature_def"]
            name = _signature_named(model, signature_name, sigs)
            sig = sigs[name]

            def specs(infos: dict[str, Any]) -> dict[str, TensorSpec]:
                out = {}
                for alias, info in sorted(infos.items()):
                    shape = info.get("tensor_shape", {})
                    dims = (
                        None if shape.get("unknown_rank") else [int(d["size"]) for d in shape.get("dim", [])]
                    )
                    out[alias] = _spec_from_json(info["dtype"], dims)
                return out

            return Signature(
                name, sig.get("method_name", ""), specs(sig.get("inputs", {})), specs(sig.get("outputs", {}))
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ClientError(f"unexpected model metadata from the server ({type(e).__name__})") from None

    def predict(self, call: _Call) -> dict[str, npt.NDArray[Any]]:
        body: dict[str, Any] = {"inputs": {alias: _json_value(a) for alias, a in call.inputs.items()}}
        if call.signature_name:
            body["signature_name"] = call.signature_name
        result = self._request("POST", self._path(call.model, call.version, call.label) + ":predict", body)
        # Columnar answers are {"outputs": {alias: value}}, or the bare value when there is one output.
        sig = self.signature(call.model, call.signature_name, call.version)
        raw = result.get("outputs") if isinstance(result, dict) else None
        if not (isinstance(raw, dict) and raw and set(raw) <= set(sig.outputs)):
            if len(sig.outputs) != 1:
                raise ClientError("server's REST answer does not name the signature's outputs")
            raw = {next(iter(sig.outputs)): raw}
        if call.outputs:  # TF Serving's REST API has no output filter: select here
            missing = set(call.outputs) - set(raw)
            if missing:
                raise ClientError(f"signature {sig.name!r} has no output {sorted(missing)[0]!r}")
            raw = {alias: raw[alias] for alias in call.outputs}
        try:
            return {alias: _json_array(value, sig.outputs[alias]) for alias, value in sorted(raw.items())}
        except KeyError as e:
            raise ClientError(
                f"server returned an output {e.args[0]!r} the signature does not have"
            ) from None
        except (TypeError, ValueError) as e:
            raise ClientError(f"server returned an output that does not fit its signature: {e}") from None

    def close(self) -> None:
        self._drop()  # this thread's connection; other threads' close when collected


class PredictClient:
    """`PredictClient("host:8500", tls=ClientTls.from_bundle("client"))`, then `signature()`/`predict()`."""

    def __init__(
        self,
        target: str,
        *,
        protocol: Protocol_ = "grpc",
        tls: ClientTls | None,
        timeout_seconds: float = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.protocol = protocol
        self._target = target
        self._tls = tls
        self._transport: _Transport
        if protocol == "grpc":
            self._transport = _Grpc(target, tls, timeout_seconds, max_message_bytes)
        elif protocol == "rest":
            self._transport = _Rest(target, tls, timeout_seconds)
        else:
            raise ClientError(f"unknown protocol {protocol!r} (grpc or rest)")
        self._signatures: dict[tuple[str, str, int | None], Signature] = {}

    def signature(self, model: str, signature_name: str = "", version: int | None = None) -> Signature:
        key = (model, signature_name, version)
        if key not in self._signatures:
            self._signatures[key] = self._transport.signature(model, signature_name, version)
        return self._signatures[key]

    def predict(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        signature_name: str = "",
        version: int | None = None,
        label: str | None = None,
        outputs: tuple[str, ...] = (),
    ) -> dict[str, npt.NDArray[Any]]:
        return self._transport.predict(_Call(model, inputs, signature_name, version, label, outputs))

    def attest(self, check: AttestationCheck) -> AttestedServer:
        """Prove the endpoint is an approved enclave before sending data (see confserve.client._attest);
        raises ClientError unless it is."""
        from confserve.client._attest import attest_server  # noqa: PLC0415

        if self._tls is None:
            raise ClientError("attestation needs TLS: the evidence is bound to the server's TLS key")
        return attest_server(self._target, self._tls, check, self._transport.evidence)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> PredictClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
