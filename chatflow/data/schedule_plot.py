"""Plot a data-mix schedule: target weight vs realized mix per source over the run.

The target is the schedule's normalized weight at each position; the realized mix is the share of
each source among the positions of each bin of the blending index that
:func:`chatflow.data.blending.build_blending_indices` builds (the same index training reads).
``tools/plot_schedule.py`` is the command line.
"""

from __future__ import annotations

import numpy as np

# A bare Figure renders with Agg on its own: no pyplot, no global backend switch, no display.
from matplotlib.figure import Figure

from chatflow.data.blending import blending_counts, build_blending_indices
from chatflow.data.schedule import Schedule
from chatflow.fileio import atomic_open


def default_bins(num_samples: int) -> int:
    """Bins of the realized mix: 100, fewer for short runs so each bin holds >= 64 samples."""
    return max(1, min(100, num_samples // 64))


def realized_mix(
    dataset_index: np.ndarray, num_sources: int, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin share of each source: (bin centers float64[B], shares float64[B, K])."""
    n = len(dataset_index)
    edges = np.linspace(0, n, bins + 1).round().astype(np.int64)
    edges = np.unique(edges)
    shares = np.empty((len(edges) - 1, num_sources))
    for b in range(len(edges) - 1):
        part = dataset_index[edges[b] : edges[b + 1]]
        shares[b] = blending_counts(part, num_sources) / max(len(part), 1)
    return (edges[:-1] + edges[1:]) / 2.0, shares


def plot_schedule(
    schedule: Schedule, num_samples: int, output: str, bins: int = 100, exact: bool = True
) -> np.ndarray:
    """Write the PNG atomically; returns the realized per-source counts over the whole run."""
    di, _ = build_blending_indices(schedule, num_samples, exact=exact)
    centers, shares = realized_mix(di, schedule.num_sources, bins)
    x = np.linspace(0, num_samples, 1001)
    target = schedule.weights_at(x, num_samples)
    fig = Figure(figsize=(9.5, 4.5), dpi=120)
    ax = fig.subplots()
    for k, name in enumerate(schedule.names):
        (line,) = ax.plot(x, target[:, k], lw=2, label=f"{name} target")
        ax.plot(
            centers,
            shares[:, k],
            "o",
            ms=3,
            color=line.get_color(),
            alpha=0.6,
            label=f"{name} realized",
        )
    for t in schedule.knot_positions(num_samples):
        if 0 < t < num_samples:
            ax.axvline(t, color="gray", ls=":", lw=1)
    ax.set_xlim(0, num_samples)
    ax.set_ylim(0, None)
    ax.set_xlabel("global sample position")
    ax.set_ylabel("share of samples")
    mode = "exact" if exact else "fast"
    ax.set_title(f"Data-mix schedule: target vs realized ({mode} blending, {bins} bins)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with atomic_open(output, "wb") as fh:  # a reader never sees a half-written PNG
        fig.savefig(fh, format="png")
    return blending_counts(di, schedule.num_sources)
