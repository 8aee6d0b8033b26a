"""The quiet import: what a guarded module writes to file descriptor 2 while it imports never reaches the
real stderr; it is logged at DEBUG, or carried by the error if the import fails; fd 2 is the same file
afterwards either way. Fake packages stand in for TensorFlow (they write with os.write, as absl does);
tests/integration/test_quiet_tf.py checks the real TensorFlow and the real commands."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from types import ModuleType

import pytest

from confserve import tf_runtime
from confserve.tf_runtime import (
    LOG_LEVEL_VARIABLE,
    TensorFlowImportError,
    import_tensorflow,
    install_import_guard,
)

_names = count()


def _fd2_identity() -> tuple[int, int]:
    status = os.fstat(2)
    return status.st_dev, status.st_ino


@pytest.fixture
def make_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a top-level package with the given __init__.py body, guard it, return its (unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def make(body: str) -> str:
        name = f"quiet_fake_{os.getpid()}_{next(_names)}"
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"import os, sys\n{body}\n")
        (tmp_path / name / "sub.py").write_text("VALUE = 42\n")
        importlib.invalidate_caches()
        tf_runtime._guard(name, lambda: lambda module: None)
        made.append(name)
        return name

    yield make
    for name in made:
        tf_runtime._finder.guarded.pop(name, None)
        for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            del sys.modules[module]


def test_fd2_output_of_a_guarded_import_is_logged_not_printed(
    make_package: Callable[[str], str], capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    name = make_package('os.write(2, b"I0000 00:00:1.0 port.cc:153] noisy start-up line\\n")')
    before = _fd2_identity()
    with caplog.at_level(logging.DEBUG, logger="confserve.tf_runtime"):
        module = importlib.import_module(name)
    assert capfd.readouterr().err == ""
    assert _fd2_identity() == before
    os.write(2, b"after the import\n")
    assert capfd.readouterr().err == "after the import\n"  # fd 2 writes reach stderr again
    assert "noisy start-up line" in caplog.text
    # The wrapped loader still imports the package as a package.
    assert importlib.import_module(f"{name}.sub").VALUE == 42
    assert module.__spec__ is not None
    assert module.__spec__.submodule_search_locations


def test_a_failed_guarded_import_carries_its_output_and_restores_fd2(
    make_package: Callable[[str], str], capfd: pytest.CaptureFixture[str]
) -> None:
    name = make_package('os.write(2, b"cannot load libfoo.so\\n")\nraise RuntimeError("broken wheel")')
    before = _fd2_identity()
    with pytest.raises(TensorFlowImportError) as raised:
        importlib.import_module(name)
    assert "cannot load libfoo.so" in str(raised.value)
    assert "RuntimeError: broken wheel" in str(raised.value)
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert isinstance(raised.value, ImportError)
    assert name not in sys.modules
    assert capfd.readouterr().err == ""
    assert _fd2_identity() == before
    os.write(2, b"still a terminal\n")
    assert capfd.readouterr().err == "still a terminal\n"
    # A second attempt is guarded too.
    with pytest.raises(TensorFlowImportError):
        importlib.import_module(name)
    assert capfd.readouterr().err == ""


def test_an_interrupted_guarded_import_restores_fd2(
    make_package: Callable[[str], str], capfd: pytest.CaptureFixture[str]
) -> None:
    name = make_package('os.write(2, b"half way\\n")\nraise KeyboardInterrupt')
    before = _fd2_identity()
    with pytest.raises(KeyboardInterrupt):
        importlib.import_module(name)
    assert _fd2_identity() == before
    assert capfd.readouterr().err == ""


def test_concurrent_imports_run_the_module_once_and_print_nothing(
    make_package: Callable[[str], str], capfd: pytest.CaptureFixture[str]
) -> None:
    name = make_package(
        'import time\nos.write(2, b"once\\n")\ntime.sleep(0.2)\nRUNS = getattr(sys, "_quiet_runs", 0) + 1'
        "\nsys._quiet_runs = RUNS"
    )
    before = _fd2_identity()
    results: list[ModuleType] = []
    threads = [
        threading.Thread(target=lambda: results.append(importlib.import_module(name))) for _ in range(4)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 4
        assert all(module is results[0] for module in results)
        assert results[0].RUNS == 1
    finally:
        vars(sys).pop("_quiet_runs", None)
    assert capfd.readouterr().err == ""
    assert _fd2_identity() == before


def test_a_nested_guarded_import_is_captured_by_the_outer_one(
    make_package: Callable[[str], str], capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    inner = make_package('os.write(2, b"inner line\\n")')
    outer = make_package(f'os.write(2, b"outer line\\n")\nimport {inner}')
    with caplog.at_level(logging.DEBUG, logger="confserve.tf_runtime"):
        importlib.import_module(outer)
    assert capfd.readouterr().err == ""
    assert "inner line" in caplog.text
    assert "outer line" in caplog.text


def test_guarding_is_idempotent() -> None:
    install_import_guard()
    install_import_guard()
    assert sum(finder is tf_runtime._finder for finder in sys.meta_path) == 1
    assert sys.meta_path[0] is tf_runtime._finder or "tensorflow" in sys.modules


def test_import_tensorflow_returns_the_loaded_module(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = ModuleType("tensorflow")
    monkeypatch.setitem(sys.modules, "tensorflow", loaded)
    assert import_tensorflow() is loaded


@pytest.fixture
def tf_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("tensorflow")
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_quiet_defaults_unless_the_user_chose_a_level(
    monkeypatch: pytest.MonkeyPatch, tf_logger: logging.Logger
) -> None:
    monkeypatch.delenv(LOG_LEVEL_VARIABLE, raising=False)
    tf_logger.setLevel(logging.NOTSET)
    ours = logging.NullHandler()
    tf_logger.addHandler(ours)
    finish = tf_runtime._prepare_tensorflow()
    assert os.environ[LOG_LEVEL_VARIABLE] == "3"
    added = logging.StreamHandler(sys.stderr)  # what TensorFlow adds when the root logger has none
    tf_logger.addHandler(added)
    finish(ModuleType("tensorflow"))
    assert added not in tf_logger.handlers
    assert ours in tf_logger.handlers  # a handler someone set before the import is kept
    assert tf_logger.level == logging.ERROR


def test_a_level_the_user_set_is_kept(monkeypatch: pytest.MonkeyPatch, tf_logger: logging.Logger) -> None:
    monkeypatch.setenv(LOG_LEVEL_VARIABLE, "0")
    tf_logger.setLevel(logging.NOTSET)
    finish = tf_runtime._prepare_tensorflow()
    finish(ModuleType("tensorflow"))
    assert os.environ[LOG_LEVEL_VARIABLE] == "0"
    assert tf_logger.level == logging.NOTSET
