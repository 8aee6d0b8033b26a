"""Loading a TensorFlow SavedModel version entirely from memory, and running its signatures the way
TF Serving does.

Theory of operation (after TF Serving's SavedModelBundle: a session over the MetaGraph with the serving
tags, for TF1 and TF2 exports alike):

- Load. Every file of the version (saved_model.pb, variables/*, assets/*, ...) is read through the
  `FileOpener` (which may decrypt it) and written into TensorFlow's in-process `ram://` file system under a
  random prefix. The MetaGraphDef with exactly the configured tags (`--saved_model_tags`, default
  "serve") is imported into a fresh graph and `tf.compat.v1.Session`, whose variables are restored and
  whose init op (tables, assets) runs, all reading from ram://. The ram:// copy is deleted as soon as
  loading ends, whether it succeeded or not: no plaintext byte of the model is written to a real disk
  path, and TensorFlow is never given the host path. This loads TF1 graphs (Estimator exports that parse
  serialized tf.Example with ParseExample) that `tf.saved_model.load` refuses.
- Run. A signature is run by feeding its input tensor names and fetching its output tensor names, as
  TF Serving's `Session::Run`. Shapes are not checked against the SignatureDef: the graph's ops decide,
  so the classic half-plus-two ([-1, 1]) answers a [3] tensor, a scalar or a [2, 2] tensor as TF Serving
  does. The run goes through a session callable prepared once per (signature, inputs, outputs) and kept
  in a small LRU (`_CALLABLES_PER_VERSION`): the C API's callable has no Python-side feed checks and
  costs tens of microseconds per call (docs/server.md, "How a model runs").
- Errors. TensorFlow's errors become INVALID_ARGUMENT (InvalidArgumentError, OutOfRangeError),
  RESOURCE_EXHAUSTED or INTERNAL. TensorFlow's message can quote tensor values (a failed assertion prints
  its operands), so it reaches the peer only when its first line matches one of `_SAFE_MESSAGES`, forms
  that carry dtypes, shapes, counts and feature names and nothing else; otherwise the peer gets the
  error class and the signature name. The log gets the class only.

The SignatureDefs served by GetModelMetadata come from the MetaGraphDef in saved_model.pb (parsed from the
same in-memory bytes), exactly as TF Serving reports them. TensorFlow is imported here, lazily and quietly
(`confserve.tf_runtime`), on the first load.
"""

from __future__ import annotations

import logging
import posixpath
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from confserve.serving._errors import (
    ConfigError,
    InvalidInputError,
    LoadError,
    NotFoundError,
    ResourceExhaustedError,
    ServingError,
)
from confserve.serving._opener import FileOpener
from confserve.tf_runtime import import_tensorflow

__all__ = [
    "DEFAULT_SAVED_MODEL_TAGS",
    "SavedModelLoader",
    "SavedModelServable",
    "parse_saved_model_tags",
    "session_callable",
    "set_tensorflow_threads",
]

_log = logging.getLogger(__name__)
_SAVED_MODEL_PB = "saved_model.pb"
# tensorflow/cc/saved_model/tag_constants.h kSavedModelTagServe: TF Serving's --saved_model_tags default.
DEFAULT_SAVED_MODEL_TAGS: Final = ("serve",)
# Prepared callables kept per loaded version. A client chooses the (signature, output_filter) pair, so
# the cache is bounded; 32 covers every signature of ordinary models with room for a few output filters.
_CALLABLES_PER_VERSION: Final = 32
# TensorFlow error classes whose status we keep; every other one is INTERNAL.
_OP_ERRORS: Final[dict[str, type[ServingError]]] = {
    "InvalidArgumentError": InvalidInputError,
    "OutOfRangeError": InvalidInputError,
    "ResourceExhaustedError": ResourceExhaustedError,
}
_DIMS = r"\[[0-9,]*\]"
_NAME = r"[A-Za-z0-9_./:-]+"
# First lines of TensorFlow error messages that name only dtypes, shapes, counts and feature names, never
# a value. Anything else is withheld. Sources: tensorflow/core/common_runtime (argument dtype checks),
# kernels/cwise_ops_common.cc (broadcast), kernels/matmul_op_impl.h, kernels/reshape_op.h,
# core/util/example_proto_fast_parsing.cc (ParseExample).
_SAFE_MESSAGES: Final = tuple(
    re.compile(pattern)
    for pattern in (
        r"Expects arg\[\d+\] to be \w+ but \w+ is provided",
        r"Type mismatch: actual \w+ vs\. expect \w+",
        rf"Incompatible shapes: {_DIMS} vs\. {_DIMS}",
        rf"Matrix size-incompatible: In\[0\]: {_DIMS}, In\[1\]: {_DIMS}",
        rf"In\[0\] and In\[1\] has different ndims: {_DIMS} vs\. {_DIMS}",
        r"In\[0\] ndims must be >= 2: \d+",
        rf"In\[[01]\] is not a matrix(\. Instead it has shape {_DIMS})?",
        r"Input to reshape is a tensor with \d+ values, but the requested shape has \d+",
        r"Input to reshape is a tensor with \d+ values, but the requested shape requires a multiple of \d+",
        rf"Name: <unknown>, Feature: {_NAME} \(data type: \w+\) is required but could not be found\.",
        rf"Name: <unknown>, Key: {_NAME}, Index: \d+\.  Number of \w+ values != expected\.  "
        rf"Values size: \d+ but output shape: {_DIMS}",
        rf"Name: <unknown>, Key: {_NAME}, Index: \d+\.  Data types don't match\. "
        r"Data type: \w+ but expected type: \w+",
    )
)


def _tf() -> Any:
    # Lazy, and quiet: only processes that run models pay for TensorFlow, and its start-up logging stays
    # off the terminal (see confserve.tf_runtime).
    return import_tensorflow()


def parse_saved_model_tags(value: str) -> tuple[str, ...]:
    """TF Serving's --saved_model_tags: a comma-separated set of MetaGraphDef tags ("" means "serve")."""
    tags = tuple(sorted({tag.strip() for tag in value.split(",") if tag.strip()}))
    return tags or DEFAULT_SAVED_MODEL_TAGS


def set_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """TF Serving's --tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism (0: TensorFlow
    chooses) for TensorFlow's eager context. Call before any model loads: TensorFlow fixes its thread pools
    when its runtime starts. Sessions get the same numbers in their ConfigProto (`SavedModelLoader`)."""
    if intra_op == 0 and inter_op == 0:
        return
    threading_config = _tf().config.threading
    try:
        if intra_op:
            threading_config.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            threading_config.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        raise ConfigError(
            "TensorFlow's thread pools already exist; set the parallelism before loading any model"
        ) from None
    _log.info("TensorFlow threads: intra-op %d, inter-op %d", intra_op, inter_op)


def session_callable(session: Any, feeds: Sequence[str], fetches: Sequence[str]) -> Callable[..., list[Any]]:
    """A callable that feeds `feeds` (tensor names, in order) and returns the `fetches` as numpy values.

    The one use of a private TensorFlow method (`Session._make_callable_from_options`): the public
    `Session.make_callable` and `Session.run` check fed shapes against the graph's static shapes in Python,
    which TF Serving's C++ `Session::Run` does not. tests/unit/serving/test_savedmodel.py pins the
    behaviour relied on (shapes left to the ops, TensorFlow's dtype errors, strings in and out).
    """
    from tensorflow.core.protobuf import config_pb2  # noqa: PLC0415  (TensorFlow is imported by now)

    options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
    call: Callable[..., list[Any]] = session._make_callable_from_options(options)
    return call


def _feed_and_fetch(session: Any, feeds: list[str], fetches: list[str]) -> Callable[..., list[Any]]:
    """`session_callable`, except that a fetched tensor that is also fed is answered with the fed value
    (a session callable refuses to both feed and fetch one tensor; Session::Run returns the fed value)."""
    fed = {name: index for index, name in enumerate(feeds)}
    computed = [name for name in dict.fromkeys(fetches) if name not in fed]
    call = session_callable(session, feeds, computed) if computed else None

    def run(*args: Any) -> list[Any]:
        values = dict(zip(computed, call(*args), strict=True)) if call is not None else {}
        return [args[fed[name]] if name in fed else values[name] for name in fetches]

    return run


def _error_for(exc: Any, signature_name: str) -> ServingError:
    kind = "InvalidArgumentError" if isinstance(exc, UnicodeDecodeError) else exc.__class__.__name__
    first_line = str(getattr(exc, "message", "")).split("\n", 1)[0].strip()
    if any(pattern.fullmatch(first_line) for pattern in _SAFE_MESSAGES):
        detail = first_line
    else:
        detail = "TensorFlow's message is withheld, as it may quote tensor values"
    error = _OP_ERRORS.get(kind, ServingError)
    return error(f"{kind} running signature '{signature_name}': {detail}")


class SavedModelServable:
    """One loaded version: its SignatureDefs (protos) and a session that runs them on numpy arrays."""

    def __init__(self, model: str, version: int, signature_defs: Mapping[str, Any], session: Any) -> None:
        self.model = model
        self.version = version
        self.signature_defs = signature_defs
        self._session = session
        self._lock = threading.Lock()
        self._callables: OrderedDict[tuple[str, tuple[str, ...], tuple[str, ...]], Callable[..., list[Any]]]
        self._callables = OrderedDict()

    def run(
        self, signature_name: str, inputs: Mapping[str, npt.NDArray[Any]], output_keys: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]:
        """Feed `inputs` (by signature alias) and fetch `output_keys`; shapes are left to the graph."""
        tf = _tf()
        signature = self.signature_defs.get(signature_name)
        if signature is None:
            raise NotFoundError(f'Serving signature key "{signature_name}" not found.')
        aliases = tuple(sorted(inputs))
        outputs = tuple(output_keys)
        try:
            call = self._callable(signature_name, signature, aliases, outputs)
            values = call(*(inputs[alias] for alias in aliases))
        except (tf.errors.OpError, UnicodeDecodeError) as exc:
            # A UnicodeDecodeError is TensorFlow failing to decode its own message, which then quoted
            # request bytes (ParseExample on a malformed tf.Example): an invalid argument, withheld.
            _log.warning(
                "model %s version %d: %s failed: %s",
                self.model,
                self.version,
                signature_name,
                exc.__class__.__name__,
            )
            raise _error_for(exc, signature_name) from None
        return {key: np.asarray(value) for key, value in zip(outputs, values, strict=True)}

    def _callable(
        self, name: str, signature: Any, aliases: tuple[str, ...], outputs: tuple[str, ...]
    ) -> Callable[..., list[Any]]:
        key = (name, aliases, outputs)
        with self._lock:
            call = self._callables.get(key)
            if call is not None:
                self._callables.move_to_end(key)
                return call
            session = self._session
        if session is None:
            raise ServingError("this model version is unloaded")
        for alias in aliases:
            if alias not in signature.inputs:
                raise InvalidInputError(f"input tensor alias not found in signature: {alias}")
        for alias in outputs:
            if alias not in signature.outputs:
                raise InvalidInputError(f"output tensor alias not found in signature: {alias}")
        call = _feed_and_fetch(
            session,
            [signature.inputs[alias].name for alias in aliases],
            [signature.outputs[alias].name for alias in outputs],
        )
        with self._lock:
            self._callables[key] = call
            while len(self._callables) > _CALLABLES_PER_VERSION:
                self._callables.popitem(last=False)
        return call

    def close(self) -> None:
        """Release the session (TensorFlow frees the variables and the graph)."""
        with self._lock:
            session, self._session = self._session, None
            self._callables.clear()
        if session is not None:
            session.close()


class SavedModelLoader:
    """`Loader` for TensorFlow SavedModels read through a `FileOpener`.

    `tags` selects the MetaGraphDef (TF Serving's --saved_model_tags); the thread counts go into each
    session's ConfigProto (0: TensorFlow chooses).
    """

    def __init__(
        self,
        opener: FileOpener,
        *,
        tags: Sequence[str] = DEFAULT_SAVED_MODEL_TAGS,
        intra_op_parallelism: int = 0,
        inter_op_parallelism: int = 0,
    ) -> None:
        self._opener = opener
        self._tags = tuple(tags)
        self._intra_op = intra_op_parallelism
        self._inter_op = inter_op_parallelism

    def load(self, model: str, version: int, path: str) -> SavedModelServable:
        try:
            files = self._opener.list_files(path)
        except OSError as exc:
            raise LoadError(f"cannot list version directory ({exc.__class__.__name__})") from None
        if _SAVED_MODEL_PB not in files:
            raise LoadError("version directory has no saved_model.pb")
        contents = {rel: self._read(path, rel) for rel in files}
        signature_defs = self._signature_defs(contents[_SAVED_MODEL_PB])
        session = self._load_from_ram(contents)
        return SavedModelServable(model, version, signature_defs, session)

    def unload(self, servable: SavedModelServable) -> None:
        servable.close()

    def _read(self, root: str, rel: str) -> bytes:
        try:
            return self._opener.read_bytes(posixpath.join(root, rel))
        except LoadError:  # the opener's own refusal (a release gate) says why
            raise
        except Exception as exc:
            _log.warning("cannot read model file %s: %s", rel, exc.__class__.__name__)
            raise LoadError(f"cannot read model file {rel} ({exc.__class__.__name__})") from None

    def _signature_defs(self, pb: bytes) -> Mapping[str, Any]:
        _tf()
        from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415

        saved_model = saved_model_pb2.SavedModel()
        try:
            saved_model.ParseFromString(pb)
        except Exception:
            raise LoadError("saved_model.pb is not a valid SavedModel") from None
        for meta_graph in saved_model.meta_graphs:
            if set(self._tags) == set(meta_graph.meta_info_def.tags):
                return dict(meta_graph.signature_def)
        raise LoadError(f"SavedModel has no MetaGraph with tags {sorted(self._tags)}")

    def _load_from_ram(self, contents: Mapping[str, bytes]) -> Any:
        tf = _tf()
        root = f"ram://confserve-{secrets.token_hex(16)}"
        try:
            for rel, data in contents.items():
                parent = posixpath.dirname(rel)
                if parent:
                    tf.io.gfile.makedirs(f"{root}/{parent}")
                with tf.io.gfile.GFile(f"{root}/{rel}", "wb") as out:
                    out.write(data)
            return self._new_session(tf, root)
        finally:
            if tf.io.gfile.exists(root):
                tf.io.gfile.rmtree(root)

    def _new_session(self, tf: Any, export_dir: str) -> Any:
        v1 = tf.compat.v1
        config = v1.ConfigProto(
            intra_op_parallelism_threads=self._intra_op,
            inter_op_parallelism_threads=self._inter_op,
            allow_soft_placement=True,  # a graph pinned to a GPU still runs on a CPU-only host
        )
        session = v1.Session(graph=tf.Graph(), config=config)
        try:
            v1.saved_model.loader.load(session, list(self._tags), export_dir)
        except Exception as exc:
            session.close()
            _log.warning("TensorFlow could not load a SavedModel: %s", exc.__class__.__name__)
            raise LoadError(f"TensorFlow could not load the SavedModel ({exc.__class__.__name__})") from None
        return session
