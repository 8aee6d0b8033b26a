"""The DataPlane: TF Serving's request semantics on top of the model manager.

Both front ends call these methods with the TF Serving request protos and return the response protos;
they only convert formats and map `ServingError.status` to their transport's codes. Everything TF Serving
decides per request lives here: ModelSpec resolution (version / version_label / latest), signature lookup
(default `serving_default`), input validation, output_filter, and the Classify/Regress/MultiInference
contracts (tensorflow_serving/servables/tensorflow/{predict_util,classifier,regressor,multi_inference}.cc).

As in TF Serving, input shapes are not checked against the SignatureDef (the model's graph decides, see
`SavedModelServable`). Predict input dtypes are, with TensorFlow's own wording (Classify and Regress feed
the serialized examples whatever the SignatureDef declares, as TF Serving does), and every TensorProto is
checked before it is allocated (element limit, content length). The status of an unknown signature
depends on the RPC, as in TF Serving: FAILED_PRECONDITION for Predict, INVALID_ARGUMENT for Classify,
Regress and MultiInference. SignatureDef method names are checked only with `method_name_check`
(--enable_signature_method_name_check, off by default: TF2's saver writes "predict" for every signature).
Predict responses carry values in the typed `*_val` fields (TF Serving's Tensor::AsProtoField) unless
`output_tensor_content` (--enable_serialization_as_tensor_content) asks for `tensor_content`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
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
from confserve.serving._errors import (
    FailedPreconditionError,
    InvalidInputError,
    PermissionDeniedError,
    ServingError,
    UnimplementedError,
)
from confserve.serving._manager import ServableHandle, VersionStatus
from confserve.serving._memory import MemoryBudget, MemoryLimits, RequestMemory
from confserve.serving._metrics import ServingMetrics
from confserve.serving._tensors import (
    DEFAULT_MAX_TENSOR_ELEMENTS,
    STRING_ELEMENT_BYTES,
    check_array_dtype,
    check_dtype,
    data_type_name,
    from_proto,
    response_proto,
    tensor_shape_string,
)

__all__ = ["DEFAULT_SIGNATURE", "GRPC", "REST", "DataPlane", "DataPlaneSettings", "Servable", "Servables"]

DEFAULT_SIGNATURE = "serving_default"
# TF Serving's request_latency entrypoint labels. The gRPC API is the native one, so it is the default;
# the REST front end says REST.
GRPC: Final = "GRPC"
REST: Final = "REST"
# tensorflow/cc/saved_model/signature_constants.h
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
_CLASSIFY_INPUTS = "inputs"
R = TypeVar("R")  # a Classify or Regress response
_CLASSIFY_CLASSES = "classes"
_CLASSIFY_SCORES = "scores"
_REGRESS_INPUTS = "inputs"
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


def _signature_key(model_spec: Any) -> str:
    return str(model_spec.signature_name) or DEFAULT_SIGNATURE


@dataclass(frozen=True)
class DataPlaneSettings:
    """What the DataPlane enforces per request; each field is a `serve` option (frontends.ServerSettings)."""

    max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS
    max_concurrent_requests: int | None = None  # None: no limit
    memory_limits: MemoryLimits | None = None  # None: serving/_memory.py's defaults
    method_name_check: bool = False  # --enable_signature_method_name_check
    output_tensor_content: bool = False  # --serialize_outputs_as_tensor_content


class DataPlane:
    """Predict, Classify, Regress, MultiInference, GetModelMetadata and GetModelStatus.

    The inference calls (Predict, Classify, Regress, MultiInference) pass through one `Admission`, shared
    by both front ends: beyond `max_concurrent_requests` they fail at once with RESOURCE_EXHAUSTED. Each
    also gets an account of the one `MemoryBudget` (`memory_limits`, serving/_memory.py), charged with
    the decoded size of its inputs before they are allocated. Status and metadata calls are not counted,
    so probes keep answering under load. The same place records TF Serving's request metrics when
    `metrics` is given.
    """

    def __init__(
        self,
        manager: Servables,
        settings: DataPlaneSettings | None = None,
        *,
        metrics: ServingMetrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._manager = manager
        self.settings = settings = settings or DataPlaneSettings()
        self.admission = Admission(settings.max_concurrent_requests)
        self.memory = MemoryBudget(settings.memory_limits)
        self._metrics = metrics
        self._clock = clock

    @contextmanager
    def _serving(
        self, api: str, model_name: str, entrypoint: str, memory: RequestMemory | None = None
    ) -> Iterator[RequestMemory]:
        """One inference request: admission and a memory account (the caller's, if it opened one for
        what it already holds, e.g. a REST body), then TF Serving's request_count and request_latency."""
        start = self._clock()
        status = "OK"
        try:
            with self.admission.admit():
                if memory is not None:
                    yield memory
                else:
                    with self.memory.request() as account:
                        yield account
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
        return self._acquire_spec(request.model_spec)

    def _acquire_spec(self, spec: Any) -> ServableHandle[Servable]:
        if not spec.name:
            raise InvalidInputError("Missing model name in ModelSpec")
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return self._manager.acquire(spec.name, version=spec.version.value)
        if choice == "version_label":
            return self._manager.acquire(spec.name, label=spec.version_label)
        return self._manager.acquire(spec.name)

    @staticmethod
    def _fill_spec(target: Any, handle: ServableHandle[Servable], signature_name: str | None) -> None:
        target.name = handle.model
        target.version.value = handle.version
        if signature_name is not None:
            target.signature_name = signature_name

    # -- Predict ----------------------------------------------------------------------------------------

    def predict(
        self,
        request: predict_pb2.PredictRequest,
        *,
        entrypoint: str = GRPC,
        output_tensor_content: bool | None = None,
        memory: RequestMemory | None = None,
    ) -> predict_pb2.PredictResponse:
        """TF Serving's Predict (predict_util.cc). `output_tensor_content` overrides the server's choice of
        output encoding for one call (the REST front end reads the response itself and wants the fast one);
        `memory` is an account the caller opened for the same request (see `_serving`)."""
        as_content = (
            self.settings.output_tensor_content if output_tensor_content is None else output_tensor_content
        )
        with (
            self._serving("Predict", request.model_spec.name, entrypoint, memory) as account,
            self._acquire(request) as handle,
        ):
            name, signature = self._predict_signature(handle, request.model_spec)
            inputs = self._predict_inputs(request, signature, account)
            output_keys = self._output_keys(request, signature)
            outputs = handle.servable.run(name, inputs, output_keys)
            response = predict_pb2.PredictResponse()
            self._fill_spec(response.model_spec, handle, name)
            for key in output_keys:
                response.outputs[key].CopyFrom(response_proto(outputs[key], as_content=as_content))
            return response

    def predict_arrays(
        self,
        spec: Any,
        decode: Callable[[Any], Mapping[str, npt.NDArray[Any]]],
        *,
        entrypoint: str = REST,
        memory: RequestMemory | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Predict for a front end that decodes tensors itself, by the signature (REST's JSON, whose
        numbers take the dtypes the signature declares): `decode(signature_def)` gives the numpy inputs,
        called on the version the spec selects, under the same handle as the run. The same alias, default
        and dtype rules as `predict` (each input charged at its size); every output of the signature is
        returned as numpy, without a TensorProto in between. A missing signature is TF Serving's REST error,
        found before anything is decoded."""
        with (
            self._serving("Predict", spec.name, entrypoint, memory) as account,
            self._acquire_spec(spec) as handle,
        ):
            name, signature = self._predict_signature(handle, spec, rest=True)
            arrays = self._array_inputs(decode(signature), signature, account)
            output_keys = sorted(signature.outputs)
            outputs = handle.servable.run(name, arrays, output_keys)
            return {key: outputs[key] for key in output_keys}

    def _predict_signature(
        self, handle: ServableHandle[Servable], spec: Any, *, rest: bool = False
    ) -> tuple[str, Any]:
        """The signature a Predict runs; a missing one is TF Serving's gRPC error, or with `rest` the error
        of its REST handler, which looks the signature up first (http_rest_api_handler.cc, GetInfoMap)."""
        name = _signature_key(spec)
        signature = handle.servable.signature_defs.get(name)
        if signature is None and rest:
            raise InvalidInputError(f'Serving signature name: "{name}" not found in signature def')
        if signature is None:
            raise FailedPreconditionError(f'Serving signature key "{name}" not found.')
        if self.settings.method_name_check and signature.method_name not in (
            PREDICT_METHOD,
            CLASSIFY_METHOD,
            REGRESS_METHOD,
        ):
            raise ServingError(  # INTERNAL, as in TF Serving
                f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
                f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {signature.method_name}"
            )
        return name, signature

    def _array_inputs(
        self, inputs: Mapping[str, npt.NDArray[Any]], signature: Any, memory: RequestMemory
    ) -> dict[str, npt.NDArray[Any]]:
        _check_aliases(list(inputs), signature)
        arrays: dict[str, npt.NDArray[Any]] = {}
        for index, alias in enumerate(sorted(signature.inputs)):
            array = inputs.get(alias)
            if array is None:
                default = signature.defaults.get(alias)
                if default is None:
                    raise InvalidInputError(
                        f"Missing input: {alias}, and the signature has no default for it"
                    )
                check_dtype(alias, index, default, signature.inputs[alias])
                arrays[alias] = from_proto(
                    alias, default, max_elements=self.settings.max_tensor_elements, memory=memory
                )
                continue
            check_array_dtype(alias, index, array, signature.inputs[alias])
            memory.charge(array.nbytes, f"input '{alias}'")
            arrays[alias] = array
        return arrays

    def _predict_inputs(
        self, request: Any, signature: Any, memory: RequestMemory
    ) -> dict[str, npt.NDArray[Any]]:
        _check_aliases(list(request.inputs), signature)
        expected = list(signature.inputs)
        defaults = signature.defaults
        arrays: dict[str, npt.NDArray[Any]] = {}
        # Argument numbers follow the feed order, the aliases sorted (SavedModelServable.run).
        for index, alias in enumerate(sorted(expected)):
            tensor = request.inputs[alias] if alias in request.inputs else defaults.get(alias)
            if tensor is None:
                raise InvalidInputError(f"Missing input: {alias}, and the signature has no default for it")
            check_dtype(alias, index, tensor, signature.inputs[alias])
            arrays[alias] = from_proto(
                alias, tensor, max_elements=self.settings.max_tensor_elements, memory=memory
            )
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
        self,
        request: classification_pb2.ClassificationRequest,
        *,
        entrypoint: str = GRPC,
        memory: RequestMemory | None = None,
    ) -> classification_pb2.ClassificationResponse:
        response = classification_pb2.ClassificationResponse()
        return self._examples_call("Classify", CLASSIFY_METHOD, request, response, entrypoint, memory)

    def regress(
        self,
        request: regression_pb2.RegressionRequest,
        *,
        entrypoint: str = GRPC,
        memory: RequestMemory | None = None,
    ) -> regression_pb2.RegressionResponse:
        response = regression_pb2.RegressionResponse()
        return self._examples_call("Regress", REGRESS_METHOD, request, response, entrypoint, memory)

    def _examples_call(
        self, api: str, method: str, request: Any, response: R, entrypoint: str, memory: RequestMemory | None
    ) -> R:
        """Classify or Regress (classifier.cc, regressor.cc): signature, then examples, then one run."""
        with (
            self._serving(api, request.model_spec.name, entrypoint, memory) as account,
            self._acquire(request) as handle,
        ):
            name, signature = self._examples_signature(handle.servable, request.model_spec, method)
            self._fill_spec(response.model_spec, handle, name)  # type: ignore[attr-defined]
            task = _EXAMPLES_TASKS[method]
            task.check(signature)
            examples = _serialized_examples(request.input, account)
            response.result.CopyFrom(task.run(handle.servable, name, signature, examples))  # type: ignore[attr-defined]
            return response

    def _examples_signature(self, servable: Servable, spec: Any, method: str) -> tuple[str, Any]:
        """GetClassificationSignatureDef / GetRegressionSignatureDef (classifier.cc, regressor.cc)."""
        name = _signature_key(spec)
        signature = servable.signature_defs.get(name)
        if signature is None:
            raise InvalidInputError(f"No signature was found with the name: {name}")
        if self.settings.method_name_check and signature.method_name != method:
            kind = "classification" if method == CLASSIFY_METHOD else "regression"
            raise InvalidInputError(
                f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}"
            )
        return name, signature

    # -- MultiInference ---------------------------------------------------------------------------------

    def multi_inference(
        self, request: inference_pb2.MultiInferenceRequest, *, entrypoint: str = GRPC
    ) -> inference_pb2.MultiInferenceResponse:
        """TF Serving's MultiInference (multi_inference.cc): every task on the servable the first task's
        ModelSpec selects, all checked before any runs, each classify or regress on the same examples."""
        model_name = request.tasks[0].model_spec.name if request.tasks else ""
        with self._serving("MultiInference", model_name, entrypoint) as account:
            if not request.tasks:
                raise InvalidInputError("MultiInferenceRequest must contain at least one task")
            with self._acquire_spec(request.tasks[0].model_spec) as handle:
                plan = self._multi_inference_plan(request, handle.servable)
                examples = _serialized_examples(request.input, account)
                response = inference_pb2.MultiInferenceResponse()
                for task, name, signature in plan:
                    result = response.results.add()
                    outcome = task.run(handle.servable, name, signature, examples)
                    getattr(result, task.result_field).CopyFrom(outcome)
                    self._fill_spec(result.model_spec, handle, name)
                return response

    @staticmethod
    def _multi_inference_plan(request: Any, servable: Servable) -> list[tuple[_ExamplesTask, str, Any]]:
        plan = []
        model_name = ""
        seen: set[str] = set()
        for task in request.tasks:
            if not task.model_spec.name:
                raise InvalidInputError("Found ModelSpec with an empty model name.")
            if not model_name:
                model_name = task.model_spec.name
            elif task.model_spec.name != model_name:
                raise InvalidInputError(
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name."
                )
            name = _signature_key(task.model_spec)
            if name in seen:
                raise InvalidInputError(f"Duplicate evaluation of signature: {name}")
            seen.add(name)
            signature = servable.signature_defs.get(name)
            if signature is None:
                raise InvalidInputError(f"Requested signature not found in model graph: {name}")
            examples_task = _EXAMPLES_TASKS.get(task.method_name)
            if examples_task is None:
                raise UnimplementedError(f"Unsupported signature method_name: {task.method_name}")
            examples_task.check(signature)
            plan.append((examples_task, name, signature))
        return plan

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


def _check_aliases(sent: list[str], signature: Any) -> None:
    """VerifyRequestInputsSize and the alias check (predict_util.cc), with TF Serving's texts."""
    expected = list(signature.inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        extra = [a for a in sent if a not in signature.inputs]
        missing = [a for a in expected if a not in sent]
        raise InvalidInputError(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({_braces(sent)}) != len({_braces(expected)}). "
            f"Sent extra: {_braces(extra)}. Missing but required: {_braces(missing)}."
        )
    for alias in sorted(sent):
        if alias not in signature.inputs:
            raise InvalidInputError(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {_braces(expected)}."
            )


# -- Classify / Regress contracts (classifier.cc, regressor.cc, util.cc) -----------------------------------


def _check_classify_signature(signature: Any) -> None:
    """PreProcessClassification: one input named "inputs", one or two outputs, classes and/or scores."""
    if len(signature.inputs) != 1:
        raise InvalidInputError("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise InvalidInputError(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if _CLASSIFY_INPUTS not in signature.inputs:
        raise InvalidInputError(
            f'No classification inputs found in SignatureDef (expected "{_CLASSIFY_INPUTS}")'
        )
    if _CLASSIFY_CLASSES not in signature.outputs and _CLASSIFY_SCORES not in signature.outputs:
        raise InvalidInputError(
            "Expected classification signature outputs to contain at least one of "
            f'"{_CLASSIFY_CLASSES}" or "{_CLASSIFY_SCORES}".'
        )


def _check_regress_signature(signature: Any) -> None:
    """PreProcessRegression: one input named "inputs", one output named "outputs"."""
    if len(signature.inputs) != 1:
        raise InvalidInputError("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise InvalidInputError("Expected one output Tensor.")
    if _REGRESS_INPUTS not in signature.inputs:
        raise InvalidInputError(f'No regression inputs found in SignatureDef (expected "{_REGRESS_INPUTS}")')
    if _REGRESS_OUTPUTS not in signature.outputs:
        raise InvalidInputError(
            f'No regression outputs found in SignatureDef (expected "{_REGRESS_OUTPUTS}")'
        )


def _run_examples(
    servable: Servable, name: str, signature: Any, examples: npt.NDArray[Any], output_keys: list[str]
) -> Mapping[str, npt.NDArray[Any]]:
    # The declared dtype is not checked: TF Serving feeds the string tensor whatever the SignatureDef
    # says (its own half_plus_three declares DT_FLOAT for serialized examples), and TensorFlow decides.
    return servable.run(name, {_CLASSIFY_INPUTS: examples}, output_keys)


def _classify(servable: Servable, name: str, signature: Any, examples: npt.NDArray[Any]) -> Any:
    outputs = _run_examples(servable, name, signature, examples, _classify_outputs(signature))
    return _classification_result(outputs, len(examples))


def _regress(servable: Servable, name: str, signature: Any, examples: npt.NDArray[Any]) -> Any:
    outputs = _run_examples(servable, name, signature, examples, [_REGRESS_OUTPUTS])
    return _regression_result(outputs[_REGRESS_OUTPUTS], len(examples))


@dataclass(frozen=True)
class _ExamplesTask:
    """Classify or Regress: the SignatureDef check, the run that gives the result message, and the
    field of a MultiInference result that holds it."""

    check: Callable[[Any], None]
    run: Callable[[Servable, str, Any, npt.NDArray[Any]], Any]
    result_field: str


_EXAMPLES_TASKS: Final = {
    CLASSIFY_METHOD: _ExamplesTask(_check_classify_signature, _classify, "classification_result"),
    REGRESS_METHOD: _ExamplesTask(_check_regress_signature, _regress, "regression_result"),
}


def _classify_outputs(signature: Any) -> list[str]:
    return [key for key in (_CLASSIFY_CLASSES, _CLASSIFY_SCORES) if key in signature.outputs]


def _serialized_examples(model_input: Any, memory: RequestMemory) -> npt.NDArray[Any]:
    """InputToSerializedExampleTensor: one serialized tf.Example per example; with a context, the context's
    bytes followed by the example's, so the example's features win (protobuf's merge of concatenated
    messages). Their size (the context once per example) is charged to `memory` before serializing."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = model_input.example_list.examples
        _charge_examples(memory, 0, examples)
        serialized = [e.SerializeToString() for e in examples]
    elif kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        _charge_examples(memory, with_context.context.ByteSize(), with_context.examples)
        context = with_context.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in with_context.examples]
    else:
        serialized = []
    if not serialized:
        raise InvalidInputError("Input is empty.")  # TF Serving's text
    array = np.empty(len(serialized), dtype=object)
    array[:] = serialized
    return array


def _charge_examples(memory: RequestMemory, context_bytes: int, examples: Any) -> None:
    per_example = context_bytes + STRING_ELEMENT_BYTES
    memory.charge(sum(e.ByteSize() + per_example for e in examples), "the serialized examples")


def _check_classification_output(
    array: npt.NDArray[Any] | None, what: str, dtype: Any, dtype_enum_name: str, count: int
) -> None:
    if array is None:
        return
    if array.ndim != 2:
        raise InvalidInputError(
            f"Expected Tensor shape: [batch_size num_classes] but got {tensor_shape_string(array)}"
        )
    if array.dtype != dtype:
        raise InvalidInputError(f"Expected {what} Tensor of {dtype_enum_name}. Got: {data_type_name(array)}")
    if array.shape[0] != count:
        raise InvalidInputError(f"Expected {what} output batch size of {count}. Got: {array.shape[0]}")


def _classification_result(outputs: Mapping[str, npt.NDArray[Any]], count: int) -> Any:
    """PostProcessClassificationResult, with TF Serving's checks and texts."""
    classes = outputs.get(_CLASSIFY_CLASSES)
    scores = outputs.get(_CLASSIFY_SCORES)
    _check_classification_output(classes, "classes", np.object_, "DT_STRING", count)
    _check_classification_output(scores, "scores", np.float32, "DT_FLOAT", count)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidInputError(
            "Tensors class and score should match in dim_size(1). "
            f"Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    result = classification_pb2.ClassificationResult()
    for row in range(count):
        classification = result.classifications.add()
        for column in range(width):
            cls = classification.classes.add()
            if classes is not None:
                label = classes[row, column]
                cls.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                cls.score = float(scores[row, column])
    return result


def _regression_result(values: npt.NDArray[Any], count: int) -> Any:
    """PostProcessRegressionResult, with TF Serving's checks and texts."""
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise InvalidInputError(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{tensor_shape_string(values)}"
        )
    if values.shape[0] != count:
        raise InvalidInputError(
            f"Input batch size did not match output batch size: {count} vs. {values.shape[0]}"
        )
    if values.dtype != np.float32:
        raise InvalidInputError(f"Expected output Tensor of DT_FLOAT.  Got: {data_type_name(values)}")
    result = regression_pb2.RegressionResult()
    for value in values.reshape(count):
        result.regressions.add().value = float(value)
    return result
