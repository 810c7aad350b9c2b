"""ChatFlow data path: token shards, schedules, the dynamic blending index and datasets."""

from chatflow.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    token_dtype,
)

__all__ = ["IndexedDataset", "IndexedDatasetError", "IndexedDatasetWriter", "token_dtype"]
