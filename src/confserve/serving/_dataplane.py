"""The DataPlane: TF Serving's request semantics on top of the model manager.

Both front ends call these methods with the TF Serving request protos and return the response protos;
they only convert formats and map `ServingError.status` to their transport's codes. Everything TF Serving
decides per request lives here: ModelSpec resolution (version / version_label / latest), signature lookup
(default `serving_default`), input validation, output_filter, and the Classify/Regress/MultiInference
contracts (tensorflow_serving/servables/tensorflow/{predict_util,classifier,regressor,multi_inference}.cc).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from confserve.errors import ConfserveError, Status
from confserve.serving._admission import Admission
from confserve.serving._errors import InvalidInputError, NotFoundError, PermissionDeniedError
from confserve.serving._manager import ServableHandle, VersionStatus
from confserve.serving._metrics import ServingMetrics
from confserve.serving._tensors import DEFAULT_MAX_TENSOR_ELEMENTS, check_compatible, from_proto, to_proto

__all__ = ["DEFAULT_SIGNATURE", "GRPC", "REST", "DataPlane", "Servable", "Servables"]

DEFAULT_SIGNATURE = "serving_default"
# TF Serving's request_latency entrypoint labels. The gRPC API is the native one, so it is the default;
# the REST front end says REST.
GRPC: Final = "GRPC"
REST: Final = "REST"
# tensorflow/cc/saved_model/signature_constants.h
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
_CLASSIFY_INPUTS = "inputs"
_CLASSIFY_CLASSES = "classes"
_CLASSIFY_SCORES = "scores"
_REGRESS_OUTPUTS = "outputs"
_METADATA_SIGNATURE_DEF = "signature_def"
_UNKNOWN_ERROR_CODE = 2  # tensorflow.error.Code.UNKNOWN: a failed load's original code is not kept


class Servable(Protocol):
    """What the DataPlane needs from a loaded model version."""

    @property
    def signature_defs(self) -> Mapping[str, Any]: ...

    def run(
        self, signature_name: str, inputs: Mapping[str, npt.NDArray[Any]], output_keys: Sequence[str]
    ) -> Mapping[str, npt.NDArray[Any]]: ...


class Servables(Protocol):
    """What the DataPlane needs from the model manager (`ModelManager` is the one real implementation)."""

    def acquire(
        self, model: str, *, version: int | None = None, label: str | None = None
    ) -> ServableHandle[Any]: ...

    def knows(self, model: str) -> bool: ...

    def is_ready(self) -> bool: ...

    def model_status(
        self, model: str, *, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]: ...


def _version_choice(spec: Any) -> tuple[str | None, int | str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return choice, int(spec.version.value)
    if choice == "version_label":
        return choice, str(spec.version_label)
    return None, None


def _braces(names: Sequence[str]) -> str:
    return "{" + ",".join(sorted(names)) + "}"


class DataPlane:
    """Predict, Classify, Regress, MultiInference, GetModelMetadata and GetModelStatus.

    The inference calls (Predict, Classify, Regress, MultiInference) pass through one `Admission`, shared
    by both front ends: beyond `max_concurrent_requests` they fail at once with RESOURCE_EXHAUSTED.
    Status and metadata calls are not counted, so probes keep answering under load. The same place records
    TF Serving's request metrics when `metrics` is given.
    """

    def __init__(
        self,
        manager: Servables,
        *,
        max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
        max_concurrent_requests: int | None = None,
        metrics: ServingMetrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._manager = manager
        self._max_elements = max_tensor_elements
        self.admission = Admission(max_concurrent_requests)
        self._metrics = metrics
        self._clock = clock

    @contextmanager
    def _serving(self, api: str, model_name: str, entrypoint: str) -> Iterator[None]:
        """One inference request: admission, then TF Serving's request_count and request_latency."""
        start = self._clock()
        status = "OK"
        try:
            with self.admission.admit():
                yield
        except ConfserveError as exc:
            status = exc.status.value
            raise
        except Exception:
            status = Status.INTERNAL.value
            raise
        finally:
            if self._metrics is not None:
                label = model_name if self._manager.knows(model_name) else ""
                self._metrics.record(label, api, entrypoint, status, self._clock() - start)

    def is_ready(self) -> bool:
        """Every configured model has an AVAILABLE version (health and readiness probes)."""
        return self._manager.is_ready()

    # -- model spec and signature -----------------------------------------------------------------------

    def _acquire(self, request: Any) -> ServableHandle[Servable]:
        if not request.HasField("model_spec"):
            raise InvalidInputError("Missing ModelSpec")
        spec = request.model_spec
        if not spec.name:
            raise InvalidInputError("Missing model name in ModelSpec")
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return self._manager.acquire(spec.name, version=spec.version.value)
        if choice == "version_label":
            return self._manager.acquire(spec.name, label=spec.version_label)
        return self._manager.acquire(spec.name)

    @staticmethod
    def _signature(servable: Servable, name: str) -> tuple[str, Any]:
        key = name or DEFAULT_SIGNATURE
        signature = servable.signature_defs.get(key)
        if signature is None:
            raise NotFoundError(f'Serving signature key "{key}" not found.')
        return key, signature

    @staticmethod
    def _fill_spec(target: Any, handle: ServableHandle[Servable], signature_name: str | None) -> None:
        target.name = handle.model
        target.version.value = handle.version
        if signature_name is not None:
            target.signature_name = signature_name

    def resolve_signature(self, model_spec: Any) -> tuple[int, Any]:
        """The version a ModelSpec selects now and its SignatureDef (REST needs the input dtypes to parse
        JSON). Pin the returned version in the follow-up request so both use the same version."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.CopyFrom(model_spec)
        with self._acquire(request) as handle:
            _, signature = self._signature(handle.servable, model_spec.signature_name)
            return handle.version, signature

    # -- Predict ----------------------------------------------------------------------------------------

    def predict(
        self, request: predict_pb2.PredictRequest, *, entrypoint: str = GRPC
    ) -> predict_pb2.PredictResponse:
        with self._serving("Predict", request.model_spec.name, entrypoint), self._acquire(request) as handle:
            name, signature = self._signature(handle.servable, request.model_spec.signature_name)
            inputs = self._predict_inputs(request, signature)
            output_keys = self._output_keys(request, signature)
            outputs = handle.servable.run(name, inputs, output_keys)
            response = predict_pb2.PredictResponse()
            self._fill_spec(response.model_spec, handle, name)
            for key in output_keys:
                response.outputs[key].CopyFrom(to_proto(outputs[key]))
            return response

    def _predict_inputs(self, request: Any, signature: Any) -> dict[str, npt.NDArray[Any]]:
        sent = list(request.inputs)
        expected = list(signature.inputs)
        if len(sent) != len(expected):
            extra = [a for a in sent if a not in signature.inputs]
            missing = [a for a in expected if a not in request.inputs]
            # TF Serving's text (predict_util.cc, VerifyRequestInputsSize).
            raise InvalidInputError(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({_braces(sent)}) != len({_braces(expected)}). "
                f"Sent extra: {_braces(extra)}. Missing but required: {_braces(missing)}."
            )
        arrays: dict[str, npt.NDArray[Any]] = {}
        for index, alias in enumerate(sorted(sent)):
            info = signature.inputs.get(alias)
            if info is None:
                raise InvalidInputError(
                    f"input tensor alias not found in signature: {alias}. "
                    f"Inputs expected to be in the set {_braces(expected)}."
                )
            tensor = request.inputs[alias]
            check_compatible(alias, index, tensor, info)
            arrays[alias] = from_proto(alias, tensor, max_elements=self._max_elements)
        return arrays

    @staticmethod
    def _output_keys(request: Any, signature: Any) -> list[str]:
        if not request.output_filter:
            return sorted(signature.outputs)
        seen: set[str] = set()
        for alias in request.output_filter:
            if alias not in signature.outputs:
                raise InvalidInputError(
                    f"output tensor alias not found in signature: {alias} "
                    f"Outputs expected to be in the set {_braces(list(signature.outputs))}."
                )
            if alias in seen:
                raise InvalidInputError(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        return list(request.output_filter)

    # -- Classify / Regress -----------------------------------------------------------------------------

    def classify(
        self, request: classification_pb2.ClassificationRequest, *, entrypoint: str = GRPC
    ) -> classification_pb2.ClassificationResponse:
        with (
            self._serving("Classify", request.model_spec.name, entrypoint),
            self._acquire(request) as handle,
        ):
            name, signature = self._signature(handle.servable, request.model_spec.signature_name)
            response = classification_pb2.ClassificationResponse()
            self._fill_spec(response.model_spec, handle, name)
            response.result.CopyFrom(self._run_classify(handle.servable, name, signature, request.input))
            return response

    def regress(
        self, request: regression_pb2.RegressionRequest, *, entrypoint: str = GRPC
    ) -> regression_pb2.RegressionResponse:
        with self._serving("Regress", request.model_spec.name, entrypoint), self._acquire(request) as handle:
            name, signature = self._signature(handle.servable, request.model_spec.signature_name)
            response = regression_pb2.RegressionResponse()
            self._fill_spec(response.model_spec, handle, name)
            response.result.CopyFrom(self._run_regress(handle.servable, name, signature, request.input))
            return response

    def _run_classify(self, servable: Servable, name: str, signature: Any, model_input: Any) -> Any:
        if signature.method_name != CLASSIFY_METHOD:
            raise InvalidInputError(
                f"Expected classification signature method_name to be {CLASSIFY_METHOD}. "
                f"Was: {signature.method_name}"
            )
        input_key = self._examples_input_key(signature)
        keys = [k for k in (_CLASSIFY_CLASSES, _CLASSIFY_SCORES) if k in signature.outputs]
        if not keys:
            raise InvalidInputError("Expected classification signature outputs to contain classes or scores")
        examples = self._serialized_examples(model_input)
        outputs = servable.run(name, {input_key: examples}, keys)
        count = len(examples)
        classes = outputs.get(_CLASSIFY_CLASSES)
        scores = outputs.get(_CLASSIFY_SCORES)
        for key, array in outputs.items():
            if array.ndim != 2 or array.shape[0] != count:
                raise InvalidInputError(
                    f"Expected output Tensor {key} of shape [batch_size, num_classes] "
                    f"with batch_size {count}, got {list(array.shape)}"
                )
        if classes is not None and scores is not None and classes.shape != scores.shape:
            raise InvalidInputError("Tensors class and score should match in shape")
        result = classification_pb2.ClassificationResult()
        width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
        for row in range(count):
            classification = result.classifications.add()
            for column in range(width):
                cls = classification.classes.add()
                if classes is not None:
                    value = classes[row, column]
                    cls.label = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                if scores is not None:
                    cls.score = float(scores[row, column])
        return result

    def _run_regress(self, servable: Servable, name: str, signature: Any, model_input: Any) -> Any:
        if signature.method_name != REGRESS_METHOD:
            raise InvalidInputError(
                f"Expected regression signature method_name to be {REGRESS_METHOD}. "
                f"Was: {signature.method_name}"
            )
        input_key = self._examples_input_key(signature)
        if _REGRESS_OUTPUTS not in signature.outputs:
            raise InvalidInputError(f"Expected regression signature outputs to contain {_REGRESS_OUTPUTS}")
        examples = self._serialized_examples(model_input)
        values = servable.run(name, {input_key: examples}, [_REGRESS_OUTPUTS])[_REGRESS_OUTPUTS]
        count = len(examples)
        if values.shape not in ((count,), (count, 1)):
            raise InvalidInputError(
                f"Expected output Tensor outputs of shape [batch_size] or [batch_size, 1] "
                f"with batch_size {count}, got {list(values.shape)}"
            )
        result = regression_pb2.RegressionResult()
        for value in values.reshape(count):
            result.regressions.add().value = float(value)
        return result

    @staticmethod
    def _examples_input_key(signature: Any) -> str:
        if len(signature.inputs) != 1:
            raise InvalidInputError("Expected one input Tensor.")
        (key,) = signature.inputs
        if signature.inputs[key].dtype != 7:  # DT_STRING: serialized tf.Example protos
            raise InvalidInputError("Expected input Tensor of type string (serialized tf.Example)")
        return str(key)

    @staticmethod
    def _serialized_examples(model_input: Any) -> npt.NDArray[Any]:
        kind = model_input.WhichOneof("kind")
        if kind == "example_list":
            serialized = [e.SerializeToString() for e in model_input.example_list.examples]
        elif kind == "example_list_with_context":
            context = model_input.example_list_with_context.context
            serialized = []
            for example in model_input.example_list_with_context.examples:
                merged = example_pb2.Example()
                merged.CopyFrom(context)
                for feature, value in example.features.feature.items():
                    merged.features.feature[feature].CopyFrom(value)
                serialized.append(merged.SerializeToString())
        else:
            serialized = []
        if not serialized:
            raise InvalidInputError("Input is empty.")  # TF Serving's text
        return np.array(serialized, dtype=object)

    # -- MultiInference ---------------------------------------------------------------------------------

    def multi_inference(
        self, request: inference_pb2.MultiInferenceRequest, *, entrypoint: str = GRPC
    ) -> inference_pb2.MultiInferenceResponse:
        model_name = request.tasks[0].model_spec.name if request.tasks else ""
        with self._serving("MultiInference", model_name, entrypoint):
            if not request.tasks:
                raise InvalidInputError("MultiInferenceRequest must contain at least one task")
            first = request.tasks[0].model_spec
            seen: set[str] = set()
            for task in request.tasks:
                if task.model_spec.name != first.name:
                    raise InvalidInputError(
                        "All ModelSpecs in a MultiInferenceRequest must access the same model name"
                    )
                if _version_choice(task.model_spec) != _version_choice(first):
                    raise InvalidInputError(
                        "All ModelSpecs in a MultiInferenceRequest must access the same version"
                    )
                signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
                if signature_name in seen:
                    raise InvalidInputError(f"Duplicate evaluation of signature: {signature_name}")
                seen.add(signature_name)
            with self._acquire(request.tasks[0]) as handle:
                response = inference_pb2.MultiInferenceResponse()
                for task in request.tasks:
                    name, signature = self._signature(handle.servable, task.model_spec.signature_name)
                    result = response.results.add()
                    self._fill_spec(result.model_spec, handle, name)
                    if task.method_name == CLASSIFY_METHOD:
                        result.classification_result.CopyFrom(
                            self._run_classify(handle.servable, name, signature, request.input)
                        )
                    elif task.method_name == REGRESS_METHOD:
                        result.regression_result.CopyFrom(
                            self._run_regress(handle.servable, name, signature, request.input)
                        )
                    else:
                        raise InvalidInputError(f"Unsupported signature method_name: {task.method_name}")
                return response

        # -- metadata and status ----------------------------------------------------------------------------

    def get_model_metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.metadata_field:
            raise InvalidInputError("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != _METADATA_SIGNATURE_DEF:
                raise InvalidInputError(f"Metadata field {field} is not supported")
        with self._acquire(request) as handle:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            self._fill_spec(response.model_spec, handle, None)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature in handle.servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(signature)
            response.metadata[_METADATA_SIGNATURE_DEF].Pack(signature_map)
            return response

    def get_model_status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise InvalidInputError("Missing ModelSpec")
        spec = request.model_spec
        choice = spec.WhichOneof("version_choice")
        statuses = self._manager.model_status(
            spec.name,
            version=spec.version.value if choice == "version" else None,
            label=spec.version_label if choice == "version_label" else None,
        )
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in statuses:
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = int(status.state)
            entry.status.SetInParent()  # TF Serving always reports a status (OK when no error)
            if status.error is not None:
                entry.status.error_code = _UNKNOWN_ERROR_CODE
                entry.status.error_message = status.error
        return response

    def reload_config(
        self, request: model_management_pb2.ReloadConfigRequest
    ) -> model_management_pb2.ReloadConfigResponse:
        """HandleReloadConfigRequest. Refused: in a confidential deployment the set of served models is
        part of the attested configuration, so a network peer may not replace it."""
        raise PermissionDeniedError("HandleReloadConfigRequest is disabled on this server")
