"""Batching settings: TF Serving's BatchingParameters, validated once and frozen."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

from confserve.serving._errors import ConfigError

__all__ = ["BatchingSettings", "batching_settings_from_proto"]


@dataclass(frozen=True)
class BatchingSettings:
    """Defaults are TF Serving's (BasicBatchScheduler::Options, session_bundle_config.proto)."""

    max_batch_size: int = 1000  # largest merged batch (rows along dimension 0)
    # How long the first task of a batch may wait for others; 0: run whatever has queued meanwhile.
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10  # batches waiting per model version; beyond: RESOURCE_EXHAUSTED
    num_batch_threads: int = os.cpu_count() or 1  # TF Serving: port::MaxParallelism()
    allowed_batch_sizes: tuple[int, ...] = ()  # pad merged batches up to the next of these
    pad_variable_length_inputs: bool = False  # pad differing non-batch dimensions to merge tasks
    # confserve's adaptive closing (batching/_queue.py): a batch runs at once when every request in flight
    # has joined one, so batch_timeout_micros is the longest wait, not a fixed one. Not in TF Serving's
    # BatchingParameters; off only where a test wants TF Serving's fixed wait.
    adaptive: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"batching parameter {name} must be positive")
        if self.batch_timeout_micros < 0:
            raise ConfigError("batching parameter batch_timeout_micros must not be negative")
        sizes = self.allowed_batch_sizes
        if sizes:
            # TF Serving's rule (batching_session.cc): increasing, the last one equal to max_batch_size.
            if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] < 1:
                raise ConfigError("allowed_batch_sizes must be positive and increasing")
            if sizes[-1] != self.max_batch_size:
                raise ConfigError("the last entry of allowed_batch_sizes must equal max_batch_size")

    @property
    def batch_timeout_seconds(self) -> float:
        return self.batch_timeout_micros / 1e6


def batching_settings_from_proto(params: Any) -> BatchingSettings:
    """From a parsed `confserve.tfs_config.BatchingParameters` (wrapper fields: unset means default)."""
    defaults = BatchingSettings()
    values: dict[str, Any] = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        values[name] = int(getattr(params, name).value) if params.HasField(name) else getattr(defaults, name)
    return BatchingSettings(
        **values,
        allowed_batch_sizes=tuple(int(s) for s in params.allowed_batch_sizes),
        pad_variable_length_inputs=bool(params.pad_variable_length_inputs),
    )
