"""The real TF Serving client stubs against our gRPC server over TLS on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from confserve.errors import Status
from confserve.frontends import PLAINTEXT, TlsConfig
from confserve.frontends.grpc import GRPC_CODES, GrpcServer, GrpcSettings
from tests.integration.conftest import tls_for
from tests.unit.serving.models import expected_probabilities

X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], dtype=np.float32)
SETTINGS = GrpcSettings(address="127.0.0.1:0", max_workers=4)


@pytest.fixture(scope="module")
def server(dataplane: Any, server_tls: TlsConfig) -> Iterator[GrpcServer]:
    server = GrpcServer(dataplane, server_tls, SETTINGS)
    server.start()
    yield server
    server.stop(0)


@pytest.fixture(scope="module")
def channel(server: GrpcServer, ca: trustme.CA) -> Iterator[grpc.Channel]:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Any:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(**spec: Any) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "clf"
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(X))
    return request


def test_status_table_covers_every_status() -> None:
    assert set(GRPC_CODES) == set(Status)


def test_predict(stub: Any) -> None:
    response = stub.Predict(predict_request(), timeout=30)
    assert response.model_spec.version.value == 2
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["probabilities"]), expected_probabilities(X), rtol=1e-6
    )


def test_classify_regress_multi_inference_metadata(stub: Any) -> None:
    examples = classification_pb2.ClassificationRequest()
    examples.model_spec.name = "clf"
    examples.model_spec.signature_name = "classify"
    for row in X:
        examples.input.example_list.examples.add().features.feature["x"].float_list.value.extend(row.tolist())
    classified = stub.Classify(examples, timeout=30)
    assert len(classified.result.classifications) == 2
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "clf"
    regress.model_spec.signature_name = "regress"
    regress.input.CopyFrom(examples.input)
    values = [r.value for r in stub.Regress(regress, timeout=30).result.regressions]
    np.testing.assert_allclose(values, X.sum(axis=1) * 0.5, rtol=1e-6)
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add()
    task.model_spec.name = "clf"
    task.model_spec.signature_name = "regress"
    task.method_name = "tensorflow/serving/regress"
    multi.input.CopyFrom(examples.input)
    assert len(stub.MultiInference(multi, timeout=30).results) == 1
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "clf"
    metadata.metadata_field.append("signature_def")
    assert stub.GetModelMetadata(metadata, timeout=30).model_spec.version.value == 2


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (
            predict_request(name="nope"),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (predict_request(version=9), grpc.StatusCode.NOT_FOUND, "Specific(clf, 9)"),
        (  # TF Serving answers an unknown signature with FAILED_PRECONDITION for Predict
            predict_request(signature_name="nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'signature key "nope" not found',
        ),
        (
            predict_request(version_label="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version",
        ),
        (predict_request(name="broken"), grpc.StatusCode.FAILED_PRECONDITION, "No version of model broken"),
    ],
)
def test_errors_map_to_grpc_codes(stub: Any, request_: Any, code: grpc.StatusCode, fragment: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request_, timeout=30)
    assert info.value.code() == code
    assert fragment in info.value.details()
    # The server keeps serving afterwards.
    assert stub.Predict(predict_request(), timeout=30).model_spec.version.value == 2


def test_bad_input_dtype(stub: Any) -> None:
    request = predict_request()
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(X.astype(np.float64)))
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "input 'x': Expects arg[0] to be float but double is provided"


def test_model_service(channel: grpc.Channel) -> None:
    model_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "clf"
    states = [
        (s.version, s.state) for s in model_stub.GetModelStatus(request, timeout=30).model_version_status
    ]
    assert states == [(2, 30), (1, 30)]
    with pytest.raises(grpc.RpcError) as info:
        model_stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=30)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_health_reports_not_serving_while_a_model_is_unavailable(
    channel: grpc.Channel, server: GrpcServer
) -> None:
    health_stub = health_pb2_grpc.HealthStub(channel)
    server.refresh_health()
    response = health_stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    # "broken" has no available version, so the server is not ready.
    assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_unexpected_error_becomes_internal_without_detail(
    server_tls: TlsConfig, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    class Exploding:
        def is_ready(self) -> bool:
            return True

        def predict(self, request: Any) -> Any:
            raise RuntimeError(f"tensor value {6 * 7.25} leaked")

    server = GrpcServer(Exploding(), server_tls, SETTINGS)  # type: ignore[arg-type]
    server.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as info:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                    predict_request(), timeout=30
                )
    finally:
        server.stop(0)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error"
    assert "unexpected RuntimeError" in caplog.text
    assert "43.5" not in caplog.text


def test_client_with_wrong_ca_is_rejected(server: GrpcServer) -> None:
    other = trustme.CA()
    credentials = grpc.ssl_channel_credentials(root_certificates=other.cert_pem.bytes())
    with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_request(), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(dataplane: Any, ca: trustme.CA) -> None:
    client_ca = trustme.CA()
    server = GrpcServer(dataplane, tls_for(ca, client_ca), SETTINGS)
    server.start()
    try:
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        with grpc.secure_channel(f"localhost:{server.port}", anonymous) as channel:
            with pytest.raises(grpc.RpcError) as info:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                    predict_request(), timeout=30
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        client_cert = client_ca.issue_cert("client@example.org")
        authenticated = grpc.ssl_channel_credentials(
            root_certificates=ca.cert_pem.bytes(),
            private_key=client_cert.private_key_pem.bytes(),
            certificate_chain=client_cert.cert_chain_pems[0].bytes(),
        )
        with grpc.secure_channel(f"localhost:{server.port}", authenticated) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert stub.Predict(predict_request(), timeout=30).model_spec.version.value == 2
    finally:
        server.stop(0)


def test_plaintext_needs_explicit_opt_in(dataplane: Any) -> None:
    with pytest.raises(TypeError, match="PLAINTEXT to serve without TLS; got None"):
        GrpcServer(dataplane, None, SETTINGS)  # type: ignore[arg-type]
    server = GrpcServer(
        dataplane, PLAINTEXT, GrpcSettings(address="127.0.0.1:0", enable_health_service=False)
    )
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert stub.Predict(predict_request(), timeout=30).model_spec.name == "clf"
    finally:
        server.stop(0)


def test_tls_config_validation_and_repr(server_tls: TlsConfig) -> None:
    assert "PRIVATE" not in repr(server_tls)
    with pytest.raises(ValueError, match="PEM"):
        TlsConfig(cert_chain_pem=b"x", private_key_pem=b"y")
    with pytest.raises(ValueError, match="client CA"):
        TlsConfig(server_tls.cert_chain_pem, server_tls.private_key_pem, client_ca_pem=b"z")
