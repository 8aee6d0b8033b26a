"""The model store: one source feeding one manager, driven by an explicit poll.

`poll_once()` is the whole control loop body (list, publish, reconcile); tests call it directly.
`run_polling()` repeats it until stopped; it is the target of the server's one background thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Generic, TypeVar

from confserve.serving._config import ModelConfig
from confserve.serving._errors import log_unexpected
from confserve.serving._manager import ModelManager
from confserve.serving._opener import FileOpener
from confserve.serving._source import FileSystemSource

__all__ = ["ModelStore"]

_log = logging.getLogger(__name__)
S = TypeVar("S")


class ModelStore(Generic[S]):
    """Keeps a manager in step with the model directories named by a model config."""

    def __init__(self, models: Sequence[ModelConfig], opener: FileOpener, manager: ModelManager[S]) -> None:
        self._opener = opener
        self._source = FileSystemSource(models, opener)
        self.manager = manager

    @property
    def opener(self) -> FileOpener:
        """Where model bytes come from (a release-gated opener also reports each model's release)."""
        return self._opener

    def set_models(self, models: Sequence[ModelConfig]) -> None:
        """Replace the configured models (a changed model config); the next poll reconciles: models left
        out are unloaded, new ones loaded. In-flight requests keep their handles until they finish."""
        self._source = FileSystemSource(models, self._opener)

    def poll_once(self) -> None:
        """List every base path, publish the aspired versions, then load/unload what is due."""
        self.manager.retain_models(self._source.model_names)
        for aspired in self._source.poll():
            self.manager.set_aspired_versions(aspired)
        self.manager.reconcile()

    def run_polling(self, stop: threading.Event, poll_wait_seconds: float) -> None:
        """Poll until `stop` is set. `poll_wait_seconds` < 0 polls once (TF Serving: 'wait forever')."""
        while True:
            try:
                self.poll_once()
            except Exception as exc:
                log_unexpected(_log, "model store poll", exc)
            if poll_wait_seconds < 0 or stop.wait(poll_wait_seconds):
                return
