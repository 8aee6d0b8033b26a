"""No TensorFlow C++ log line reaches a user's terminal: real commands and real TensorFlow, as processes,
with their stdout and stderr captured. The environment is the user's, less TF_CPP_MIN_LOG_LEVEL (the
default is under test); a user who sets it gets TensorFlow's later messages back."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from confserve.attestation import SimPlatform, generate_signing_key
from confserve.cluster._local import free_port
from confserve.tf_runtime import LOG_LEVEL_VARIABLE
from tests.unit.serving.models import copy_model

# What TensorFlow's C++ side prints: absl's pre-initialisation banner, absl-formatted lines (severity, MMDD,
# time), and the start-up topics (oneDNN, the CUDA probe, the CPU feature guard).
TF_LOG = re.compile(
    r"absl::InitializeLog|^[IWEF]\d{4} \d\d:\d\d:\d\d|oneDNN|(?i:cuda)|cpu_feature_guard", re.MULTILINE
)
READY = re.compile(r"serving gRPC on port (\d+), REST on port (\d+)")
CONFSERVE = [sys.executable, "-m", "confserve"]


def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != LOG_LEVEL_VARIABLE}
    return {**env, **extra}


def assert_quiet(*outputs: str) -> None:
    for output in outputs:
        found = TF_LOG.search(output)
        assert found is None, f"TensorFlow log output {found.group(0)!r} in:\n{output[-3000:]}"


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env or user_env(), capture_output=True, text=True, timeout=600, check=False
    )


# A failing assertion in a tf.function: TensorFlow logs a warning that quotes the operand (-1).
OP_FAILURE = """
import sys
from confserve.tf_runtime import import_tensorflow
tf = import_tensorflow()
@tf.function
def check(x):
    tf.debugging.assert_positive(x)
    return x
try:
    check(tf.constant([-1.0]))
except tf.errors.InvalidArgumentError:
    print("op failed")
"""


def test_the_control_an_unguarded_import_prints_tensorflow_lines(tmp_path: Path) -> None:
    """What the other tests look for is there without the guard (else they would prove nothing)."""
    result = run([sys.executable, "-c", "import tensorflow"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert TF_LOG.search(result.stderr), result.stderr


def test_import_tensorflow_and_a_failing_op_print_nothing(tmp_path: Path) -> None:
    result = run([sys.executable, "-c", OP_FAILURE], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "op failed\n"
    assert result.stderr == ""


def test_a_user_level_brings_tensorflows_messages_back(tmp_path: Path) -> None:
    result = run([sys.executable, "-c", OP_FAILURE], tmp_path, user_env(**{LOG_LEVEL_VARIABLE: "0"}))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "op failed\n"
    assert "Local rendezvous is aborting" in result.stderr  # the op's warning, from TensorFlow's C++ side
    assert "absl::InitializeLog" not in result.stderr  # the import-time output is still captured


def test_an_import_through_the_protos_is_guarded(tmp_path: Path) -> None:
    """`tensorflow_serving.*` imports `tensorflow.core`, which runs TensorFlow's __init__: the hook guards
    that import too, whoever triggers it."""
    code = (
        "from confserve.tf_runtime import install_import_guard\n"
        "install_import_guard()\n"
        "from tensorflow_serving.apis import predict_pb2\n"
        "import sys\n"
        "print('tensorflow.python' in sys.modules)\n"
    )
    result = run([sys.executable, "-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True\n"  # the runtime did load
    assert result.stderr == ""


@pytest.mark.slow
def test_model_example_digits(tmp_path: Path) -> None:
    result = run([*CONFSERVE, "model", "example", "digits", "--out", str(tmp_path / "digits")], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "saved" in result.stdout
    assert (tmp_path / "digits" / "1" / "saved_model.pb").is_file()
    assert_quiet(result.stdout, result.stderr)


def test_serve_print_measurement(tmp_path: Path) -> None:
    SimPlatform.init(tmp_path / "sim", now=int(time.time()))
    signer = generate_signing_key().public_key()
    (tmp_path / "signer.pem").write_bytes(
        signer.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "ssl.cfg").write_text("")
    (tmp_path / "prov-ca.crt").write_text("")
    result = run(
        [*CONFSERVE, "serve", "--host=127.0.0.1", "--port=0", "--no_rest", "--model_name=clf",
         "--model_base_path=models/clf", "--ssl_config_file=ssl.cfg",
         "--secret_provision_servers=localhost:1", "--secret_provision_ca_chain_path=prov-ca.crt",
         "--sim_platform=sim", "--signing_key=signer.pem", "--print_measurement"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["mr_enclave"]) == 64
    assert_quiet(result.stdout, result.stderr)


def test_serve_terminal_until_ready_and_after_a_prediction(tmp_path: Path) -> None:
    copy_model(tmp_path / "models" / "clf", (1,))
    process = subprocess.Popen(
        [*CONFSERVE, "serve", "--host=127.0.0.1", "--model_name=clf", "--model_base_path=models/clf",
         "--port=0", f"--rest_api_port={free_port()}", "--insecure", "--allow_plaintext",
         "--file_system_poll_wait_seconds=-1"],
        cwd=tmp_path, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()  # the server is up (or the process died)
        match = READY.search(ready)
        if match is not None:  # a prediction runs the model: TensorFlow's runtime and its optimiser
            body = json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]]}).encode()
            url = f"http://127.0.0.1:{match.group(2)}/v1/models/clf:predict"
            with urllib.request.urlopen(urllib.request.Request(url, body), timeout=60) as response:
                assert len(json.load(response)["predictions"]) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    assert match is not None, (ready, stderr[-3000:])
    assert process.returncode == 0, stderr[-3000:]
    assert "version 1: available" in stderr  # a model was loaded: TensorFlow's runtime ran in the server
    assert_quiet(ready, stdout, stderr)
