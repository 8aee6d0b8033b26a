"""gRPC TensorProtos against a live replica: random dtypes, shapes (negative, zero, huge, many dims,
unknown rank), tensor_content lengths, typed value counts (a single value broadcast), names and
signatures. The replica answers each with a status a client caused (never INTERNAL or UNKNOWN), stays up
and serves a good request after every batch; no tensor value ever appears in an error message, and no
request byte in its log.

Finding F1 (one 49-byte Predict broadcasting a single float to [1048576,8,8,1]) is a named case below;
the request memory budget that bounds it belongs to serving, so here the replica must stay up and the
peak resident memory it caused is printed (run with -s to see it).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.adversarial._fuzz import Budget, rng_for
from tests.adversarial.conftest import Replica

DATA_MARKER = b"CSADVDATA7f3e"  # in tensor values: never in an error message or a log
NAME_MARKER = "CSADVNAME9a1c"  # in model, signature and input names: never in a log
CLIENT_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
DIMS = (-7, -1, 0, 1, 2, 3, 4, 5, 64, 1 << 20, 1 << 31, 1 << 62)
VALUE_FIELDS = {
    "float_val": lambda rng: rng.uniform(-1e30, 1e30),
    "double_val": lambda rng: rng.uniform(-1e300, 1e300),
    "int_val": lambda rng: rng.randint(-(1 << 31), (1 << 31) - 1),
    "int64_val": lambda rng: rng.randint(-(1 << 63), (1 << 63) - 1),
    "uint32_val": lambda rng: rng.randint(0, (1 << 32) - 1),
    "uint64_val": lambda rng: rng.randint(0, (1 << 64) - 1),
    "bool_val": lambda rng: rng.random() < 0.5,
    "half_val": lambda rng: rng.randint(0, (1 << 31) - 1),
    "string_val": lambda rng: DATA_MARKER + rng.randbytes(rng.randint(0, 8)),
    "scomplex_val": lambda rng: rng.uniform(-1, 1),
}
# Broadcast requests are what the memory budget (serving) will bound; until then the fuzzer keeps the
# element count of those it sends below this, so a normal run does not need gigabytes (F1 is its own case).
MAX_BROADCAST_ELEMENTS = 1 << 22


@pytest.fixture(scope="module")
def stub(replica: Replica) -> Iterator[Any]:
    credentials = grpc.ssl_channel_credentials(root_certificates=replica.ca.cert_pem.bytes())
    with grpc.secure_channel(f"localhost:{replica.grpc_port}", credentials) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _good_request() -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "clf"
    x = request.inputs["x"]
    x.dtype = types_pb2.DT_FLOAT
    x.tensor_shape.dim.add().size = 1
    x.tensor_shape.dim.add().size = 4
    x.float_val.extend([1.0, 2.0, 3.0, 4.0])
    return request


def _random_tensor(rng: random.Random, tensor: Any) -> None:
    tensor.dtype = (
        rng.choice([*types_pb2.DataType.values(), 99, 1000])
        if rng.random() < 0.3
        else rng.choice(
            (
                types_pb2.DT_FLOAT,
                types_pb2.DT_STRING,
                types_pb2.DT_INT32,
                types_pb2.DT_HALF,
                types_pb2.DT_BFLOAT16,
            )
        )
    )
    if rng.random() < 0.05:
        tensor.tensor_shape.unknown_rank = True
    dims = [rng.choice(DIMS) for _ in range(rng.choice((0, 1, 2, 2, 3, 6, 40)))]
    for size in dims:
        tensor.tensor_shape.dim.add().size = size
    elements = 1
    for size in dims:
        elements *= size
    mode = rng.choice(("content", "values", "broadcast", "both", "empty"))
    if mode in ("content", "both"):
        length = rng.choice((0, 1, 3, 4 * max(0, min(elements, 4096)), rng.randint(0, 5000)))
        tensor.tensor_content = (DATA_MARKER * (length // len(DATA_MARKER) + 1))[:length]
    if mode in ("values", "both", "broadcast"):
        field = rng.choice(sorted(VALUE_FIELDS))
        count = 1 if mode == "broadcast" else rng.choice((0, 2, 3, max(0, min(elements, 4096)), 4097))
        if mode == "broadcast" and elements > MAX_BROADCAST_ELEMENTS:
            dims[0] = 1  # keep the broadcast small (see MAX_BROADCAST_ELEMENTS)
            tensor.tensor_shape.dim[0].size = 1
        getattr(tensor, field).extend(VALUE_FIELDS[field](rng) for _ in range(count))


def _near_valid_request(rng: random.Random) -> Any:
    """The good request with one thing changed: what reaches TensorFlow, not just the front door."""
    request = _good_request()
    x = request.inputs["x"]
    change = rng.choice(("dim", "rank", "dtype", "content", "broadcast", "count", "extra", "strings"))
    if change == "dim":
        x.tensor_shape.dim[rng.randrange(2)].size = rng.choice(DIMS)
    elif change == "rank":
        x.tensor_shape.dim.add().size = rng.choice((1, 2, 0))
    elif change == "dtype":
        x.dtype = rng.choice(types_pb2.DataType.values())
    elif change == "content":
        x.ClearField("float_val")
        x.tensor_content = rng.randbytes(rng.choice((15, 16, 17, 0)))
    elif change == "broadcast":
        del x.float_val[1:]
        x.tensor_shape.dim[0].size = rng.choice((1, 2, 1000, 1 << 16))
    elif change == "count":
        x.float_val.extend(rng.uniform(-1, 1) for _ in range(rng.choice((1, 4, 100))))
    elif change == "extra":
        _random_tensor(rng, request.inputs[rng.choice(("y", "text", NAME_MARKER))])
    else:
        request.model_spec.signature_name = "strings"
        text, n = request.inputs["text"], request.inputs["n"]
        text.dtype, n.dtype = types_pb2.DT_STRING, rng.choice((types_pb2.DT_INT32, types_pb2.DT_INT64))
        size = rng.choice((0, 1, 3))
        text.tensor_shape.dim.add().size = size
        n.tensor_shape.dim.add().size = rng.choice((size, size + 1))
        text.string_val.extend(DATA_MARKER + rng.randbytes(rng.randint(0, 300)) for _ in range(size))
        n.int_val.extend(rng.randint(-5, 5) for _ in range(n.tensor_shape.dim[0].size))
    return request


def _random_request(rng: random.Random) -> Any:
    if rng.random() < 0.4:
        return _near_valid_request(rng)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = rng.choice(("clf", "clf", "clf", "broken", "", NAME_MARKER))
    if rng.random() < 0.3:
        request.model_spec.signature_name = rng.choice(
            ("serving_default", "strings", "classify", "nope", NAME_MARKER)
        )
    choice = rng.random()
    if choice < 0.2:
        request.model_spec.version.value = rng.choice((0, 1, 2, 999, -1, 1 << 62))
    elif choice < 0.3:
        request.model_spec.version_label = rng.choice(("stable", "canary", NAME_MARKER))
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
        _random_tensor(rng, request.inputs[rng.choice(("x", "x", "text", "n", "inputs", "", NAME_MARKER))])
    if rng.random() < 0.1:
        request.output_filter.extend(
            rng.choice((["probabilities"], ["nope"], [NAME_MARKER], ["class_ids"] * 2))
        )
    return request


def _call(stub: Any, request: Any, timeout: float = 60) -> tuple[grpc.StatusCode, str]:
    try:
        stub.Predict(request, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _check_alive(replica: Replica, stub: Any) -> None:
    assert replica.alive(), replica.log_text()
    response = stub.Predict(_good_request(), timeout=60)
    assert len(response.outputs["probabilities"].float_val) == 3


def test_random_tensor_protos_are_refused_cleanly(replica: Replica, stub: Any, budget: Budget) -> None:
    rng = rng_for("grpc", 1)
    codes: Counter[str] = Counter()
    problems: list[str] = []
    cases = budget.cases(3000, 60000)
    for case in range(cases):
        request = _random_request(rng)
        code, details = _call(stub, request)
        codes[code.name] += 1
        if code not in CLIENT_CODES:
            problems.append(f"case {case}: {code.name} {details[:200]} for {str(request)[:300]!r}")
        if DATA_MARKER.decode() in details:
            problems.append(f"case {case}: a tensor value in the error message: {details[:200]}")
        if case % 50 == 49:
            _check_alive(replica, stub)
    _check_alive(replica, stub)
    print(f"gRPC TensorProto fuzz: {cases} cases, codes {dict(codes)}")
    assert problems == [], "\n".join(problems[:20])
    assert replica.log_leaks([DATA_MARKER, NAME_MARKER.encode()]) == []


def _broadcast_request(dims: tuple[int, ...]) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "clf"
    x = request.inputs["x"]
    x.dtype = types_pb2.DT_FLOAT
    for size in dims:
        x.tensor_shape.dim.add().size = size
    x.float_val.append(1.0)
    return request


def test_f1_broadcast_request_leaves_the_replica_up(
    replica: Replica, stub: Any, budget: Budget, record_property: Any
) -> None:
    """F1: one small Predict whose single value TensorFlow broadcasts to 64 Mi elements (256 MiB of float).
    The replica must answer it (an error is fine) and stay up; its peak memory is reported."""
    request = _broadcast_request((1048576, 8, 8, 1))
    size = request.ByteSize()
    assert size < 64
    rss_before, peak_before = replica.rss_bytes()
    code, _ = _call(stub, request, timeout=120)
    rss_after, peak_after = replica.rss_bytes()
    _check_alive(replica, stub)
    assert code in CLIENT_CODES, code
    figures = (
        f"F1: {size}-byte request -> {code.name}; replica RSS {rss_before >> 20} MiB before, "
        f"{rss_after >> 20} MiB after, peak {max(peak_before, peak_after) >> 20} MiB "
        f"(peak before the request {peak_before >> 20} MiB)"
    )
    record_property("f1", figures)
    print(figures)
    if budget.long:  # the same element count in a shape the model accepts: the inference really runs
        rss_before, peak_before = replica.rss_bytes()
        code, _ = _call(stub, _broadcast_request((1 << 24, 4)), timeout=300)
        rss_after, peak_after = replica.rss_bytes()
        _check_alive(replica, stub)
        print(
            f"F1 (shape [16777216,4], runs): {code.name}; RSS {rss_before >> 20} -> {rss_after >> 20} MiB, "
            f"peak {peak_after >> 20} MiB"
        )


def test_tensor_content_of_every_length(replica: Replica, stub: Any) -> None:
    """tensor_content one byte short, exact, one byte long, for each numeric dtype the clf input refuses
    or accepts: only INVALID_ARGUMENT or OK, never a crash."""
    for dtype in (
        types_pb2.DT_FLOAT,
        types_pb2.DT_DOUBLE,
        types_pb2.DT_INT8,
        types_pb2.DT_HALF,
        types_pb2.DT_COMPLEX128,
    ):
        for length in (15, 16, 17, 63, 64, 65, 0):
            request = _good_request()
            x = request.inputs["x"]
            x.ClearField("float_val")
            x.dtype = dtype
            x.tensor_content = (DATA_MARKER * 8)[:length]
            code, details = _call(stub, request)
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (dtype, length, details)
            assert DATA_MARKER.decode() not in details
    _check_alive(replica, stub)


@pytest.mark.parametrize(
    "dims", [(1 << 62, 4, 0), (0, 1 << 62, 4), (1 << 62, 3, 0, 1), (0, 1 << 61)], ids=str
)
def test_zero_dim_hiding_an_overflow_is_invalid_argument(
    replica: Replica, stub: Any, dims: tuple[int, ...]
) -> None:
    """Found by this fuzzer: a shape with 0 elements whose other dims overflow int64 was INTERNAL (numpy
    and TensorFlow refuse such a shape); it is the client's INVALID_ARGUMENT, for numbers and strings."""
    for dtype, signature, alias in (
        (types_pb2.DT_FLOAT, "", "x"),
        (types_pb2.DT_STRING, "classify", "inputs"),
    ):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "clf"
        request.model_spec.signature_name = signature
        tensor = request.inputs[alias]
        tensor.dtype = dtype
        for size in dims:
            tensor.tensor_shape.dim.add().size = size
        code, details = _call(stub, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    _check_alive(replica, stub)
