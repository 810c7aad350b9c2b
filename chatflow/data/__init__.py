"""ChatFlow data path: token shards, schedules, the dynamic blending index and datasets."""

from chatflow.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    token_dtype,
)
from chatflow.data.blending import (
    blending_counts,
    blending_deficits,
    build_blending_indices,
)
from chatflow.data.schedule import Knot, Schedule, ScheduleError, Source
from chatflow.data.blended_dataset import BlendedDatasetConfig, DynamicBlendedDataset, Segment
from chatflow.data.index_cache import IndexCache
from chatflow.data.sampler import DataParallelBatchSampler, DataState
from chatflow.data.source_dataset import SampleOptions, SourceDataset
from chatflow.data.templates import InstructionTemplate, ParallelTemplate, loss_mask_prefix

__all__ = [
    "Knot",
    "Schedule",
    "ScheduleError",
    "Source",
    "blending_counts",
    "blending_deficits",
    "build_blending_indices",
    "BlendedDatasetConfig",
    "DataParallelBatchSampler",
    "DataState",
    "DynamicBlendedDataset",
    "IndexCache",
    "SampleOptions",
    "Segment",
    "SourceDataset",
    "IndexedDataset",
    "InstructionTemplate",
    "ParallelTemplate",
    "loss_mask_prefix",
    "IndexedDatasetError",
    "IndexedDatasetWriter",
    "token_dtype",
]
