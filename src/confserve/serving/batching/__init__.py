"""Server-side batching (TF Serving's --enable_batching), isolated from the models.

`BatchingLoader` wraps the model loader; each loaded version runs behind a `BatchingServable` whose
scheduler merges concurrent `run` calls. The merge and split logic (`_queue`) is sans-I/O with the clock
passed in; threads live only in `_scheduler`.
"""

from confserve.serving.batching._queue import Batch, BatchQueue, Task, make_task, merge, padded_size, split
from confserve.serving.batching._scheduler import BatchingLoader, BatchingServable
from confserve.serving.batching._settings import BatchingSettings, batching_settings_from_proto

__all__ = [
    "Batch",
    "BatchQueue",
    "BatchingLoader",
    "BatchingServable",
    "BatchingSettings",
    "Task",
    "batching_settings_from_proto",
    "make_task",
    "merge",
    "padded_size",
    "split",
]
