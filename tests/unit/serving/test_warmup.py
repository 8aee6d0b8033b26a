"""Model warmup: TFRecord framing (sans I/O), replay before AVAILABLE, failures put the version in error."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from confserve.pf import WrapKey, encrypt_tree
from confserve.serving import (
    LoadError,
    ManagerSettings,
    ModelConfig,
    ModelManager,
    ModelStore,
    PlainOpener,
    ProtectedOpener,
    SavedModelLoader,
    State,
    WarmupLoader,
)
from confserve.serving._warmup import MAX_WARMUP_RECORDS, WARMUP_FILE, crc32c, split_tfrecords
from tests.unit.serving.gated import GatedLoader, GatedServable
from tests.unit.serving.models import model_tree


def predict_log(alias: str = "x", model: str = "recorded-name") -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.version.value = 99  # replay ignores the recorded version
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(np.ones((2, 4), np.float32)))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def examples_input() -> Any:
    example = tf.train.Example()
    example.features.feature["x"].float_list.value.extend([1.0, 2.0, 3.0, 4.0])
    model_input = classification_pb2.ClassificationRequest().input
    model_input.example_list.examples.append(example)
    return model_input


def classify_log() -> prediction_log_pb2.PredictionLog:
    request = classification_pb2.ClassificationRequest(input=examples_input())
    request.model_spec.signature_name = "classify"
    return prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))


def regress_log() -> prediction_log_pb2.PredictionLog:
    request = regression_pb2.RegressionRequest(input=examples_input())
    request.model_spec.signature_name = "regress"
    return prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=request))


def write_warmup(version_dir: Path, logs: list[Any]) -> Path:
    """What a model owner does: tf.io.TFRecordWriter into assets.extra/ of the version."""
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


# -- TFRecord framing ------------------------------------------------------------------------------------


def test_crc32c_known_answer() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value (RFC 3720, B.4)
    assert crc32c(b"") == 0


def test_split_reads_what_tensorflow_writes(tmp_path: Path) -> None:
    logs = [predict_log(), classify_log(), regress_log()]
    data = write_warmup(tmp_path, logs).read_bytes()
    assert split_tfrecords(data) == [log.SerializeToString() for log in logs]
    assert split_tfrecords(b"") == []


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d[:5], "truncated record header"),
        (lambda d: d[:-1], "truncated record at"),
        (lambda d: d[:8] + bytes([d[8] ^ 1]) + d[9:], "corrupt record length"),
        (lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:], "corrupt record data"),
    ],
)
def test_split_rejects_damaged_files(tmp_path: Path, mangle: Any, message: str) -> None:
    data = write_warmup(tmp_path, [predict_log()]).read_bytes()
    with pytest.raises(ValueError, match=message):
        split_tfrecords(mangle(data))


def test_split_rejects_too_many_records(tmp_path: Path) -> None:
    path = tmp_path / "many"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for _ in range(MAX_WARMUP_RECORDS + 1):
            writer.write(b"")
    data = path.read_bytes()
    assert len(split_tfrecords(data[: MAX_WARMUP_RECORDS * 16])) == MAX_WARMUP_RECORDS
    with pytest.raises(ValueError, match="more than 1000 warmup records"):
        split_tfrecords(data)


# -- replay ----------------------------------------------------------------------------------------------


def fake_version(tmp_path: Path, logs: list[Any] | None) -> Path:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    if logs is not None:
        write_warmup(version, logs)
    return version


def test_each_record_runs_against_the_version_before_it_serves(tmp_path: Path) -> None:
    servable = GatedServable(open_gate=True)
    logs = [predict_log(), predict_log()]
    logs[1].predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 2), np.float32)))
    version = fake_version(tmp_path, logs)
    loader = WarmupLoader(GatedLoader(servable), PlainOpener())
    assert loader.load("m", 1, str(version)) is servable
    assert servable.calls == 2


def test_no_warmup_file_means_no_warmup(tmp_path: Path) -> None:
    servable = GatedServable(open_gate=True)
    loader = WarmupLoader(GatedLoader(servable), PlainOpener())
    assert loader.load("m", 1, str(fake_version(tmp_path, None))) is servable
    assert servable.calls == 0


class CountingUnload(GatedLoader):
    unloaded = 0

    def unload(self, servable: GatedServable) -> None:
        self.unloaded += 1


def test_failed_warmup_fails_the_load_and_unloads(tmp_path: Path) -> None:
    inner = CountingUnload(GatedServable(open_gate=True))
    version = fake_version(tmp_path, [predict_log(alias="nope")])
    with pytest.raises(
        LoadError, match="model warmup failed: input tensor alias not found in signature: nope"
    ):
        WarmupLoader(inner, PlainOpener()).load("m", 1, str(version))
    assert inner.unloaded == 1


def test_unsupported_or_garbage_records_fail(tmp_path: Path) -> None:
    session_log = prediction_log_pb2.PredictionLog()
    session_log.session_run_log.SetInParent()
    version = fake_version(tmp_path, [session_log])
    with pytest.raises(LoadError, match="unsupported warmup record type session_run_log"):
        WarmupLoader(GatedLoader(GatedServable()), PlainOpener()).load("m", 1, str(version))
    (version / WARMUP_FILE).write_bytes(b"garbage")
    with pytest.raises(LoadError, match="model warmup failed: truncated record header"):
        WarmupLoader(GatedLoader(GatedServable()), PlainOpener()).load("m", 1, str(version))


# -- real, encrypted SavedModels ----------------------------------------------------------------------------


def test_encrypted_model_warms_up_and_a_bad_warmup_is_in_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = WrapKey.generate()
    plain = tmp_path / "plain"
    for name, logs in (("good", [predict_log(), classify_log(), regress_log()]), ("bad", [predict_log("z")])):
        shutil.copytree(model_tree() / "clf" / "1", plain / name / "1")
        write_warmup(plain / name / "1", logs)
        encrypt_tree(plain / name / "1", tmp_path / "enc" / name / "1", key)
    assert b"recorded-name" not in (tmp_path / "enc" / "good" / "1" / WARMUP_FILE).read_bytes()  # encrypted
    opener = ProtectedOpener(key)
    manager: ModelManager[Any] = ModelManager(
        WarmupLoader(SavedModelLoader(opener), opener), settings=ManagerSettings(max_load_retries=0)
    )
    models = [ModelConfig(name, str(tmp_path / "enc" / name)) for name in ("good", "bad")]
    with caplog.at_level(logging.INFO, logger="confserve.serving._warmup"):
        ModelStore(models, opener, manager).poll_once()
    assert [s.state for s in manager.model_status("good")] == [State.AVAILABLE]
    assert "model good version 1: warmed up with 3 record(s)" in caplog.text
    (bad,) = manager.model_status("bad")
    assert bad.state is State.END
    assert bad.error is not None
    assert bad.error.startswith("model warmup failed: input tensor alias not found in signature: z.")
    assert not manager.is_ready()
