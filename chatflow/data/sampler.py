"""Data-parallel batch sampling from ``consumed_samples``.

:class:`DataParallelBatchSampler` has megatron's ``MegatronPretrainingSampler`` semantics: the
global sample order is ``0, 1, 2, ...`` from ``consumed_samples``; each group of
``micro_batch_size * data_parallel_size`` consecutive samples is one global micro-batch, and rank
``r`` takes the ``r``-th slice of ``micro_batch_size``. The dataset does the shuffling.

What a checkpoint holds to resume the data is :class:`chatflow.data.data_state.DataState`.
"""

from __future__ import annotations

from collections.abc import Iterator


class DataParallelBatchSampler:
    """Yields this rank's micro-batches (lists of global sample indices) from ``consumed_samples``.

    Args:
        total_samples: length of the dataset.
        consumed_samples: samples already trained on by all ranks together.
        micro_batch_size: samples per rank per micro-batch.
        data_parallel_rank: this rank in the data-parallel group.
        data_parallel_size: size of the data-parallel group.
        drop_last: drop a final incomplete global micro-batch (else each rank gets its part of it,
            possibly nothing).
    """

    def __init__(
        self,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
        drop_last: bool = True,
    ) -> None:
        if total_samples <= 0:
            raise ValueError(f"total_samples must be > 0, got {total_samples}")
        if not 0 <= consumed_samples < total_samples:
            raise ValueError(
                f"consumed_samples must lie in [0, total_samples={total_samples}), got "
                f"{consumed_samples}: the run has used all its data"
            )
        if micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be > 0, got {micro_batch_size}")
        if data_parallel_size <= 0 or not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(
                f"need 0 <= data_parallel_rank ({data_parallel_rank}) < data_parallel_size "
                f"({data_parallel_size})"
            )
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.rank = data_parallel_rank
        self.world = data_parallel_size
        self.drop_last = drop_last

    @property
    def global_micro_batch(self) -> int:
        """Samples consumed by all ranks together per micro-batch."""
        return self.micro_batch_size * self.world

    def __len__(self) -> int:
        left = self.total_samples - self.consumed_samples
        full, rest = divmod(left, self.global_micro_batch)
        return full + int(not self.drop_last and rest > self.rank * self.micro_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        group = self.global_micro_batch
        first = self.rank * self.micro_batch_size
        start = self.consumed_samples
        while start + group <= self.total_samples:
            yield list(range(start + first, start + first + self.micro_batch_size))
            start += group
        if not self.drop_last:
            tail = list(range(start, self.total_samples))[first : first + self.micro_batch_size]
            if tail:
                yield tail
