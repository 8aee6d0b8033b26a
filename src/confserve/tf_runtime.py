"""The one place that loads TensorFlow, and keeps its start-up noise off the user's terminal.

Theory of operation. TensorFlow's shared libraries log through absl. Until a program calls
`absl::InitializeLog()` (TensorFlow never does), absl writes every message, whatever its level, straight to
file descriptor 2, after the line "WARNING: All log messages before absl::InitializeLog() is called are
written to STDERR". TensorFlow 2.21 prints a few such lines on every import (oneDNN, the CUDA stubs, the
CPU feature guard; twice, once per shared library that carries its own absl). `TF_CPP_MIN_LOG_LEVEL` does
not filter these, and replacing Python's `sys.stderr` does not see them. So the first import of the
`tensorflow` package runs under a guard that

1. sets `TF_CPP_MIN_LOG_LEVEL` to 3 (FATAL only) unless the user set it. TensorFlow reads it once, when its
   library loads; it then filters every later C++ message: SavedModel loading, grappler, the CUDA probe,
   and the warnings of failing ops (which can quote tensor values, e.g. a failed assertion's operands);
2. points fd 2 at an anonymous temporary file (`dup2`) for the duration of the import only, then puts the
   original back. The captured text goes to this module's logger at DEBUG; if the import fails it is part
   of the error raised. Anything another thread writes to fd 2 in that window (a few seconds, once per
   process) is captured too;
3. removes the stderr handler TensorFlow attaches to its Python logger (`tensorflow`) when the root logger
   has none, so its records follow the process's logging configuration; unless the user set
   `TF_CPP_MIN_LOG_LEVEL`, that logger is set to ERROR.

Importing any `tensorflow.*` module (the protos included, and through them `tensorflow_serving.*` and
Keras) runs `tensorflow/__init__.py`, which loads the whole runtime. So the guard is an import hook
(`install_import_guard`): whoever triggers that first import, it is guarded. `import_tensorflow()`
installs the hook and returns the module; the command line installs the hook before it runs a command.
Everything here is thread-safe and idempotent; the hook does nothing once TensorFlow is loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

__all__ = [
    "LOG_LEVEL_VARIABLE",
    "TensorFlowImportError",
    "import_tensorflow",
    "install_import_guard",
]

LOG_LEVEL_VARIABLE: Final = "TF_CPP_MIN_LOG_LEVEL"  # TensorFlow's C++ minimum level: 0 INFO ... 3 FATAL
_QUIET_LEVEL: Final = "3"
_TENSORFLOW: Final = "tensorflow"
_LOGGER: Final = "confserve.tf_runtime"
_MAX_ERROR_CHARS: Final = 8000  # the tail of the captured output kept in an error message


class _Redirect:
    """One redirect of fd 2 at a time in this process. The lock is re-entrant so that a nested guarded
    import (on the same thread) runs inside the outer capture instead of deadlocking."""

    lock: Final = threading.RLock()
    depth = 0  # guarded by lock: how many captures this thread has entered


# A guard's preparation runs before the module executes and returns what to do after it succeeded.
Prepare = Callable[[], Callable[[ModuleType], None]]


class TensorFlowImportError(ImportError):
    """A guarded import failed; the message carries what the module printed while importing."""


def import_tensorflow() -> Any:
    """The `tensorflow` module, imported quietly on first use (the one way confserve loads TensorFlow)."""
    module = sys.modules.get(_TENSORFLOW)
    if module is None:
        install_import_guard()
        module = importlib.import_module(_TENSORFLOW)
    return module


def install_import_guard() -> None:
    """Make the first import of TensorFlow in this process quiet, whoever triggers it."""
    _guard(_TENSORFLOW, _prepare_tensorflow)


def _prepare_tensorflow() -> Callable[[ModuleType], None]:
    import logging  # noqa: PLC0415  (imported when TensorFlow is: light commands never pay for it)

    user_level = LOG_LEVEL_VARIABLE in os.environ
    os.environ.setdefault(LOG_LEVEL_VARIABLE, _QUIET_LEVEL)
    logger = logging.getLogger(_TENSORFLOW)
    before = list(logger.handlers)

    def finish(module: ModuleType) -> None:
        for handler in [h for h in logger.handlers if h not in before]:
            logger.removeHandler(handler)
        if not user_level:
            logger.setLevel(logging.ERROR)

    return finish


# --- the import hook ---------------------------------------------------------------------------------


class _QuietFinder:
    """A `sys.meta_path` finder for the guarded top-level modules: it asks the other finders for the spec
    and wraps its loader, so that executing the module runs under the fd 2 capture."""

    def __init__(self) -> None:
        self.guarded: dict[str, Prepare] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        prepare = self.guarded.get(fullname)
        if prepare is None or fullname in sys.modules:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: ModuleSpec | None = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader, prepare)  # type: ignore[assignment]
                return spec
        return None


class _QuietLoader:
    """Delegates to the real loader; `exec_module` runs with fd 2 captured."""

    def __init__(self, loader: Any, prepare: Prepare) -> None:
        self._loader = loader
        self._prepare = prepare

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, get_filename, ...
        if name == "_loader":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        result: ModuleType | None = self._loader.create_module(spec)
        return result

    def exec_module(self, module: ModuleType) -> None:
        def run() -> None:
            finish = self._prepare()
            self._loader.exec_module(module)
            finish(module)

        _run_captured(module.__name__, run)


_finder = _QuietFinder()


def _guard(name: str, prepare: Prepare) -> None:
    """Guard the first import of top-level module `name` (idempotent)."""
    with _Redirect.lock:
        _finder.guarded.setdefault(name, prepare)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)


# --- the fd 2 capture --------------------------------------------------------------------------------


def _run_captured(name: str, run: Callable[[], None]) -> None:
    """Run `run` with fd 2 pointed at a temporary file; restore fd 2 whatever happens. The output goes to
    the log at DEBUG, or into the `TensorFlowImportError` raised if `run` failed."""
    import logging  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    with _Redirect.lock:
        if _Redirect.depth:  # an outer guard on this thread is capturing already
            run()
            return
        _flush_stderr()
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all: nothing can reach a terminal
            run()
            return
        failure: Exception | None = None
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            _Redirect.depth += 1
            try:
                run()
            except Exception as exc:
                failure = exc
            finally:
                _Redirect.depth -= 1
                _flush_stderr()
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
    if failure is not None:
        tail = text[-_MAX_ERROR_CHARS:]
        detail = f"; its output:\n{tail}" if tail.strip() else ""
        raise TensorFlowImportError(
            f"cannot import {name} ({failure.__class__.__name__}: {failure}){detail}", name=name
        ) from failure
    if text:
        logging.getLogger(_LOGGER).debug("output of importing %s:\n%s", name, text.rstrip("\n"))


def _flush_stderr() -> None:
    """Text Python buffered for stderr goes out through the fd 2 it was written for."""
    for stream in (sys.stderr, sys.__stderr__):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to keep
                stream.flush()
