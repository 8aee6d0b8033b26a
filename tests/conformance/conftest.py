"""Fixtures of the TF Serving conformance suite: the generated models (built once per session) served by
real `ModelServer`s on loopback, reached with TF Serving's own gRPC stubs and plain HTTP for REST."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from tests.conformance.models import VERSION_1, build_models, model_server_config


@dataclass
class Client:
    """TF Serving's gRPC stubs and a REST caller, on one server."""

    prediction: Any
    model: Any
    rest_port: int

    def rest(self, method: str, path: str, body: Any = None) -> tuple[int, Any, bytes]:
        """(HTTP status, parsed JSON body, raw body). `body` may be raw bytes or a JSON value."""
        raw = body if isinstance(body, (bytes, str)) else (None if body is None else json.dumps(body))
        connection = http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=30)
        try:
            connection.request(method, path, body=raw, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        return response.status, parsed, data


@dataclass
class Served:
    client: Client
    strict: Client  # --enable_signature_method_name_check
    bases: dict[str, Path]


def _start(config_text: str, **settings: Any) -> Any:
    from confserve.frontends import PLAINTEXT, ModelServer, ServerSettings
    from confserve.frontends.grpc import GrpcSettings
    from confserve.frontends.rest import RestSettings
    from confserve.serving import ManagerSettings, PlainOpener, parse_model_server_config

    grpc_settings = GrpcSettings(address="127.0.0.1:0", **settings.pop("grpc", {}))
    server = ModelServer(
        parse_model_server_config(config_text),
        PlainOpener(),
        PLAINTEXT,  # as TF Serving's own tests: an insecure channel on loopback
        ServerSettings(
            grpc=grpc_settings,
            rest=RestSettings(host="127.0.0.1", port=0),
            file_system_poll_wait_seconds=-1,  # load once; nothing changes on disk during the suite
            manager=ManagerSettings(max_load_retries=0),
            **settings,
        ),
    )
    server.start()
    return server


def _client(server: Any, stack: list[Any]) -> Client:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc.port}")
    stack.append(channel)
    assert server.rest is not None
    return Client(
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
        server.rest.port,
    )


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from confserve.frontends.grpc import parse_channel_arguments
    from confserve.serving import DEFAULT_METRICS_PATH

    bases = build_models(tmp_path_factory.mktemp("tf-serving-models"))
    config = model_server_config(bases)
    main = _start(
        config,
        metrics_path=DEFAULT_METRICS_PATH,
        # tensorflow_model_server_test.py testGoodGrpcChannelArgs starts its server with these.
        grpc={
            "channel_arguments": parse_channel_arguments(
                "grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb"
            )
        },
    )
    strict_config = (
        f'model_config_list {{ config {{ name: "default_tf2" base_path: "{bases["half_plus_two_tf2"]}" '
        f"model_version_policy {{ specific {{ versions: {VERSION_1} }} }} }} }}"
    )
    strict = _start(strict_config, enable_signature_method_name_check=True)
    channels: list[Any] = []
    try:
        yield Served(_client(main, channels), _client(strict, channels), bases)
    finally:
        for channel in channels:
            channel.close()
        strict.stop(0)
        main.stop(0)


_RESULTS: dict[str, int] = {"passed": 0, "total": 0}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if "test_tf_serving_case[" in item.nodeid and report.when == "call":
        _RESULTS["total"] += 1
        _RESULTS["passed"] += int(report.passed)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _RESULTS["total"]:
        terminalreporter.write_line(
            f"TF Serving conformance: {_RESULTS['passed']} of {_RESULTS['total']} cases pass"
        )
