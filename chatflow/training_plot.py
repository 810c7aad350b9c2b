"""Plot a ChatFlow run: loss per source (train and validation) and the data mix over steps.

Reads the metrics.jsonl the trainer writes (one JSON object per log interval, see
:mod:`chatflow.metrics`) and writes a PNG with two panels: top, training loss per source (solid)
and validation loss per source (dots); bottom, realized share of each source per interval (solid)
against the scheduled share (dashed). ``tools/plot_training.py`` is the command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# A bare Figure renders with Agg on its own: no pyplot, no global backend switch, no display.
from matplotlib.figure import Figure

from chatflow.fileio import atomic_open
from chatflow.metrics import read_metrics


class TrainingPlotError(ValueError):
    """The metrics file is missing or holds no training record."""


@dataclass(frozen=True)
class TrainingPlotSummary:
    """What :func:`plot_training` drew: training intervals and source names."""

    intervals: int
    sources: list[str]


def plot_training(
    metrics: str, output: str, title: str = "ChatFlow training"
) -> TrainingPlotSummary:
    """Write the two-panel PNG of ``metrics`` atomically to ``output``.

    Raises:
        TrainingPlotError: ``metrics`` is not a file or has no training record.
    """
    if not os.path.isfile(metrics):
        raise TrainingPlotError(f"metrics file not found: {metrics}")
    records = read_metrics(metrics)
    train = [r for r in records if r.get("kind") == "train"]
    valid = [r for r in records if r.get("kind") == "valid"]
    if not train:
        raise TrainingPlotError(f"no training records in {metrics}")
    names = list(train[0]["source_loss"])

    fig = Figure(figsize=(9, 7))
    ax_loss, ax_mix = fig.subplots(2, 1, sharex=True)
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    _plot_losses(ax_loss, train, valid, names, colors)
    _plot_mix(ax_mix, train, names, colors)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(output, "wb") as fh:  # a reader never sees a half-written PNG
        fig.savefig(fh, dpi=110, format="png")
    return TrainingPlotSummary(intervals=len(train), sources=names)


def _plot_losses(
    ax: Any,
    train: list[dict[str, Any]],
    valid: list[dict[str, Any]],
    names: list[str],
    colors: dict[str, str],
) -> None:
    """Top panel: overall loss, training loss per source (lines), validation loss (dots)."""
    steps = [r["iteration"] for r in train]
    ax.plot(steps, [r["loss"] for r in train], color="black", lw=2, label="overall")
    for n in names:
        ys = [r["source_loss"][n] for r in train]
        pts = [(s, y) for s, y in zip(steps, ys) if y is not None]  # None: source not drawn
        if pts:
            ax.plot(*zip(*pts), color=colors[n], label=f"{n} (train)")
        vpts = [(r["iteration"], r["valid_source_loss"].get(n)) for r in valid]
        vpts = [(s, y) for s, y in vpts if y is not None]
        if vpts:
            ax.plot(*zip(*vpts), "o", color=colors[n], ms=5, label=f"{n} (valid)")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)


def _plot_mix(
    ax: Any, train: list[dict[str, Any]], names: list[str], colors: dict[str, str]
) -> None:
    """Bottom panel: realized share per source (solid) against the scheduled share (dashed)."""
    steps = [r["iteration"] for r in train]
    for n in names:
        ax.plot(steps, [r["realized_mix"][n] for r in train], color=colors[n], label=n)
        ax.plot(steps, [r["scheduled_mix"][n] for r in train], "--", color=colors[n])
    ax.set_ylabel("share of samples (solid: realized, dashed: scheduled)")
    ax.set_xlabel("iteration")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
