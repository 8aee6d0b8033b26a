"""The SavedModel loader: whole versions are loaded from memory, never from a host path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from confserve.serving import InvalidInputError, LoadError, NotFoundError, PlainOpener, SavedModelLoader
from tests.unit.serving.models import expected_probabilities


class MemoryOpener:
    """Serves a model tree from a dict under a path that does not exist on disk."""

    def __init__(self, source: Path, prefix: str) -> None:
        opener = PlainOpener()
        self.prefix = prefix
        self.files = {rel: opener.read_bytes(str(source / rel)) for rel in opener.list_files(str(source))}
        self.reads: list[str] = []

    def read_bytes(self, path: str) -> bytes:
        self.reads.append(path)
        return self.files[path.removeprefix(self.prefix + "/")]

    def list_files(self, directory: str) -> list[str]:
        if directory != self.prefix:
            raise FileNotFoundError(directory)
        return sorted(self.files)


def ram_entries() -> list[str]:
    import tensorflow as tf

    return list(tf.io.gfile.glob("ram://confserve-*"))


def test_loads_from_memory_only(models_root: Path) -> None:
    opener = MemoryOpener(models_root / "clf" / "1", "/does/not/exist/clf/1")
    loader = SavedModelLoader(opener)
    servable = loader.load("clf", 1, "/does/not/exist/clf/1")
    assert not Path("/does/not/exist").exists()
    assert sorted(opener.reads) == sorted(f"/does/not/exist/clf/1/{rel}" for rel in opener.files)
    assert ram_entries() == []  # the in-memory copy is gone once loaded
    # As in TF Serving's metadata, the init op's entry is listed too; running it fails in TensorFlow.
    assert set(servable.signature_defs) == {
        "serving_default",
        "classify",
        "regress",
        "strings",
        "__saved_model_init_op",
    }
    with pytest.raises(NotFoundError):
        servable.run("nope", {}, [])
    with pytest.raises(InvalidInputError, match="running signature '__saved_model_init_op'"):
        servable.run("__saved_model_init_op", {}, ["__saved_model_init_op"])
    assert servable.signature_defs["classify"].method_name == "tensorflow/serving/classify"
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    out = servable.run("serving_default", {"x": x}, ["probabilities"])
    np.testing.assert_allclose(out["probabilities"], expected_probabilities(x), rtol=1e-6)
    loader.unload(servable)


def test_missing_saved_model_pb(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "other.txt").write_bytes(b"x")
    with pytest.raises(LoadError, match=r"no saved_model\.pb"):
        SavedModelLoader(PlainOpener()).load("m", 1, str(tmp_path / "1"))


def test_unlistable_directory(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"cannot list version directory \(FileNotFoundError\)"):
        SavedModelLoader(PlainOpener()).load("m", 1, str(tmp_path / "nope"))


def test_garbage_saved_model_pb(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"\xff\xff\xff not a proto")
    with pytest.raises(LoadError, match="not a valid SavedModel"):
        SavedModelLoader(PlainOpener()).load("m", 1, str(tmp_path / "1"))


def test_wrong_tags(models_root: Path) -> None:
    loader = SavedModelLoader(PlainOpener(), tags=("train",))
    with pytest.raises(LoadError, match=r"no MetaGraph with tags \['train'\]"):
        loader.load("clf", 1, str(models_root / "clf" / "1"))


def test_truncated_variables_fail_and_leave_nothing_in_ram(models_root: Path) -> None:
    opener = MemoryOpener(models_root / "clf" / "1", "/mem/clf/1")
    opener.files["variables/variables.index"] = b"truncated"
    with pytest.raises(LoadError, match="TensorFlow could not load the SavedModel"):
        SavedModelLoader(opener).load("clf", 1, "/mem/clf/1")
    assert ram_entries() == []


def test_read_failure_is_reported_without_detail(models_root: Path) -> None:
    class Failing(MemoryOpener):
        def read_bytes(self, path: str) -> bytes:
            raise ValueError("secret key material 00112233")

    opener = Failing(models_root / "clf" / "1", "/mem/clf/1")
    with pytest.raises(LoadError) as info:
        SavedModelLoader(opener).load("clf", 1, "/mem/clf/1")
    assert str(info.value) == "cannot read model file fingerprint.pb (ValueError)"


def test_assets_are_read_during_load_only(tmp_path: Path) -> None:
    """A vocabulary asset (lookup table) works after the ram:// copy is gone."""
    import tensorflow as tf

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("zero\none\ntwo\n")

    class Lookup(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            initializer = tf.lookup.TextFileInitializer(
                str(vocab),
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            )
            self.table = tf.lookup.StaticHashTable(initializer, default_value=-1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def serve(self, words: object) -> dict[str, object]:
            return {"ids": self.table.lookup(words)}

    module = Lookup()
    tf.saved_model.save(module, str(tmp_path / "m" / "1"), signatures={"serving_default": module.serve})
    vocab.unlink()  # only the SavedModel's own assets/ copy remains
    opener = MemoryOpener(tmp_path / "m" / "1", "/mem/m/1")
    assert any(rel.startswith("assets/") for rel in opener.files)
    servable = SavedModelLoader(opener).load("m", 1, "/mem/m/1")
    assert ram_entries() == []
    words = np.array([b"two", b"zero", b"nine"], dtype=object)
    assert servable.run("serving_default", {"words": words}, ["ids"])["ids"].tolist() == [2, 0, -1]


# -- TF1 graphs, run as TF Serving runs them (a session over the MetaGraph) --------------------------------


def _tf1_half_plus_two(export_dir: Path, *, extra_tags: tuple[str, ...] = ()) -> None:
    """A TF1 graph export in the style of TF Serving's saved_model_half_plus_two: serialized tf.Example ->
    ParseExample -> x [-1, 1] -> y = 0.5 x + 2, plus an assertion that quotes its operand on failure. With
    `extra_tags`, a second MetaGraph (tags serve + extra) whose default signature computes y = 0.5 x + 3."""
    import tensorflow as tf

    v1 = tf.compat.v1
    info = v1.saved_model.utils.build_tensor_info
    build = v1.saved_model.signature_def_utils.build_signature_def
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as session:
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(2.0, name="b")
        c = v1.Variable(3.0, name="c")
        serialized = v1.placeholder(tf.string, shape=[None], name="tf_example")
        parsed = v1.io.parse_example(serialized, {"x": v1.io.FixedLenFeature([1], tf.float32)})
        x = tf.identity(parsed["x"], name="x")
        y = tf.identity(a * x + b, name="y")
        y3 = tf.identity(a * x + c, name="y3")
        with tf.control_dependencies([v1.assert_positive(x, message="x must be positive")]):
            checked = tf.identity(x, name="checked")
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(str(export_dir))
        builder.add_meta_graph_and_variables(
            session,
            ["serve"],
            signature_def_map={
                "serving_default": build({"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict"),
                "regress_x_to_y": build(
                    {"inputs": info(serialized)}, {"outputs": info(y)}, "tensorflow/serving/regress"
                ),
                "checked": build({"x": info(x)}, {"y": info(checked)}, "tensorflow/serving/predict"),
            },
        )
        if extra_tags:
            builder.add_meta_graph(
                ["serve", *extra_tags],
                signature_def_map={
                    "serving_default": build({"x": info(x)}, {"y": info(y3)}, "tensorflow/serving/predict")
                },
            )
        builder.save()


@pytest.fixture(scope="module")
def tf1_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tf1") / "1"
    _tf1_half_plus_two(path, extra_tags=("custom",))
    return path


def _serialized(*values: float) -> Any:
    from tensorflow.core.example import example_pb2

    examples = []
    for value in values:
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(value)
        examples.append(example.SerializeToString())
    array = np.empty(len(examples), dtype=object)
    array[:] = examples
    return array


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (np.array([1.0, 2.0, 5.0], np.float32), [2.5, 3.0, 4.5]),  # [3] against the declared [-1, 1]
        (np.float32(2.0), 3.0),  # a scalar
        (np.array([[1, 2], [3, 4]], np.float32), [[2.5, 3.0], [3.5, 4.0]]),
        (np.array([[2.0]], np.float32), [[3.0]]),
    ],
)
def test_tf1_graph_runs_any_shape_the_ops_accept(tf1_model: Path, x: Any, y: Any) -> None:
    """TF Serving feeds the tensor to the graph (Session::Run) and the ops decide: the shapes TF Serving's
    half-plus-two tests and REST guide send are answered, not refused against the SignatureDef's shape."""
    opener = MemoryOpener(tf1_model, "/mem/tf1/1")
    servable = SavedModelLoader(opener).load("tf1", 1, "/mem/tf1/1")
    assert ram_entries() == []
    assert servable.run("serving_default", {"x": x}, ["y"])["y"].tolist() == y


def test_tf1_parse_example_signature(tf1_model: Path) -> None:
    """An Estimator-style TF1 graph (ParseExample on serialized tf.Example), which tf.saved_model.load
    cannot load, is served from a session."""
    servable = SavedModelLoader(PlainOpener()).load("tf1", 1, str(tf1_model))
    out = servable.run("regress_x_to_y", {"inputs": _serialized(2.0, 4.0)}, ["outputs"])
    assert out["outputs"].tolist() == [[3.0], [4.0]]
    with pytest.raises(InvalidInputError, match=r"Feature: x \(data type: float\) is required"):
        servable.run("regress_x_to_y", {"inputs": np.array([b""], dtype=object)}, ["outputs"])
    # Garbage bytes: TensorFlow's message quotes them (and cannot even decode itself): withheld.
    with pytest.raises(InvalidInputError, match="withheld") as info:
        servable.run("regress_x_to_y", {"inputs": np.array([b"\xff\xfe secret"], dtype=object)}, ["outputs"])
    assert "secret" not in str(info.value)


def test_saved_model_tags_select_the_meta_graph(tf1_model: Path) -> None:
    from confserve.serving import parse_saved_model_tags

    assert parse_saved_model_tags("") == ("serve",)
    assert parse_saved_model_tags(" serve , custom,serve") == ("custom", "serve")
    tagged = SavedModelLoader(PlainOpener(), tags=parse_saved_model_tags("serve,custom"))
    servable = tagged.load("tf1", 1, str(tf1_model))
    assert set(servable.signature_defs) == {"serving_default"}
    assert servable.run("serving_default", {"x": np.float32(2.0)}, ["y"])["y"].tolist() == 4.0


def test_error_messages_that_may_quote_values_are_withheld(
    tf1_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    servable = SavedModelLoader(PlainOpener()).load("tf1", 1, str(tf1_model))
    x = np.array([[-7.25]], np.float32)
    with pytest.raises(InvalidInputError) as info:
        servable.run("checked", {"x": x}, ["y"])
    message = str(info.value)
    assert message == (
        "InvalidArgumentError running signature 'checked': "
        "TensorFlow's message is withheld, as it may quote tensor values"
    )
    assert "7.25" not in caplog.text
    assert "InvalidArgumentError" in caplog.text


def test_session_callable_pins_tensorflow_behaviour(tf1_model: Path) -> None:
    """The private TensorFlow method behind `session_callable` keeps doing what serving relies on."""
    import tensorflow as tf

    from confserve.serving._savedmodel import session_callable

    servable = SavedModelLoader(PlainOpener()).load("tf1", 1, str(tf1_model))
    session = servable._session
    call = session_callable(session, ["x:0"], ["y:0", "y3:0"])
    y, y3 = call(np.array([1.0, 3.0], np.float32))  # no Python-side check against x's shape (None, 1)
    assert y.tolist() == [2.5, 3.5]
    assert y3.tolist() == [3.5, 4.5]
    with pytest.raises(tf.errors.InvalidArgumentError):
        call(np.array([1.0], np.float64))  # a wrong dtype is TensorFlow's InvalidArgumentError
    with pytest.raises(tf.errors.InvalidArgumentError, match="both fed and fetched"):
        session_callable(session, ["x:0"], ["x:0"])  # why SavedModelServable answers such fetches itself
    strings = session_callable(session, ["tf_example:0"], ["y:0"])
    (from_examples,) = strings(_serialized(1.0))  # bytes in, as an object array
    assert from_examples.tolist() == [[2.5]]
    # The public API checks shapes in Python, which is why it is not used.
    with pytest.raises(ValueError, match="Cannot feed value of shape"):
        session.run("y:0", {"x:0": np.array([1.0, 3.0], np.float32)})


def test_an_output_that_is_an_input_returns_the_fed_value(tf1_model: Path) -> None:
    servable = SavedModelLoader(PlainOpener()).load("tf1", 1, str(tf1_model))
    echo = servable.signature_defs["serving_default"].__class__()
    echo.CopyFrom(servable.signature_defs["serving_default"])
    echo.outputs["x_again"].CopyFrom(echo.inputs["x"])
    servable.signature_defs = {**servable.signature_defs, "echo": echo}
    out = servable.run("echo", {"x": np.array([[4.0]], np.float32)}, ["x_again", "y", "x_again"])
    assert out["x_again"].tolist() == [[4.0]]
    assert out["y"].tolist() == [[4.0]]
    only = servable.run("echo", {"x": np.array([[1.0]], np.float32)}, ["x_again"])
    assert only["x_again"].tolist() == [[1.0]]


def test_unload_closes_the_session_and_bounds_callables(tf1_model: Path) -> None:
    from confserve.serving import ServingError
    from confserve.serving._savedmodel import _CALLABLES_PER_VERSION

    loader = SavedModelLoader(PlainOpener())
    servable = loader.load("tf1", 1, str(tf1_model))
    x = np.array([[1.0]], np.float32)
    for _ in range(3):
        servable.run("serving_default", {"x": x}, ["y"])
    assert len(servable._callables) == 1  # prepared once, reused
    servable.signature_defs = dict(servable.signature_defs)
    for i in range(_CALLABLES_PER_VERSION + 5):
        name = f"alias_{i}"
        servable.signature_defs[name] = servable.signature_defs["serving_default"]
        servable.run(name, {"x": x}, ["y"])
    assert len(servable._callables) == _CALLABLES_PER_VERSION
    loader.unload(servable)
    with pytest.raises(ServingError, match="unloaded"):
        servable.run("serving_default", {"x": x}, ["y"])
