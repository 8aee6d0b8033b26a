"""Loading a TensorFlow SavedModel version entirely from memory.

Every file of the version (saved_model.pb, variables/*, assets/*, ...) is read through the `FileOpener`
(which may decrypt it) and written into TensorFlow's in-process `ram://` file system under a random prefix.
`tf.saved_model.load` reads it from there, and the ram:// copy is deleted as soon as loading ends, whether
it succeeded or not. No plaintext byte of the model is written to a real disk path, and TensorFlow is never
given the host path. TensorFlow is imported here, lazily and quietly (`confserve.tf_runtime`), on the
first load.

The SignatureDefs served by GetModelMetadata and used for input validation come from the MetaGraphDef in
saved_model.pb (parsed from the same in-memory bytes), exactly as TF Serving reports them.
"""

from __future__ import annotations

import logging
import posixpath
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

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

__all__ = ["SavedModelLoader", "SavedModelServable", "set_tensorflow_threads"]

_log = logging.getLogger(__name__)
_SAVED_MODEL_PB = "saved_model.pb"
_SERVE_TAG = "serve"
# TensorFlow error classes whose status we keep; every other one is INTERNAL.
_OP_ERRORS: dict[str, type[ServingError]] = {
    "InvalidArgumentError": InvalidInputError,
    "OutOfRangeError": InvalidInputError,
    "ResourceExhaustedError": ResourceExhaustedError,
}


def _tf() -> Any:
    # Lazy, and quiet: only processes that run models pay for TensorFlow, and its start-up logging stays
    # off the terminal (see confserve.tf_runtime).
    return import_tensorflow()


def set_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """TF Serving's --tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism (0: TensorFlow
    chooses). Call before any model loads: TensorFlow fixes its thread pools when its runtime starts."""
    if intra_op == 0 and inter_op == 0:
        return
    threading = _tf().config.threading
    try:
        if intra_op:
            threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        raise ConfigError(
            "TensorFlow's thread pools already exist; set the parallelism before loading any model"
        ) from None
    _log.info("TensorFlow threads: intra-op %d, inter-op %d", intra_op, inter_op)


class SavedModelServable:
    """One loaded version: its SignatureDefs (protos) and a way to run a signature on numpy arrays."""

    def __init__(self, model: str, version: int, signature_defs: Mapping[str, Any], loaded: Any) -> None:
        self.model = model
        self.version = version
        self.signature_defs = signature_defs
        self._loaded = loaded

    def run(
        self, signature_name: str, inputs: Mapping[str, npt.NDArray[Any]], output_keys: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]:
        tf = _tf()
        function = self._loaded.signatures.get(signature_name)
        if function is None:  # e.g. "__saved_model_init_op": listed in metadata, not callable
            raise NotFoundError(f'Serving signature key "{signature_name}" not found.')
        try:
            feeds = {key: tf.constant(value) for key, value in inputs.items()}
            outputs = function(**feeds)
            return {key: np.asarray(outputs[key].numpy()) for key in output_keys}
        except tf.errors.OpError as exc:
            # TensorFlow's message can quote tensor values (assertions, lookups): report only its class.
            kind = exc.__class__.__name__
            _log.warning("model %s version %d: %s failed: %s", self.model, self.version, signature_name, kind)
            error = _OP_ERRORS.get(kind, ServingError)
            raise error(f"model execution failed ({kind})") from None


class SavedModelLoader:
    """`Loader` for TensorFlow SavedModels read through a `FileOpener`."""

    def __init__(self, opener: FileOpener, *, tags: Sequence[str] = (_SERVE_TAG,)) -> None:
        self._opener = opener
        self._tags = tuple(tags)

    def load(self, model: str, version: int, path: str) -> SavedModelServable:
        try:
            files = self._opener.list_files(path)
        except OSError as exc:
            raise LoadError(f"cannot list version directory ({exc.__class__.__name__})") from None
        if _SAVED_MODEL_PB not in files:
            raise LoadError("version directory has no saved_model.pb")
        contents = {rel: self._read(path, rel) for rel in files}
        signature_defs = self._signature_defs(contents[_SAVED_MODEL_PB])
        loaded = self._load_from_ram(contents)
        return SavedModelServable(model, version, signature_defs, loaded)

    def unload(self, servable: SavedModelServable) -> None:
        # Dropping the last reference lets TensorFlow free the variables and functions.
        servable._loaded = None

    def _read(self, root: str, rel: str) -> bytes:
        try:
            return self._opener.read_bytes(posixpath.join(root, rel))
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
            try:
                return tf.saved_model.load(root, tags=list(self._tags))
            except Exception as exc:
                _log.warning("TensorFlow could not load a SavedModel: %s", exc.__class__.__name__)
                raise LoadError(
                    f"TensorFlow could not load the SavedModel ({exc.__class__.__name__})"
                ) from None
        finally:
            if tf.io.gfile.exists(root):
                tf.io.gfile.rmtree(root)
