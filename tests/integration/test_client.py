"""`confserve predict` and the PredictClient against the model server's gRPC and REST front ends over
one-way and mutual TLS, with every input kind, and the errors a user meets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trustme
from click.testing import CliRunner
from PIL import Image

from confserve.cli import main
from confserve.client import ClientError, ClientTls, PredictClient, RemoteError
from confserve.client._inputs import inputs_from_image, inputs_from_json, random_inputs
from confserve.client._predict import Signature, TensorSpec
from confserve.frontends import TlsConfig
from confserve.frontends.grpc import GrpcServer, GrpcSettings
from confserve.frontends.rest import RestServer, RestSettings
from tests.integration.conftest import tls_for
from tests.unit.client.test_no_tensorflow import CLI, no_tensorflow, run_python
from tests.unit.serving.models import expected_probabilities

X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def servers(dataplane: Any, ca: trustme.CA, client_ca: trustme.CA) -> Iterator[dict[str, int]]:
    oneway = tls_for(ca)
    mutual: TlsConfig = tls_for(ca, client_ca)
    grpc_oneway = GrpcServer(dataplane, oneway, GrpcSettings(address="127.0.0.1:0", max_workers=4))
    grpc_mutual = GrpcServer(dataplane, mutual, GrpcSettings(address="127.0.0.1:0", max_workers=4))
    rest_oneway = RestServer(dataplane, oneway, RestSettings(port=0, num_threads=2))
    rest_mutual = RestServer(dataplane, mutual, RestSettings(port=0, num_threads=2))
    started = [grpc_oneway, grpc_mutual, rest_oneway, rest_mutual]
    for server in started:
        server.start()
    yield {
        "grpc": grpc_oneway.port,
        "grpc-mutual": grpc_mutual.port,
        "rest": rest_oneway.port,
        "rest-mutual": rest_mutual.port,
    }
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def bundles(
    tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA, client_ca: trustme.CA
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    oneway, mutual, wrong = root / "oneway", root / "mutual", root / "wrong"
    for d in (oneway, mutual, wrong):
        d.mkdir()
    ca.cert_pem.write_to_path(str(oneway / "ca.crt"))
    ca.cert_pem.write_to_path(str(mutual / "ca.crt"))
    issued = client_ca.issue_cert("client.example")
    issued.cert_chain_pems[0].write_to_path(str(mutual / "client.crt"))
    issued.private_key_pem.write_to_path(str(mutual / "client.key"))
    trustme.CA().cert_pem.write_to_path(str(wrong / "ca.crt"))
    return {"oneway": oneway, "mutual": mutual, "wrong": wrong}


@pytest.mark.parametrize(("protocol", "server", "bundle"), [
    ("grpc", "grpc", "oneway"), ("grpc", "grpc-mutual", "mutual"),
    ("rest", "rest", "oneway"), ("rest", "rest-mutual", "mutual"),
])  # fmt: skip
def test_predict_over_each_protocol_and_tls_mode(
    servers: dict[str, int], bundles: dict[str, Path], protocol: str, server: str, bundle: str
) -> None:
    tls = ClientTls.from_bundle(bundles[bundle])
    with PredictClient(f"localhost:{servers[server]}", protocol=protocol, tls=tls) as client:  # type: ignore[arg-type]
        sig = client.signature("clf")
        assert sig.inputs == {"x": TensorSpec("float32", (-1, 4))}
        out = client.predict("clf", {"x": X})
        np.testing.assert_allclose(out["probabilities"], expected_probabilities(X), rtol=1e-5)
        assert out["class_ids"].tolist() == np.argmax(expected_probabilities(X), axis=1).tolist()
        only = client.predict("clf", {"x": X}, outputs=("class_ids",), version=1)
        assert set(only) == {"class_ids"}


def test_grpc_and_rest_agree(servers: dict[str, int], bundles: dict[str, Path]) -> None:
    tls = ClientTls.from_bundle(bundles["oneway"])
    with (
        PredictClient(f"localhost:{servers['grpc']}", tls=tls) as g,
        PredictClient(f"localhost:{servers['rest']}", protocol="rest", tls=tls) as r,
    ):
        a, b = g.predict("clf", {"x": X}), r.predict("clf", {"x": X})
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], rtol=1e-6)


def test_server_name_override(servers: dict[str, int], bundles: dict[str, Path]) -> None:
    # The certificate names "localhost"; dialling 127.0.0.1 works when told which name to expect...
    tls = ClientTls.from_bundle(bundles["oneway"], server_name="localhost")
    for protocol, server in (("grpc", "grpc"), ("rest", "rest")):
        with PredictClient(f"127.0.0.1:{servers[server]}", protocol=protocol, tls=tls) as client:  # type: ignore[arg-type]
            assert client.predict("clf", {"x": X})["class_ids"].shape == (2,)
    # ...and fails for a name the certificate does not carry.
    wrong = ClientTls.from_bundle(bundles["oneway"], server_name="grpc.tf-serving.service.com")
    for protocol, server in (("grpc", "grpc"), ("rest", "rest")):
        client = PredictClient(
            f"localhost:{servers[server]}", protocol=protocol, tls=wrong, timeout_seconds=5
        )  # type: ignore[arg-type]
        with client, pytest.raises(ClientError):
            client.signature("clf")


@pytest.mark.parametrize(("protocol", "server", "bundle"), [
    ("grpc", "grpc", "wrong"), ("rest", "rest", "wrong"),  # untrusted server certificate
    ("grpc", "grpc-mutual", "oneway"), ("rest", "rest-mutual", "oneway"),  # no client certificate
])  # fmt: skip
def test_tls_failures_are_clear(
    servers: dict[str, int], bundles: dict[str, Path], protocol: str, server: str, bundle: str
) -> None:
    tls = ClientTls.from_bundle(bundles[bundle])
    client = PredictClient(f"localhost:{servers[server]}", protocol=protocol, tls=tls, timeout_seconds=5)  # type: ignore[arg-type]
    with client, pytest.raises(ClientError) as info:
        client.predict("clf", {"x": X})
    assert str(info.value)


def test_remote_errors_carry_the_servers_reason(servers: dict[str, int], bundles: dict[str, Path]) -> None:
    tls = ClientTls.from_bundle(bundles["oneway"])
    for protocol, server, code in (("grpc", "grpc", "NOT_FOUND"), ("rest", "rest", "HTTP 404")):
        with PredictClient(f"localhost:{servers[server]}", protocol=protocol, tls=tls) as c:  # type: ignore[arg-type]
            with pytest.raises(RemoteError) as info:
                c.signature("no-such-model")
            assert info.value.code == code
            with pytest.raises(ClientError, match="no signature 'nope'"):
                c.signature("clf", "nope")


SIG = Signature("serving_default", "", {"x": TensorSpec("float32", (-1, 4))}, {})
IMG = Signature("serving_default", "", {"image": TensorSpec("float32", (-1, 8, 8, 1))}, {})


def test_input_readers(tmp_path: Path) -> None:
    (tmp_path / "rows.json").write_text(json.dumps({"instances": X.tolist()}))
    assert inputs_from_json(SIG, tmp_path / "rows.json")["x"].shape == (2, 4)
    (tmp_path / "cols.json").write_text(json.dumps({"inputs": {"x": X.tolist()}}))
    np.testing.assert_array_equal(inputs_from_json(SIG, tmp_path / "cols.json")["x"], X)
    (tmp_path / "bad.json").write_text(json.dumps({"inputs": {"x": [[1, 2, 3]]}}))
    with pytest.raises(ClientError, match=r"wants \[N,4\]"):
        inputs_from_json(SIG, tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"y": [[1, 2, 3, 4]]}))
    with pytest.raises(ClientError, match="no input 'y'"):
        inputs_from_json(SIG, tmp_path / "other.json")
    (tmp_path / "junk.json").write_text("{nope")
    with pytest.raises(ClientError, match="not JSON"):
        inputs_from_json(SIG, tmp_path / "junk.json")
    img = np.zeros((16, 16), dtype=np.uint8)
    img[4:12, 6:10] = 255
    Image.fromarray(img).save(tmp_path / "digit.png")
    pixels = inputs_from_image(IMG, tmp_path / "digit.png")["image"]
    assert pixels.shape == (1, 8, 8, 1)
    assert pixels.min() >= 0.0
    assert 0.5 < pixels.max() <= 1.0
    inverted = inputs_from_image(IMG, tmp_path / "digit.png", invert=True)["image"]
    np.testing.assert_allclose(inverted, 1.0 - pixels, atol=1e-6)
    (tmp_path / "notimage.png").write_bytes(b"not an image")
    with pytest.raises(ClientError, match="not an image"):
        inputs_from_image(IMG, tmp_path / "notimage.png")
    with pytest.raises(ClientError, match="not an image batch"):
        inputs_from_image(SIG, tmp_path / "digit.png")
    rnd = random_inputs(SIG, batch=3, seed=1)["x"]
    assert rnd.shape == (3, 4)
    assert rnd.dtype == np.float32


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, ["predict", *args])


def test_cli_every_input_kind(servers: dict[str, int], bundles: dict[str, Path], tmp_path: Path) -> None:
    target = f"localhost:{servers['grpc-mutual']}"
    np.save(tmp_path / "x.npy", X)
    base = [target, "-m", "clf", "--tls-bundle", str(bundles["mutual"])]
    result = _cli(*base, "--input", str(tmp_path / "x.npy"))
    assert result.exit_code == 0, result.output
    assert "top-3" in result.output
    expected_top = int(np.argmax(expected_probabilities(X)[0]))
    assert f"[0] top-3: {expected_top} (" in result.output
    result = _cli(*base, "--input", f"x={tmp_path / 'x.npy'}", "--json")
    data = json.loads(result.output)
    np.testing.assert_allclose(
        data["outputs"]["probabilities"]["value"], expected_probabilities(X), rtol=1e-5
    )
    (tmp_path / "body.json").write_text(json.dumps({"instances": X.tolist()}))
    result = _cli(
        target.replace("localhost", "localhost"),
        "-m",
        "clf",
        "--protocol",
        "grpc",
        "--tls-bundle",
        str(bundles["mutual"]),
        "--json-input",
        str(tmp_path / "body.json"),
    )
    assert result.exit_code == 0, result.output
    rest = [
        f"localhost:{servers['rest']}",
        "-m",
        "clf",
        "--protocol",
        "rest",
        "--ca",
        str(bundles["oneway"] / "ca.crt"),
    ]
    result = _cli(*rest, "--random", "--batch", "4", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["outputs"]["class_ids"]["shape"] == [4]


def test_cli_errors(servers: dict[str, int], bundles: dict[str, Path], tmp_path: Path) -> None:
    target = f"localhost:{servers['grpc']}"
    result = _cli(target, "-m", "clf", "--random")
    assert result.exit_code == 1
    assert "--tls-bundle" in result.output
    result = _cli(target, "-m", "clf", "--tls-bundle", str(bundles["oneway"]))
    assert result.exit_code == 1
    assert "exactly one input" in result.output
    result = _cli(target, "-m", "clf", "--tls-bundle", str(bundles["oneway"]), "--random", "--plaintext")
    assert result.exit_code == 1
    assert "cannot be combined" in result.output
    result = _cli(target, "-m", "nope", "--tls-bundle", str(bundles["oneway"]), "--random")
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.output
    (tmp_path / "pickled.npy").write_bytes(
        b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }" + b" " * 60 + b"\n"
    )
    result = _cli(
        target, "-m", "clf", "--tls-bundle", str(bundles["oneway"]), "-i", str(tmp_path / "pickled.npy")
    )
    assert result.exit_code == 1
    assert "pickled" in result.output


def test_load_generator(servers: dict[str, int], bundles: dict[str, Path]) -> None:
    from confserve.client._loadgen import LoadSpec, run_load

    seen: list[int] = []
    spec = LoadSpec(
        target=f"localhost:{servers['grpc']}",
        model="clf",
        inputs={"x": X},
        tls=ClientTls.from_bundle(bundles["oneway"]),
        concurrency=3,
        processes=2,
        requests=40,
    )
    result = run_load(spec, progress=lambda done, total: seen.append(done))
    assert result.requests == 40
    assert result.errors == 0
    assert result.examples_per_second == pytest.approx(2 * result.throughput_rps)
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms
    assert seen
    assert seen[-1] == 40
    bad = run_load(
        LoadSpec(**{**spec.__dict__, "model": "nope", "requests": 5, "processes": 1, "concurrency": 1})
    )
    assert bad.requests == 0
    assert bad.errors == 5
    assert "NOT_FOUND" in (bad.first_error or "")


def test_bench_client_cli(servers: dict[str, int], bundles: dict[str, Path]) -> None:
    result = CliRunner().invoke(
        main,
        [
            "bench-client",
            f"localhost:{servers['rest']}",
            "-m",
            "clf",
            "--protocol",
            "rest",
            "--tls-bundle",
            str(bundles["oneway"]),
            "-n",
            "10",
            "-c",
            "2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["requests"] == 10
    assert data["errors"] == 0


def test_expired_server_certificate_is_refused(
    dataplane: Any, ca: trustme.CA, bundles: dict[str, Path]
) -> None:
    import datetime

    expired = ca.issue_cert(
        "localhost",
        not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC),
    )
    tls = TlsConfig(
        cert_chain_pem=b"".join(b.bytes() for b in expired.cert_chain_pems),
        private_key_pem=expired.private_key_pem.bytes(),
    )
    grpc_server = GrpcServer(dataplane, tls, GrpcSettings(address="127.0.0.1:0", max_workers=2))
    rest_server = RestServer(dataplane, tls, RestSettings(port=0, num_threads=1))
    grpc_server.start()
    rest_server.start()
    try:
        client_tls = ClientTls.from_bundle(bundles["oneway"])
        grpc_client = PredictClient(f"localhost:{grpc_server.port}", tls=client_tls, timeout_seconds=5)
        with grpc_client, pytest.raises(ClientError):
            grpc_client.signature("clf")
        rest_client = PredictClient(f"localhost:{rest_server.port}", protocol="rest", tls=client_tls)
        with rest_client, pytest.raises(ClientError, match="certificate has expired"):
            rest_client.signature("clf")
    finally:
        grpc_server.stop(0)
        rest_server.stop()


def test_predict_process_loads_no_tensorflow(
    servers: dict[str, int], bundles: dict[str, Path], tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", X)
    for protocol, server, bundle in (("grpc", "grpc-mutual", "mutual"), ("rest", "rest", "oneway")):
        run = run_python(
            CLI,
            "predict",
            f"localhost:{servers[server]}",
            "-m",
            "clf",
            "--protocol",
            protocol,
            "--tls-bundle",
            str(bundles[bundle]),
            "--input",
            str(tmp_path / "x.npy"),
            "--json",
            tmp_path=tmp_path,
        )
        assert run.returncode == 0, run.stderr
        outputs = json.loads(run.stdout)["outputs"]
        np.testing.assert_allclose(outputs["probabilities"]["value"], expected_probabilities(X), rtol=1e-5)
        assert "confserve.tfs_protos" in run.modules
        no_tensorflow(run)


def test_bench_client_processes_load_no_tensorflow(
    servers: dict[str, int], bundles: dict[str, Path], tmp_path: Path
) -> None:
    run = run_python(
        CLI,
        "bench-client",
        f"localhost:{servers['grpc']}",
        "-m",
        "clf",
        "--tls-bundle",
        str(bundles["oneway"]),
        "-n",
        "10",
        "-c",
        "2",
        "-p",
        "2",
        "--json",
        tmp_path=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout.strip().splitlines()[-1])
    assert (data["requests"], data["errors"]) == (10, 0)
    # Each of the two spawned workers imported the load generator, and its import-time lines (checked for
    # TensorFlow by no_tensorflow) were captured. The parent's own imports are checked from its
    # sys.modules: its import-time lines of modules that load TF Serving's protos go to the quiet
    # TensorFlow guard's capture, not to stderr.
    assert run.imported.count("confserve.client._loadgen") >= 2
    assert "confserve.client._loadgen" in run.modules
    no_tensorflow(run)
