"""DataPlane.predict_arrays (REST's numpy path): inputs decoded by the signature of the version chosen, the
same rules as Predict on protos, numpy outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tensorflow_serving.apis import model_pb2

from confserve.errors import Status
from confserve.serving import InvalidInputError, MemoryLimits, ServingError
from tests.unit.serving.models import expected_probabilities, make_dataplane

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def dataplane(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_dataplane(tmp_path_factory.mktemp("served"))


def spec(signature: str = "", version: int | None = None) -> Any:
    result = model_pb2.ModelSpec(name="clf", signature_name=signature)
    if version is not None:
        result.version.value = version
    return result


def given(inputs: dict[str, Any]) -> Any:
    return lambda signature: inputs


def test_numpy_in_numpy_out_with_every_output_in_order(dataplane: Any) -> None:
    seen: list[Any] = []

    def decode(signature: Any) -> dict[str, Any]:
        seen.append(signature)
        return {"x": X}

    outputs = dataplane.predict_arrays(spec(version=1), decode)
    assert list(outputs) == ["class_ids", "probabilities"]
    np.testing.assert_allclose(outputs["probabilities"], expected_probabilities(X), rtol=1e-5)
    assert [list(s.inputs) for s in seen] == [["x"]]  # decoded once, by the serving signature


def test_decode_errors_reach_the_caller_and_release_the_handle(dataplane: Any) -> None:
    def decode(signature: Any) -> dict[str, Any]:
        raise InvalidInputError("bad JSON value")

    with pytest.raises(InvalidInputError, match="bad JSON value"):
        dataplane.predict_arrays(spec(), decode)
    assert dataplane.admission.in_flight == 0
    assert dataplane.predict_arrays(spec(), given({"x": X}))["class_ids"].shape == (1,)


@pytest.mark.parametrize(
    ("inputs", "status", "message"),
    [
        (
            {"x": X.astype(np.float64)},
            Status.INVALID_ARGUMENT,
            "input 'x': Expects arg[0] to be float but double",
        ),
        ({"x": X, "y": X}, Status.INVALID_ARGUMENT, "input size does not match signature: 2!=1"),
        ({"z": X}, Status.INVALID_ARGUMENT, "input tensor alias not found in signature: z"),
        ({}, Status.INVALID_ARGUMENT, "input size does not match signature: 0!=1"),
    ],
)
def test_the_rules_of_predict_hold(dataplane: Any, inputs: Any, status: Status, message: str) -> None:
    with pytest.raises(ServingError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        dataplane.predict_arrays(spec(), given(inputs))
    assert info.value.status is status


def test_unknown_signature_is_tf_servings_rest_error_before_decoding(dataplane: Any) -> None:
    def decode(signature: Any) -> dict[str, Any]:
        raise AssertionError("decoded without a signature")

    with pytest.raises(
        ServingError, match='Serving signature name: "none" not found in signature def'
    ) as info:
        dataplane.predict_arrays(spec("none"), decode)
    assert info.value.status is Status.INVALID_ARGUMENT


def test_inputs_are_charged_at_their_size(dataplane: Any) -> None:
    budget = dataplane.memory
    budget.limits = MemoryLimits(per_request_bytes=X.nbytes * 100 - 1, in_flight_bytes=1 << 30)
    try:
        big = np.ones((100, 4), np.float32)  # 1600 bytes: one over the limit
        with pytest.raises(ServingError, match="input 'x' needs 1600 bytes of memory") as info:
            dataplane.predict_arrays(spec(), given({"x": big}))
        assert info.value.status is Status.INVALID_ARGUMENT
        assert dataplane.predict_arrays(spec(), given({"x": big[:99]}))["probabilities"].shape == (99, 3)
    finally:
        budget.limits = None
    assert budget.in_flight_bytes == 0
