"""Shared pieces of the benchmarks: example models, in-memory TLS, an in-process model server, the
in-process baseline and the load generator; for protected files, a child process per operation and the
AES-GCM and plain-copy baselines. Each is small enough to read in one sitting.

Heavy imports (TensorFlow, gRPC) happen inside the functions: the load generator's spawned workers
re-import the benchmark's main module, and should pay only for what they use.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SMALL_MODEL = "digits"
SMALL_INPUT = "image"
RESNET_MODEL = "resnet50"
RESNET_INPUT = "input"


@dataclass(frozen=True)
class Tls:
    """Server and client halves of one-way TLS for `localhost`/127.0.0.1, from a throw-away CA."""

    server: Any  # confserve.frontends.TlsConfig
    client: Any  # confserve.client.ClientTls


def make_tls() -> Tls:
    import trustme

    from confserve.client import ClientTls
    from confserve.frontends import TlsConfig

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server = TlsConfig(
        cert_chain_pem=b"".join(blob.bytes() for blob in cert.cert_chain_pems),
        private_key_pem=cert.private_key_pem.bytes(),
    )
    return Tls(server, ClientTls(ca.cert_pem.bytes(), server_name="localhost"))


def build_small_model(root: Path) -> Path:
    """The digits CNN (two small conv layers + two dense), one epoch: accuracy does not matter here."""
    from confserve.owner._models import make_digits_model

    base = root / SMALL_MODEL
    make_digits_model(base, epochs=1)
    return base


def build_resnet50(root: Path) -> Path:
    """ResNet-50 with the reference signature and random weights (nothing can be downloaded here)."""
    from confserve.owner._models import make_resnet50_model

    base = root / RESNET_MODEL
    make_resnet50_model(base)
    return base


def encrypt(base: Path, out: Path, key: Any) -> Path:
    """Encrypt the whole versioned tree; files are bound to `out` exactly as the server will open it."""
    from confserve.owner._models import encrypt_model_tree

    encrypt_model_tree(base, out, key, bind_root=str(out))
    return out


TINY_MODEL = "half_plus_two"
TINY_INPUT = "x"


def build_half_plus_two(root: Path) -> Path:
    """TF Serving's classic example in its TF2 form: y = 0.5 * x + 2 on a float32 [N, 1] tensor; the
    smallest model there is, so what a server adds around it is nearly all of the cost."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name=TINY_INPUT)])
        def predict(self, x: Any) -> Any:
            return {"y": self.a * x + self.b}

    base = root / TINY_MODEL
    module = HalfPlusTwo()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.predict})
    return base


def tiny_inputs() -> dict[str, npt.NDArray[np.float32]]:
    return {TINY_INPUT: np.array([[2.0]], dtype=np.float32)}


def small_inputs(batch: int = 1) -> dict[str, npt.NDArray[np.float32]]:
    rng = np.random.default_rng(0)
    return {SMALL_INPUT: rng.random((batch, 8, 8, 1), dtype=np.float32)}


def resnet_inputs(batch: int = 1) -> dict[str, npt.NDArray[np.float32]]:
    rng = np.random.default_rng(0)
    return {RESNET_INPUT: rng.random((batch, 224, 224, 3), dtype=np.float32)}


# -- the baseline: the SavedModel signature called in this process --------------------------------------


@dataclass(frozen=True)
class InProcess:
    calls: int
    seconds: float
    p50_ms: float

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds


class Baseline:
    """The SavedModel loaded with tf.saved_model.load, its `serving_default` called with numpy in and
    numpy out (what the server does around the same call)."""

    def __init__(
        self, version_dir: Path | None, inputs: dict[str, npt.NDArray[Any]], signature: Any = None
    ) -> None:
        import tensorflow as tf

        self._tf = tf
        self._signature = signature or tf.saved_model.load(str(version_dir)).signatures["serving_default"]
        self._inputs = inputs
        for _ in range(3):  # tracing, allocator and thread-pool warm-up
            self._call()

    def with_inputs(self, inputs: dict[str, npt.NDArray[Any]]) -> Baseline:
        """The same loaded signature called with other inputs (e.g. a batch)."""
        return Baseline(None, inputs, self._signature)

    def _call(self) -> None:
        outputs = self._signature(**{k: self._tf.constant(v) for k, v in self._inputs.items()})
        for value in outputs.values():
            np.asarray(value.numpy())

    def measure(self, seconds: float) -> InProcess:
        """Call for about `seconds` (at least 5 calls)."""
        latencies: list[float] = []
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline or len(latencies) < 5:
            t = time.perf_counter()
            self._call()
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        return InProcess(len(latencies), elapsed, statistics.median(latencies) * 1000)


# -- the server under test ---------------------------------------------------------------------------


@contextmanager
def model_server(
    models: dict[str, Path], tls: Tls, *, key: Any = None, rest: bool = True, batching: Any = None
) -> Iterator[Any]:
    """A confserve ModelServer on loopback port 0 (gRPC, and REST unless `rest` is false), models
    decrypted with `key` (ProtectedOpener) or read plain (PlainOpener), server-side batching with
    `batching` (a BatchingSettings) if given. Polls only at start-up."""
    from confserve.frontends import ModelServer, ServerSettings
    from confserve.frontends.grpc import GrpcSettings
    from confserve.frontends.rest import RestSettings
    from confserve.serving import ModelConfig, PlainOpener, ProtectedOpener

    opener = PlainOpener() if key is None else ProtectedOpener(key)
    settings = ServerSettings(
        grpc=GrpcSettings(address="127.0.0.1:0"),
        rest=RestSettings(port=0) if rest else None,
        file_system_poll_wait_seconds=-1,
        batching=batching,
    )
    configs = [ModelConfig(name, str(base)) for name, base in models.items()]
    server = ModelServer(configs, opener, tls.server, settings)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_seconds=1)


def run_load(
    port: int,
    model: str,
    inputs: dict[str, npt.NDArray[Any]],
    tls: Any,
    *,
    protocol: str = "grpc",
    concurrency: int = 1,
    processes: int = 1,
    seconds: float = 10.0,
) -> Any:
    """confserve's own load generator for `seconds` against 127.0.0.1:`port`; returns its LoadResult."""
    from confserve.client._loadgen import LoadSpec
    from confserve.client._loadgen import run_load as _run

    spec = LoadSpec(
        target=f"127.0.0.1:{port}",
        model=model,
        inputs=inputs,
        protocol=protocol,  # type: ignore[arg-type]
        tls=tls,
        concurrency=concurrency,
        processes=processes,
        requests=None,
        duration_seconds=seconds,
    )
    result = _run(spec)
    if result.errors:
        print(f"  !! {result.errors} errors, first: {result.first_error}")
    return result


def raw_target(
    port: int, model: str, inputs: dict[str, npt.NDArray[Any]], tls: Any, protocol: str = "grpc"
) -> Any:
    """A bench/_rawload.py Target: TF Serving's Predict of `inputs`, serialized once, over TLS."""
    import _rawload
    from confserve.tensor_proto import to_proto
    from confserve.tfs_protos import predict_pb2

    ca = None if tls is None else tls.ca_pem
    if protocol == "grpc":
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        for alias, array in inputs.items():
            request.inputs[alias].CopyFrom(to_proto(array))
        path = "/tensorflow.serving.PredictionService/Predict"
        return _rawload.Target("grpc", port, path, request.SerializeToString(), ca)
    body = json.dumps({"inputs": {alias: array.tolist() for alias, array in inputs.items()}}).encode()
    return _rawload.Target("rest", port, f"/v1/models/{model}:predict", body, ca)


def health_target(port: int, tls: Any) -> Any:
    """A bench/_rawload.py Target: the gRPC health service's Check of the server as a whole (service
    ""), the cheapest call a replica answers: no model is looked up and nothing runs."""
    from grpc_health.v1 import health_pb2

    import _rawload

    body = health_pb2.HealthCheckRequest(service="").SerializeToString()
    ca = None if tls is None else tls.ca_pem
    return _rawload.Target("grpc", port, "/grpc.health.v1.Health/Check", body, ca)


def rss_mib(pid: int | None = None) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process (this one by default), in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def machine_line() -> str:
    load1, load5, _ = os.getloadavg()
    return f"machine: {os.cpu_count()} cores, load average {load1:.2f} (1 min) {load5:.2f} (5 min)"


# -- protected files: a child process per operation, and the baselines measured beside them ----------

PF_CHILD = r"""
import os, resource, sys, time, json
from confserve import pf
op, src, dst, key_hex = sys.argv[1:5]
key = pf.WrapKey(bytes.fromhex(key_hex))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if op == "encrypt":
    pf.encrypt_file(src, dst, key, bound_path="bench/file")
elif op == "decrypt":
    pf.decrypt_file(src, dst, key, bound_path="bench/file")
elif op == "verify":
    pf.verify_file(src, key, bound_path="bench/file")
elif op == "copy":
    with open(src, "rb") as a, open(dst, "wb") as b:
        while chunk := a.read(1 << 20):
            b.write(chunk)
elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "rss_growth_kib": peak - base}))
"""


def pf_child(op: str, src: Path, dst: Path, key_hex: str) -> dict[str, float]:
    """Run one protected-file operation (or the plain-copy baseline) in a fresh interpreter.

    Returns the operation's own time (`seconds`), the child's peak RSS growth during it, and the whole
    process's wall time seen from here (`wall_seconds`: start-up and imports included). The bound path
    is "bench/file": encrypt and decrypt through this function agree on it.
    """
    import subprocess
    import sys

    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PF_CHILD, op, str(src), str(dst), key_hex],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    result: dict[str, float] = json.loads(out.stdout)
    result["wall_seconds"] = wall
    return result


def gcm_baseline_seconds(path: Path) -> float:
    """Raw AES-128-GCM over the bytes of `path` in 4 KiB single-key calls, in this process: the floor no
    node-based format (a GCM call per 4 KiB node) can beat."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(bytes(16))
    iv = bytes(12)
    t = time.perf_counter()
    with open(path, "rb") as f:
        while chunk := f.read(4096 * 256):
            view = memoryview(chunk)
            for i in range(0, len(view), 4096):
                aead.encrypt(iv, view[i : i + 4096], None)
    return time.perf_counter() - t


def write_random_file(path: Path, size_bytes: int) -> None:
    """`size_bytes` of random data (whole megabytes), written in 1 MB pieces."""
    with open(path, "wb") as f:
        for _ in range(size_bytes // 1_000_000):
            f.write(os.urandom(1_000_000))
