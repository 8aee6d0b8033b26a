"""The REST server over TLS on loopback, and REST/gRPC parity on the same input."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
import trustme
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from confserve.frontends import PLAINTEXT, TlsConfig
from confserve.frontends.grpc import GrpcServer, GrpcSettings
from confserve.frontends.rest import RestServer, RestSettings
from tests.integration.conftest import tls_for

X = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0], [-3.25, 7.5, 0.125, -0.001]]
SETTINGS = RestSettings(port=0, num_threads=2)


@pytest.fixture(scope="module")
def rest(dataplane: Any, server_tls: TlsConfig) -> Iterator[RestServer]:
    server = RestServer(dataplane, server_tls, SETTINGS)
    server.start()
    yield server
    server.stop()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def request(
    port: int, context: ssl.SSLContext, method: str, path: str, body: bytes | None = None
) -> tuple[int, Any]:
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_status_predict_and_errors_over_tls(rest: RestServer, ca: trustme.CA) -> None:
    context = client_context(ca)
    status, body = request(rest.port, context, "GET", "/v1/models/clf/versions/2")
    assert status == 200
    assert body["model_version_status"][0]["state"] == "AVAILABLE"
    status, body = request(
        rest.port, context, "POST", "/v1/models/nope:predict", b'{"instances": [[1,2,3,4]]}'
    )
    assert (status, body) == (404, {"error": "Servable not found for request: Latest(nope)"})
    status, body = request(rest.port, context, "POST", "/v1/models/clf:predict", b'{"instances": [[1,2]]}')
    assert status == 400
    assert "Matrix size-incompatible: In[0]: [1,2], In[1]: [4,3]" in body["error"]  # the model's refusal
    # Still serving after the errors.
    status, body = request(
        rest.port, context, "POST", "/v1/models/clf:predict", json.dumps({"instances": X}).encode()
    )
    assert status == 200
    assert len(body["predictions"]) == 3


def test_rest_and_grpc_give_the_same_numbers(
    rest: RestServer, dataplane: Any, server_tls: TlsConfig, ca: trustme.CA
) -> None:
    status, body = request(
        rest.port,
        client_context(ca),
        "POST",
        "/v1/models/clf:predict",
        json.dumps({"inputs": {"x": X}}).encode(),
    )
    assert status == 200
    grpc_server = GrpcServer(dataplane, server_tls, GrpcSettings(address="127.0.0.1:0", max_workers=2))
    grpc_server.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        with grpc.secure_channel(f"localhost:{grpc_server.port}", credentials) as channel:
            predict = predict_pb2.PredictRequest()
            predict.model_spec.name = "clf"
            predict.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(X, dtype=np.float32)))
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict, timeout=30)
    finally:
        grpc_server.stop(0)
    grpc_probs = tf.make_ndarray(response.outputs["probabilities"])
    rest_probs = np.array(body["outputs"]["probabilities"], dtype=np.float32)
    np.testing.assert_array_equal(rest_probs, grpc_probs)  # bit-identical float32 after the JSON round trip
    np.testing.assert_array_equal(
        body["outputs"]["class_ids"], tf.make_ndarray(response.outputs["class_ids"])
    )


def test_untrusted_server_certificate_is_refused(rest: RestServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        request(rest.port, client_context(trustme.CA()), "GET", "/v1/models/clf")


def test_body_size_limit(dataplane: Any, server_tls: TlsConfig, ca: trustme.CA) -> None:
    server = RestServer(dataplane, server_tls, RestSettings(port=0, num_threads=1, max_body_bytes=1024))
    server.start()
    try:
        status, body = request(server.port, client_context(ca), "POST", "/v1/models/clf:predict", b" " * 4096)
    finally:
        server.stop()
    assert (status, body) == (413, {"error": "request body too large"})


def test_mutual_tls(dataplane: Any, ca: trustme.CA) -> None:
    client_ca = trustme.CA()
    server = RestServer(dataplane, tls_for(ca, client_ca), SETTINGS)
    server.start()
    try:
        anonymous = client_context(ca)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request(server.port, anonymous, "GET", "/v1/models/clf")
        authenticated = client_context(ca)
        client_ca.issue_cert("client@example.org").configure_cert(authenticated)
        status, _ = request(server.port, authenticated, "GET", "/v1/models/clf")
        assert status == 200
    finally:
        server.stop()


def test_plaintext_needs_explicit_opt_in_and_port_conflicts_fail(dataplane: Any, rest: RestServer) -> None:
    with pytest.raises(TypeError, match="PLAINTEXT to serve without TLS; got None"):
        RestServer(dataplane, None, SETTINGS)  # type: ignore[arg-type]
    clash = RestServer(dataplane, PLAINTEXT, RestSettings(port=rest.port))
    with pytest.raises(OSError, match="address already in use"):
        clash.start()
    clash.stop()
    plain = RestServer(dataplane, PLAINTEXT, SETTINGS)
    plain.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", plain.port, timeout=30)
        connection.request("GET", "/v1/models/clf/labels/stable")
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["model_version_status"][0]["version"] == "1"
        connection.close()
    finally:
        plain.stop()


def test_slow_request_times_out_and_server_keeps_serving(
    dataplane: Any, server_tls: TlsConfig, ca: trustme.CA
) -> None:
    import threading

    release = threading.Event()
    server = RestServer(
        dataplane, server_tls, RestSettings(port=0, num_threads=2, request_timeout_seconds=0.05)
    )
    original = server._api.handle

    def slow(method: str, path: str, body: bytes, *args: Any, **kwargs: Any) -> Any:
        if path.endswith("/slow"):
            release.wait(30)
        return original(method, path, body, *args, **kwargs)

    server._api.handle = slow  # type: ignore[method-assign]
    server.start()
    try:
        status, body = request(server.port, client_context(ca), "GET", "/v1/models/slow")
        assert (status, body) == (504, {"error": "request timed out"})
        release.set()
        status, _ = request(server.port, client_context(ca), "GET", "/v1/models/clf")
        assert status == 200
    finally:
        release.set()
        server.stop()


def test_the_event_loop_is_uvloops_or_asyncios_where_libuv_cannot_start(
    dataplane: Any, server_tls: TlsConfig, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """libuv needs eventfd, which an enclave may refuse: the server then serves on asyncio's loop."""
    import errno

    import uvloop

    from confserve.frontends.rest import _server

    default = RestServer(dataplane, server_tls, SETTINGS)
    assert isinstance(default._loop, uvloop.Loop)
    default._loop.close()

    def refused() -> Any:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(_server.uvloop, "new_event_loop", refused)
    with caplog.at_level("WARNING", logger="confserve.frontends.rest._server"):
        server = RestServer(dataplane, server_tls, SETTINGS)
    assert not isinstance(server._loop, uvloop.Loop)
    assert "uvloop unavailable (OSError), serving on asyncio's event loop" in caplog.text
    server.start()
    try:
        status, body = request(
            server.port,
            client_context(ca),
            "POST",
            "/v1/models/clf:predict",
            json.dumps({"instances": X}).encode(),
        )
        assert status == 200
        assert len(body["predictions"]) == 3
    finally:
        server.stop()
