"""The realized mix of a built blend: per source, samples drawn against the schedule's target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from chatflow.data.blended_dataset import DynamicBlendedDataset


@dataclass
class SourceMix:
    """One source's share of a blend."""

    name: str
    samples: int
    """Training samples drawn from the source."""
    realized: float
    """``samples / len(blend)``."""
    target: float
    """The schedule's target weight, averaged over the run."""
    epochs: float
    """Passes over the source's tokens these samples make."""


def mix_report(ds: DynamicBlendedDataset, seq_length: int) -> list[SourceMix]:
    """Realized against target share of every source of ``ds``, in ``ds.names`` order."""
    n = len(ds)
    counts = np.bincount(np.asarray(ds.dataset_index), minlength=len(ds.names))
    # Average target weight over the run: W_k(N) / N of each segment, weighted by its length.
    target = np.zeros(len(ds.names))
    for i, seg in enumerate(ds.segments):
        end = ds.segments[i + 1].start if i + 1 < len(ds.segments) else seg.num_samples
        cum = seg.schedule.cumulative_weights(np.array([seg.start, end], float), seg.num_samples)
        for k, name in enumerate(seg.schedule.names):
            target[ds.names.index(name)] += cum[1, k] - cum[0, k]
    return [
        SourceMix(
            name=name,
            samples=int(counts[k]),
            realized=counts[k] / n,
            target=target[k] / n,
            epochs=counts[k] * seq_length / max(ds.sources[k].epoch_tokens, 1),
        )
        for k, name in enumerate(ds.names)
    ]
