"""confserve against MLServer 1.7.1 on the same model: the digits CNN, both plaintext on loopback.

MLServer (Seldon's Python inference server) is installed by this script into its own virtual environment,
~/.cache/confserve-bench/mlserver-1.7.1 (with tensorflow-cpu of the project's TensorFlow version), never
into the project's. It serves the same SavedModel through a custom runtime of a few lines that calls the
`serving_default` signature (tf.saved_model.load), as a Python team would write it; both servers keep their
default settings (confserve: `confserve serve --insecure --allow_plaintext`; MLServer: `mlserver start`,
one inference worker process). Each protocol speaks its own API: confserve TF Serving's
(PredictionService/Predict, POST /v1/models/digits:predict), MLServer the V2 inference protocol
(GRPCInferenceService/ModelInfer, POST /v2/models/digits/infer), with the same one image.

The same load generator (bench/_rawload.py: requests serialized once, raw bytes per call, kept-alive
HTTP connections; h2load unless `--client python`) drives both: gRPC and REST, concurrency 1 and 16
(gRPC: two HTTP/2 connections of eight streams, or two Python processes of eight threads), in
alternating rounds (confserve then MLServer, then the other way round) so that other work on a shared
machine hits both alike. Printed: each run, then per protocol and concurrency the median over
rounds of confserve's requests/s divided by MLServer's (target >= 2x), with the load average.

Usage: .venv/bin/python bench/peer.py [--seconds S] [--rounds N] [--client h2load|python]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import _common as c
import _rawload as load

MLSERVER_VERSION = "1.7.1"
TENSORFLOW_VERSION = "2.21.0"  # the project's pin (pyproject.toml)
VENV = Path.home() / ".cache" / "confserve-bench" / f"mlserver-{MLSERVER_VERSION}"
RUNTIME = """
import tensorflow as tf
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class SavedModelRuntime(MLModel):
    async def load(self) -> bool:
        self._signature = tf.saved_model.load(self.settings.parameters.uri).signatures["serving_default"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {i.name: tf.constant(NumpyCodec.decode_input(i)) for i in payload.inputs}
        outputs = self._signature(**inputs)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name, value.numpy()) for name, value in outputs.items()],
        )
"""
V2_GRPC_REQUEST = """
import sys
import numpy as np
from mlserver.grpc import dataplane_pb2 as pb
image = np.frombuffer(bytes.fromhex(sys.argv[1]), dtype=np.float32)
request = pb.ModelInferRequest(model_name="digits")
tensor = request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 1])
tensor.contents.fp32_contents.extend(image.tolist())
sys.stdout.write(request.SerializeToString().hex())
"""


def ensure_mlserver() -> Path:
    """MLServer's own virtual environment (created on first use; a marker says it is complete)."""
    marker = VENV / ".complete"
    if not marker.exists():
        print(f"installing MLServer {MLSERVER_VERSION} into {VENV} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        # uvloop 0.22+ raises in asyncio.get_event_loop() without a running loop, which MLServer 1.7.1's
        # inference worker calls at start (each worker dies and is restarted): the last release before.
        packages = [
            f"mlserver=={MLSERVER_VERSION}",
            f"tensorflow-cpu=={TENSORFLOW_VERSION}",
            "uvloop==0.21.0",
        ]
        subprocess.run([*pip, *packages], check=True)
        marker.write_text("ok\n")
    return VENV


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen[bytes], path: str, log: Path) -> None:
    import http.client

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready:\n{log.read_text()[-3000:]}")


def start_confserve(
    model_base: Path, workdir: Path, flags: list[str]
) -> tuple[subprocess.Popen[bytes], int, int]:
    grpc_port, rest_port = free_port(), free_port()
    log = workdir / "confserve.log"
    command = [
        sys.executable, "-m", "confserve", "serve", "--host=127.0.0.1", "--model_name=digits",
        f"--model_base_path={model_base}", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
        "--insecure", "--allow_plaintext", "--file_system_poll_wait_seconds=-1", *flags,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=workdir)
    wait_ready(rest_port, process, "/v1/confserve/ready", log)
    return process, grpc_port, rest_port


def start_mlserver(
    venv: Path, model_version_dir: Path, workdir: Path
) -> tuple[subprocess.Popen[bytes], int, int]:
    root = workdir / "mlserver"
    (root / "digits").mkdir(parents=True)
    (root / "digits" / "runtime.py").write_text(RUNTIME)
    grpc_port, rest_port = free_port(), free_port()
    settings = {
        "host": "127.0.0.1", "http_port": rest_port, "grpc_port": grpc_port,
        "metrics_port": free_port(), "debug": False,
    }  # fmt: skip
    (root / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": "digits", "implementation": "runtime.SavedModelRuntime",
        "parameters": {"uri": str(model_version_dir)},
    }  # fmt: skip
    (root / "digits" / "model-settings.json").write_text(json.dumps(model))
    log = workdir / "mlserver.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        [str(venv / "bin" / "mlserver"), "start", str(root)], stdout=log.open("wb"), stderr=subprocess.STDOUT,
        cwd=root / "digits", env=env,
    )  # fmt: skip
    wait_ready(rest_port, process, "/v2/models/digits/ready", log)
    return process, grpc_port, rest_port


def targets(image: np.ndarray, venv: Path, ports: dict[str, int]) -> dict[tuple[str, str], load.Target]:
    from confserve.tensor_proto import to_proto
    from confserve.tfs_protos import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["image"].CopyFrom(to_proto(image))
    v2_grpc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", V2_GRPC_REQUEST, image.astype(np.float32).tobytes().hex()],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    v2_rest = {"inputs": [{"name": "image", "shape": list(image.shape), "datatype": "FP32",
                           "data": image.ravel().tolist()}]}  # fmt: skip
    return {
        ("confserve", "grpc"): load.Target(
            "grpc", ports["confserve-grpc"], "/tensorflow.serving.PredictionService/Predict",
            request.SerializeToString(),
        ),
        ("confserve", "rest"): load.Target(
            "rest", ports["confserve-rest"], "/v1/models/digits:predict",
            json.dumps({"instances": image.tolist()}).encode(),
        ),
        ("mlserver", "grpc"): load.Target(
            "grpc",
            ports["mlserver-grpc"],
            "/inference.GRPCInferenceService/ModelInfer",
            bytes.fromhex(v2_grpc),
        ),
        ("mlserver", "rest"): load.Target(
            "rest", ports["mlserver-rest"], "/v2/models/digits/infer", json.dumps(v2_rest).encode()
        ),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each load phase")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--client", choices=load.CLIENTS, default="h2load", help="the load generator")
    parser.add_argument(
        "--confserve-flag",
        action="append",
        default=[],
        help="an extra `confserve serve` flag (repeatable), e.g. --confserve-flag=--enable_batching",
    )
    args = parser.parse_args()

    print(f"{c.machine_line()}; load generator: {args.client}", flush=True)
    venv = ensure_mlserver()
    image = c.small_inputs()[c.SMALL_INPUT]
    runs: dict[tuple[str, str, int], list[load.Result]] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        workdir = Path(tmp)
        base = c.build_small_model(workdir / "models")
        servers = []
        try:
            confserve, cg, cr = start_confserve(base, workdir, args.confserve_flag)
            if args.confserve_flag:
                print(f"confserve flags: {' '.join(args.confserve_flag)}")
            servers.append(confserve)
            mlserver, mg, mr = start_mlserver(venv, base / "1", workdir)
            servers.append(mlserver)
            ports = {"confserve-grpc": cg, "confserve-rest": cr, "mlserver-grpc": mg, "mlserver-rest": mr}
            plan = targets(image, venv, ports)
            for round_number in range(args.rounds):
                order = ("confserve", "mlserver") if round_number % 2 == 0 else ("mlserver", "confserve")
                for protocol in ("grpc", "rest"):
                    for concurrency in (1, 16):
                        for server in order:
                            result = load.run(
                                plan[server, protocol],
                                concurrency=concurrency,
                                processes=1 if concurrency == 1 else 2,
                                seconds=args.seconds,
                                client=args.client,
                            )
                            runs.setdefault((server, protocol, concurrency), []).append(result)
                            error = f"  {result.errors} errors: {result.first_error}" if result.errors else ""
                            print(
                                f"round {round_number + 1} {server:<9} {protocol:<4} c={concurrency:<2} "
                                f"{result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                                f"p99 {result.p99_ms:6.2f} ms"
                                f"  (load {os.getloadavg()[0]:.2f}){error}",
                                flush=True,
                            )
            memory = {
                "confserve": c.rss_mib(confserve.pid),
                "MLServer (main process)": c.rss_mib(mlserver.pid),
            }
        finally:
            for process in servers:
                process.terminate()
            for process in servers:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()

    print(f"\n{c.machine_line()}")
    for name, (resident, peak) in memory.items():
        print(f"{name}: resident {resident:.0f} MiB, peak {peak:.0f} MiB after the loads")
    print(f"digits CNN, batch 1, plaintext on loopback; confserve vs MLServer {MLSERVER_VERSION}")
    print(f"{'':<14}{'confserve req/s':>16}{'MLServer req/s':>16}{'ratio (median of rounds)':>27}")
    for protocol in ("grpc", "rest"):
        for concurrency in (1, 16):
            ours = runs["confserve", protocol, concurrency]
            theirs = runs["mlserver", protocol, concurrency]
            ratios = [a.rps / b.rps for a, b in zip(ours, theirs, strict=True) if b.rps]
            label = f"{'gRPC' if protocol == 'grpc' else 'REST'} c={concurrency}"
            print(
                f"{label:<14}{load.median([r.rps for r in ours]):>16.0f}"
                f"{load.median([r.rps for r in theirs]):>16.0f}"
                f"{load.median(ratios):>26.2f}x  (target >= 2x)"
            )


if __name__ == "__main__":
    main()
