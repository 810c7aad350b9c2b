"""ChatFlow data path: token shards, schedules, the dynamic blending index and datasets.

The shard, schedule, blending and template names import eagerly (numpy only). The dataset,
cache and sampler names need torch and load on first use (PEP 562), so offline tools such as
``tools/preprocess_data.py`` start without paying for a torch import.
"""

import importlib

from chatflow.data.blending import blending_counts, blending_deficits, build_blending_indices
from chatflow.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    token_dtype,
)
from chatflow.data.schedule import Knot, Schedule, ScheduleError, Source
from chatflow.data.templates import InstructionTemplate, ParallelTemplate, loss_mask_prefix

_LAZY = {
    "BlendedDatasetConfig": "chatflow.data.blended_dataset",
    "DynamicBlendedDataset": "chatflow.data.blended_dataset",
    "Segment": "chatflow.data.blended_dataset",
    "IndexCache": "chatflow.data.index_cache",
    "DataParallelBatchSampler": "chatflow.data.sampler",
    "DataState": "chatflow.data.data_state",
    "SampleOptions": "chatflow.data.source_dataset",
    "SourceDataset": "chatflow.data.source_dataset",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chatflow.data' has no attribute {name!r}")


__all__ = [
    "Knot",
    "Schedule",
    "ScheduleError",
    "Source",
    "blending_counts",
    "blending_deficits",
    "build_blending_indices",
    "IndexedDataset",
    "IndexedDatasetError",
    "IndexedDatasetWriter",
    "token_dtype",
    "InstructionTemplate",
    "ParallelTemplate",
    "loss_mask_prefix",
    *_LAZY,
]
