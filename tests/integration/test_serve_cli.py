"""`confserve serve` as a real process: start, answer over TLS, stop cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
import trustme
from click.testing import CliRunner
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from confserve.cli import main
from confserve.frontends import TlsConfig
from confserve.pf import WrapKey, encrypt_bytes, encrypt_tree
from confserve.tfs_config import SSLConfig, format_text
from tests.unit.serving.models import model_tree


@pytest.fixture(autouse=True)
def keep_runner_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs must not block SIGINT/SIGTERM in the test runner itself."""
    from confserve.cli import _serve

    monkeypatch.setattr(_serve, "install_stop_handlers", lambda stop, serving: None)


LINE = re.compile(r"serving gRPC on port (\d+), REST on port (\w+)")


def ssl_cfg(tls: TlsConfig) -> bytes:
    config = SSLConfig(server_cert=tls.cert_chain_pem.decode(), server_key=tls.private_key_pem.decode())
    return format_text(config).encode()


def run_server(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], int]:
    command = [sys.executable, "-c", "from confserve.cli import main; main()", "serve", "--host", "127.0.0.1"]
    with (cwd / "stderr.log").open("w") as stderr:
        process = subprocess.Popen(
            [*command, *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # a hung shutdown dumps its threads on SIGABRT
        )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the server is up (or the process died)
    match = LINE.search(line)
    if match is None:
        process.kill()
        process.communicate()
        raise AssertionError(f"server did not start: {line!r} {(cwd / 'stderr.log').read_text()[-2000:]}")
    return process, int(match.group(1))


def predict_version(port: int, ca: trustme.CA) -> int:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "clf"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 4), np.float32)))
        return int(
            prediction_service_pb2_grpc.PredictionServiceStub(channel)
            .Predict(request, timeout=30)
            .model_spec.version.value
        )


def stop(process: subprocess.Popen[str], cwd: Path) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.communicate()
    assert process.returncode == 0, (cwd / "stderr.log").read_text()[-3000:]


def test_serve_encrypted_model_and_encrypted_ssl_config(
    tmp_path: Path, server_tls: TlsConfig, ca: trustme.CA
) -> None:
    key = WrapKey.generate()
    key.save(tmp_path / "wrap-key")
    encrypt_tree(model_tree() / "clf" / "1", tmp_path / "models" / "clf" / "4", key, bind_root="models/clf/4")
    (tmp_path / "ssl.cfg").write_bytes(encrypt_bytes(ssl_cfg(server_tls), key, bound_path="ssl.cfg"))
    process, port = run_server(
        [
            "--model_name=clf",
            "--model_base_path=models/clf",
            "--port=0",
            "--no_rest",
            "--ssl_config_file=ssl.cfg",
            "--wrap_key=wrap-key",
            "--file_system_poll_wait_seconds=-1",
        ],
        tmp_path,
    )
    try:
        assert predict_version(port, ca) == 4
    finally:
        stop(process, tmp_path)


def test_serve_with_config_file_and_plain_tls(tmp_path: Path, server_tls: TlsConfig, ca: trustme.CA) -> None:
    (tmp_path / "ssl.cfg").write_bytes(ssl_cfg(server_tls))
    (tmp_path / "models.config").write_text(
        f'model_config_list {{ config {{ name: "clf" base_path: "{model_tree() / "clf"}" }} }}'
    )
    process, port = run_server(
        [
            "--model_config_file=models.config",
            "--port=0",
            "--rest_api_port=0",
            "--ssl_config_file=ssl.cfg",
            "--allow_plaintext",
        ],
        tmp_path,
    )
    try:
        assert predict_version(port, ca) == 2
    finally:
        stop(process, tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --model_config_file, or --model_name and --model_base_path"),
        (["--model_name=m", "--model_base_path=/x"], "give --ssl_config_file, or --insecure"),
        (["--model_config_file=c", "--model_name=m"], "either --model_config_file or"),
        (
            ["--model_config_file=c", "--insecure"],
            "Error parsing text-format tensorflow.serving.ModelServerConfig",
        ),
        (
            ["--model_name=m", "--model_base_path=/x", "--ssl_config_file=c", "--allow_plaintext"],
            "not a valid SSLConfig",
        ),
        (
            ["--model_name=m", "--model_base_path=/x", "--ssl_config_file=empty.cfg", "--allow_plaintext"],
            "must set server_cert",
        ),
        (
            ["--model_name=m", "--model_base_path=/x", "--ssl_config_file=p.cfg", "--allow_plaintext"],
            "give --secret_provision_servers",
        ),
        (["--model_name=m", "--model_base_path=/x", "--ssl_config_file=c"], "no key source"),
        (
            ["--model_name=m", "--model_base_path=/x", "--ssl_config_file=empty.cfg", "--wrap_key=c"],
            "16 raw bytes",
        ),
        (
            [
                "--model_name=m",
                "--model_base_path=/x",
                "--ssl_config_file=c",
                "--secret_provision_servers=a:1",
            ],
            "--secret_provision_ca_chain_path is required",
        ),
        (
            [
                "--model_name=m",
                "--model_base_path=/x",
                "--ssl_config_file=c",
                "--secret_provision_servers=a:1",
                "--wrap_key=c",
            ],
            "not both",
        ),
        (
            [
                "--model_name=m",
                "--model_base_path=/x",
                "--ssl_config_file=c",
                "--secret_provision_servers=a:1",
                "--secret_provision_ca_chain_path=c",
                "--attestation=simulated",
            ],
            "needs --sim_platform",
        ),
    ],
)
def test_serve_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("c").write_text("not { a config")
    Path("empty.cfg").write_text("")
    Path("p.cfg").write_bytes(encrypt_bytes(b"x", WrapKey.generate(), bound_path="p.cfg"))
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output


def test_serve_in_process_until_signalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_tls: TlsConfig
) -> None:
    """The command's run/stop path in this process, with SIGTERM already pending when it waits."""
    from confserve.cli import _serve

    waited: list[object] = []
    monkeypatch.setattr(_serve, "wait_for_stop", waited.append)  # as if SIGTERM arrived once serving
    monkeypatch.chdir(tmp_path)
    Path("ssl.cfg").write_bytes(ssl_cfg(server_tls))
    result = CliRunner().invoke(
        main,
        [
            "serve",
            "--host=127.0.0.1",
            "--model_name=clf",
            f"--model_base_path={model_tree() / 'clf'}",
            "--port=0",
            "--rest_api_port=0",
            "--ssl_config_file=ssl.cfg",
            "--file_system_poll_wait_seconds=-1",
            "--allow_plaintext",
        ],
    )
    assert result.exit_code == 0, result.output
    assert LINE.search(result.output)
    assert len(waited) == 1


def _model_status(port: int, ca: trustme.CA, name: str) -> list[tuple[int, int]]:
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
        except grpc.RpcError:
            return []
    return [(s.version, s.state) for s in response.model_version_status]


def _config_reload_refusals(cwd: Path) -> int:
    """Model-config polls that failed, as the server logged them (run_server's stderr.log)."""
    return (cwd / "stderr.log").read_text().count("model config reload: unexpected")


def test_encrypted_model_config_is_reloaded(tmp_path: Path, server_tls: TlsConfig, ca: trustme.CA) -> None:
    """The owner changes the (encrypted) model config; the server follows: new models load, removed ones
    unload. The host cannot do the same: the config is authenticated under the owner's key."""
    key = WrapKey.generate()
    key.save(tmp_path / "wrap-key")
    for name in ("a", "b"):
        encrypt_tree(
            model_tree() / "clf" / "1", tmp_path / "models" / name / "1", key, bind_root=f"models/{name}/1"
        )
    (tmp_path / "ssl.cfg").write_bytes(encrypt_bytes(ssl_cfg(server_tls), key, bound_path="ssl.cfg"))

    def config(*names: str) -> bytes:
        text = " ".join(f'config {{ name: "{n}" base_path: "models/{n}" }}' for n in names)
        return encrypt_bytes(f"model_config_list {{ {text} }}".encode(), key, bound_path="models.config")

    (tmp_path / "models.config").write_bytes(config("a"))
    process, port = run_server(
        ["--model_config_file=models.config", "--model_config_file_poll_wait_seconds=0.2", "--port=0",
         "--no_rest", "--ssl_config_file=ssl.cfg", "--wrap_key=wrap-key"],
        tmp_path,
    )  # fmt: skip
    try:
        assert _model_status(port, ca, "a") == [(1, 30)]  # AVAILABLE
        assert _model_status(port, ca, "b") == []
        (tmp_path / "models.config.new").write_bytes(config("b"))
        os.replace(tmp_path / "models.config.new", tmp_path / "models.config")
        deadline = time.monotonic() + 60
        unloaded = ([], [(1, 50)])  # END, or forgotten
        while _model_status(port, ca, "b") != [(1, 30)] or _model_status(port, ca, "a") not in unloaded:
            assert time.monotonic() < deadline, (_model_status(port, ca, "a"), _model_status(port, ca, "b"))
            time.sleep(0.1)
        # A config the host wrote is not authentic: the server keeps serving the owner's. Proof that it
        # looked: two polls after the write read the host's config and refused it (each logs the refusal).
        refused = _config_reload_refusals(tmp_path)
        (tmp_path / "models.config").write_text(
            'model_config_list { config { name: "a" base_path: "models/a" } }'
        )
        deadline = time.monotonic() + 60
        while _config_reload_refusals(tmp_path) < refused + 2:
            assert time.monotonic() < deadline, "the server did not poll the model config again"
            time.sleep(0.1)
        assert _model_status(port, ca, "b") == [(1, 30)]
        assert _model_status(port, ca, "a") in unloaded
    finally:
        stop(process, tmp_path)


def test_plaintext_model_config_is_not_reloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("models.config").write_text('model_config_list { config { name: "a" base_path: "/x" } }')
    Path("k").write_bytes(bytes(16))
    result = CliRunner().invoke(main, ["serve", "--model_config_file=models.config", "--insecure", "--wrap_key=k",
                                       "--model_config_file_poll_wait_seconds=1"])  # fmt: skip
    assert result.exit_code == 1
    assert "could rewrite a plaintext model config" in result.output


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (the SigCgt mask of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_before_serving_ends_the_process_at_once(tmp_path: Path, signum: signal.Signals) -> None:
    """A stop during the start (here: TensorFlow's import, seconds long) ends the process with status 0
    and a line that says so, without loading the model or opening a port; before the stop handlers, the
    replica would finish starting, open its ports and only then drain."""
    (tmp_path / "models" / "clf").mkdir(parents=True)
    (tmp_path / "models" / "clf" / "1").symlink_to(model_tree() / "clf" / "1")
    command = [sys.executable, "-c", "from confserve.cli import main; main()", "serve", "--host=127.0.0.1",
               "--model_name=clf", "--model_base_path=models/clf", "--port=0", "--rest_api_port=0",
               "--insecure", "--allow_plaintext", "--file_system_poll_wait_seconds=-1"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while (
        not _catches(process.pid, signal.SIGTERM) and process.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.005)
    assert _catches(process.pid, signal.SIGTERM), "the stop handlers were never installed"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert f"confserve: {signum.name} before serving: stopped" in stderr
    assert "serving gRPC" not in stdout  # no port was opened
    assert "version 1: available" not in stderr  # the model was not loaded
