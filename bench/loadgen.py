"""The load generator's own ceiling: confserve's load generator against a trivial endpoint, beside the
small-model server's requests/s under the same load-generator settings.

Trivial endpoint: a gRPC server (one-way TLS, same certificates as the model server) whose PredictionService
Predict returns a constant digits-shaped response at once, registered straight with grpc in this script. It
is itself Python, so its cost is inside the figure: the ceiling printed is a lower bound of the generator's.
The model server is confserve's ModelServer serving the digits CNN over gRPC+TLS. Both run in this
process; the generator's worker processes share the same 2 cores, as any client on this host would.

Usage: .venv/bin/python bench/loadgen.py [--quick] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

# (concurrency, worker processes) of each load; the model-server bench uses c=1/1 and c=16/2.
CONFIGS = ((1, 1), (16, 1), (16, 2), (16, 4))
CLEARLY_ABOVE = 1.5  # generator ceiling / server requests/s at the same settings


@contextmanager
def trivial_endpoint(tls: c.Tls) -> Iterator[int]:
    """A TLS gRPC PredictionService whose Predict answers a constant response; yields its port."""
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    response = predict_pb2.PredictResponse()
    response.model_spec.name = c.SMALL_MODEL
    response.model_spec.version.value = 1
    response.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(np.full((1, 10), 0.1, np.float32)))
    response.outputs["classes"].CopyFrom(tf.make_tensor_proto(np.zeros((1,), np.int64)))

    class Constant(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
        def Predict(self, request: Any, context: Any) -> Any:  # gRPC's method name
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))  # as the model server's default
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Constant(), server)
    credentials = grpc.ssl_server_credentials([(tls.server.private_key_pem, tls.server.cert_chain_pem)])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=1).wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per phase instead of 8")
    parser.add_argument("--seconds", type=float, help="length of each load phase")
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 8.0)

    print(c.machine_line(), flush=True)
    tls = c.make_tls()
    inputs = c.small_inputs()
    trivial: dict[tuple[int, int], Any] = {}
    served: dict[tuple[int, int], Any] = {}
    with trivial_endpoint(tls) as port:
        for conc, procs in CONFIGS:
            print(f"trivial endpoint: c={conc}, {procs} process(es), {seconds:.0f} s ...", flush=True)
            trivial[conc, procs] = c.run_load(
                port, c.SMALL_MODEL, inputs, tls.client, concurrency=conc, processes=procs, seconds=seconds
            )
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        base = c.build_small_model(Path(tmp))
        with c.model_server({c.SMALL_MODEL: base}, tls, rest=False) as server:
            for conc, procs in CONFIGS:
                print(f"model server: c={conc}, {procs} process(es), {seconds:.0f} s ...", flush=True)
                served[conc, procs] = c.run_load(
                    server.grpc.port,
                    c.SMALL_MODEL,
                    inputs,
                    tls.client,
                    concurrency=conc,
                    processes=procs,
                    seconds=seconds,
                )

    print(f"\n{c.machine_line()}")
    print("gRPC+TLS Predict, digits-shaped request (1x8x8x1 float32), requests/s (p50 ms)")
    print(f"{'load generator':<26}{'trivial endpoint':>22}{'digits model server':>24}{'ratio':>8}")
    best_server = max(r.throughput_rps for r in served.values())
    for key in CONFIGS:
        t, s = trivial[key], served[key]
        label = f"c={key[0]}, {key[1]} process(es)"
        print(
            f"{label:<26}{t.throughput_rps:>12.0f} ({t.p50_ms:5.2f} ms)"
            f"{s.throughput_rps:>14.0f} ({s.p50_ms:5.2f} ms){t.throughput_rps / s.throughput_rps:>7.1f}x"
        )
    best_key = max(trivial, key=lambda k: trivial[k].throughput_rps)
    ceiling = trivial[best_key].throughput_rps
    print(
        f"generator ceiling (best setting, c={best_key[0]} x {best_key[1]} process(es)): "
        f"{ceiling:.0f} req/s; model server's best: {best_server:.0f} req/s"
    )
    for key in CONFIGS:
        ratio = trivial[key].throughput_rps / served[key].throughput_rps
        verdict = "clearly above" if ratio >= CLEARLY_ABOVE else "NOT clearly above"
        print(f"  c={key[0]}, {key[1]} process(es): generator {verdict} the server ({ratio:.1f}x)")
    print(f"('clearly above' = at least {CLEARLY_ABOVE}x the server's requests/s with the same settings)")


if __name__ == "__main__":
    main()
