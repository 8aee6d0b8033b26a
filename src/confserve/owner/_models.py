"""Models for confserve: example SavedModels, frozen-graph import, and encryption of versioned trees.

A model directory is TF Serving's base path: one numeric subdirectory per version, each a SavedModel
(`saved_model.pb`, `variables/`, `assets/`). TensorFlow is imported only inside the functions that need
it, so the rest of confserve starts without it.

Bound paths. The server opens `BASE/VERSION/FILE` where BASE is the model's base path as it appears in
its configuration (relative paths are relative to the server's working directory, as for Gramine's
encrypted mounts). `encrypt_model_tree` binds every file to `BIND_ROOT/VERSION/FILE`, BIND_ROOT being
that base path; the default is the output directory exactly as given.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from confserve import pf
from confserve.errors import ConfserveError, Status
from confserve.files import read_input
from confserve.tf_runtime import import_tensorflow

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DigitsModel",
    "ModelError",
    "SignatureInfo",
    "VersionInfo",
    "encrypt_model_tree",
    "import_frozen_graph",
    "inspect_model_tree",
    "load_digits_dataset",
    "make_digits_model",
    "make_resnet50_model",
]

_VERSION = re.compile(r"^[0-9]{1,18}$")  # TF Serving versions are int64 directory names
DIGITS_IMAGE_SHAPE: Final = (8, 8, 1)
RESNET_INPUT_SHAPE: Final = (224, 224, 3)
RESNET_CLASSES: Final = 1001  # the reference model's output: 1000 ImageNet classes + background


class ModelError(ConfserveError, status=Status.INVALID_ARGUMENT):
    """A model directory or model file that cannot be used."""


@dataclass(frozen=True, slots=True)
class DigitsModel:
    path: Path
    test_accuracy: float
    train_examples: int
    test_examples: int


def _version_dir(out: str | os.PathLike[str], version: int) -> Path:
    if version < 1:
        raise ModelError("model versions are positive integers")
    path = Path(out) / str(version)
    if path.exists():
        raise ModelError(f"{path} already exists; choose another --version or output directory")
    return path


def _quiet_tensorflow() -> Any:
    # TensorFlow is imported only where models are made, through the one quiet import.
    return import_tensorflow()


def load_digits_dataset(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images), scaled to [0, 1], split 80/20 reproducibly."""
    import numpy as np  # noqa: PLC0415
    from sklearn.datasets import load_digits  # noqa: PLC0415

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    labels = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(images))
    images, labels = images[order], labels[order]
    split = int(len(images) * 0.8)
    return images[:split], labels[:split], images[split:], labels[split:]


def _export(model: Any, path: Path, serve: Any) -> None:
    import keras  # noqa: PLC0415

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve)
    archive.write_out(str(path), verbose=False)


def make_digits_model(
    out: str | os.PathLike[str], *, version: int = 1, epochs: int = 15, seed: int = 0
) -> DigitsModel:
    """Train a small CNN on the digits and save it as `out/version`.

    Signature `serving_default`: input `image` float32 [N, 8, 8, 1] in [0, 1]; outputs `probabilities`
    float32 [N, 10] and `classes` int64 [N].
    """
    path = _version_dir(out, version)
    tf = _quiet_tensorflow()
    import keras  # noqa: PLC0415

    x_train, y_train, x_test, y_test = load_digits_dataset(seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(DIGITS_IMAGE_SHAPE),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)

    @tf.function(input_signature=[tf.TensorSpec([None, *DIGITS_IMAGE_SHAPE], tf.float32, name="image")])
    def serve(image: Any) -> dict[str, Any]:
        probabilities = model(image, training=False)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=1)}

    _export(model, path, serve)
    return DigitsModel(path, float(accuracy), len(x_train), len(x_test))


def make_resnet50_model(
    out: str | os.PathLike[str],
    *,
    version: int = 1,
    weights: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> Path:
    """ResNet-50 v1 with the reference model's signature: input `input` float32 [N, 224, 224, 3],
    output `predict` float32 [N, 1001]. Random weights unless `weights` names a Keras weights file."""
    path = _version_dir(out, version)
    tf = _quiet_tensorflow()
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(seed)
    model = keras.applications.ResNet50(weights=None, input_shape=RESNET_INPUT_SHAPE, classes=RESNET_CLASSES)
    if weights is not None:
        try:
            model.load_weights(os.fspath(weights))
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load weights from {os.fspath(weights)!r}: {e}") from None

    @tf.function(input_signature=[tf.TensorSpec([None, *RESNET_INPUT_SHAPE], tf.float32, name="input")])
    def serve(input: Any) -> dict[str, Any]:  # the reference model's input name
        return {"predict": model(input, training=False)}

    _export(model, path, serve)
    return path


def import_frozen_graph(
    graph_file: str | os.PathLike[str],
    *,
    inputs: Sequence[str],
    outputs: Sequence[str],
    out: str | os.PathLike[str],
    version: int = 1,
) -> Path:
    """Turn a frozen GraphDef into a SavedModel `out/version` whose `serving_default` signature takes
    the named input tensors and returns the named output tensors (names without the `:0`)."""
    if not inputs or not outputs:
        raise ModelError("name at least one input and one output tensor")
    path = _version_dir(out, version)
    tf = _quiet_tensorflow()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(read_input(graph_file))
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelError(
            f"{os.fspath(graph_file)!r} is not a frozen TensorFlow GraphDef: {type(e).__name__}"
        ) from None

    def _import() -> None:
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(_import, [])
    graph = wrapped.graph

    def _tensor(name: str) -> Any:
        try:
            return graph.get_tensor_by_name(name if ":" in name else f"{name}:0")
        except (KeyError, ValueError):
            raise ModelError(f"the graph has no tensor named {name!r}") from None

    feeds = [_tensor(n) for n in inputs]
    fetches = {n.split(":")[0]: _tensor(n) for n in outputs}
    pruned = wrapped.prune(feeds=feeds, fetches=fetches)
    specs = [
        tf.TensorSpec(t.shape, t.dtype, name=n.split(":")[0]) for n, t in zip(inputs, feeds, strict=True)
    ]

    module = tf.Module()
    module.pruned = pruned

    @tf.function(input_signature=specs)
    def serve(*args: Any) -> dict[str, Any]:
        result = module.pruned(*args)
        return {name: tf.identity(value, name=name) for name, value in result.items()}

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
    return path


# -- encryption and inspection -------------------------------------------------------------------------


def _versions(model_dir: Path) -> list[str]:
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir} is not a directory")
    versions = sorted((p.name for p in model_dir.iterdir() if p.is_dir() and _VERSION.match(p.name)), key=int)
    if not versions:
        raise ModelError(
            f"{model_dir} has no numeric version directories (expected {model_dir}/1/saved_model.pb)"
        )
    return versions


def encrypt_model_tree(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    key: pf.WrapKey,
    *,
    bind_root: str | None = None,
    format_version: int = pf.FORMAT_V1,
) -> list[pf.TreeEntry]:
    """Encrypt every file of every version of a model (saved_model.pb, variables/*, assets/* ...).

    Each file is bound to `bind_root/VERSION/FILE`; `bind_root` is the model's base path as the server
    will open it, by default `out_dir` as given. New versions may be added to an existing encrypted tree
    (a rollout); an existing version is never overwritten.
    """
    src = Path(model_dir)
    versions = _versions(src)
    for version in versions:
        if not (src / version / "saved_model.pb").is_file():
            raise ModelError(f"{src / version} is not a SavedModel (no saved_model.pb)")
        if pf.is_protected(src / version / "saved_model.pb"):
            raise ModelError(f"{src / version} is already encrypted")
    dst = Path(out_dir)
    existing = [v for v in versions if (dst / v).exists()]
    if existing:
        raise ModelError(f"{dst} already has version {existing[0]}; versions are never overwritten")
    root = os.fspath(out_dir) if bind_root is None else bind_root
    entries: list[pf.TreeEntry] = []
    for version in versions:
        # Each version appears at once: it is written under a name the server ignores (not a number)
        # and renamed into place, so a polling server never loads a half-written version.
        staging = dst / f".{version}.partial-{os.getpid()}"
        try:
            written = pf.encrypt_tree(
                src / version, staging, key, bind_root=f"{root}/{version}", format_version=format_version
            )
            os.rename(staging, dst / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        entries += [pf.TreeEntry(f"{version}/{e.relative_path}", e.bound_path, e.size) for e in written]
    return entries


@dataclass(frozen=True, slots=True)
class SignatureInfo:
    name: str
    method: str
    inputs: dict[
        str, tuple[str, tuple[int, ...] | None]
    ]  # alias -> (dtype, shape; -1 = any; None = unknown rank)
    outputs: dict[str, tuple[str, tuple[int, ...] | None]]


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    files: dict[str, bool]  # relative path -> encrypted?
    signatures: list[SignatureInfo] = field(default_factory=list)
    note: str = ""


def _tensor_infos(infos: Any) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    from confserve.tfs_protos import types_pb2  # noqa: PLC0415

    out: dict[str, tuple[str, tuple[int, ...] | None]] = {}
    for alias, info in sorted(infos.items()):
        dtype = types_pb2.DataType.Name(info.dtype).removeprefix("DT_").lower()
        shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
        out[alias] = (dtype, shape)
    return out


def _signatures(saved_model_pb: bytes) -> list[SignatureInfo]:
    # Reading the signatures needs TensorFlow's protos only, not its runtime.
    from confserve.tfs_protos import saved_model_pb2  # noqa: PLC0415

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(saved_model_pb)
    except Exception as e:
        raise ModelError(f"saved_model.pb is not a SavedModel protobuf: {type(e).__name__}") from None
    result: list[SignatureInfo] = []
    for meta in saved.meta_graphs:
        if "serve" not in meta.meta_info_def.tags:
            continue
        for name, sig in sorted(meta.signature_def.items()):
            if name.startswith("__"):
                continue
            result.append(
                SignatureInfo(name, sig.method_name, _tensor_infos(sig.inputs), _tensor_infos(sig.outputs))
            )
    return result


def inspect_model_tree(
    model_dir: str | os.PathLike[str], *, key: pf.WrapKey | None = None, bind_root: str | None = None
) -> list[VersionInfo]:
    """Versions, signatures and which files are encrypted. Encrypted signatures need the key (and the
    tree's bind root, default `model_dir` as given); nothing decrypted is written anywhere."""
    src = Path(model_dir)
    root = os.fspath(model_dir) if bind_root is None else bind_root
    infos: list[VersionInfo] = []
    for version in _versions(src):
        vdir = src / version
        files = {
            p.relative_to(vdir).as_posix(): pf.is_protected(p) for p in sorted(vdir.rglob("*")) if p.is_file()
        }
        pb = vdir / "saved_model.pb"
        if "saved_model.pb" not in files:
            infos.append(VersionInfo(int(version), files, note="no saved_model.pb"))
        elif not files["saved_model.pb"]:
            infos.append(VersionInfo(int(version), files, _signatures(read_input(pb))))
        elif key is None:
            infos.append(
                VersionInfo(int(version), files, note="encrypted: give the wrap key to see signatures")
            )
        else:
            plain = pf.read_protected(pb, key, bound_path=f"{root}/{version}/saved_model.pb")
            try:
                infos.append(VersionInfo(int(version), files, _signatures(bytes(plain))))
            finally:
                plain[:] = bytes(len(plain))
    return infos
