#!/usr/bin/env python
"""Plot a data-mix schedule: target weight vs realized mix per source over the run.

The target is the schedule's normalized weight at each position; the realized mix is the share of
each source among the positions of each bin of the blending index that
``chatflow.data.build_blending_indices`` builds (the same index training reads).

Usage::

    python tools/plot_schedule.py examples/chatflow_schedule.yaml --num-samples 6000000 \\
        --output docs/chatflow_schedule.png
"""

from __future__ import annotations

import argparse
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: no display on training or CI nodes
import matplotlib.pyplot as plt

from chatflow.data.blending import blending_counts, build_blending_indices
from chatflow.data.schedule import Schedule
from chatflow.fileio import atomic_open


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


def plot(
    schedule: Schedule, num_samples: int, output: str, bins: int = 100, exact: bool = True
) -> np.ndarray:
    """Write the PNG atomically; returns the realized per-source counts over the whole run."""
    di, _ = build_blending_indices(schedule, num_samples, exact=exact)
    centers, shares = realized_mix(di, schedule.num_sources, bins)
    x = np.linspace(0, num_samples, 1001)
    target = schedule.weights_at(x, num_samples)
    fig, ax = plt.subplots(figsize=(9.5, 4.5), dpi=120)
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
    try:
        with atomic_open(output, "wb") as fh:  # a reader never sees a half-written PNG
            fig.savefig(fh, format="png")
    finally:
        plt.close(fig)
    return blending_counts(di, schedule.num_sources)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("schedule", help="schedule YAML file")
    p.add_argument("--num-samples", type=float, required=True, help="samples in the run")
    p.add_argument("--output", default="schedule.png", help="PNG to write")
    p.add_argument(
        "--bins",
        type=int,
        default=None,
        help="bins of the realized mix (default: 100, fewer for short runs: >= 64 samples per bin)",
    )
    p.add_argument("--fast", action="store_true", help="fast blending mode instead of exact")
    p.add_argument("--data-root", default=None, help="override the YAML's data_root")
    args = p.parse_args(argv)
    schedule = Schedule.from_yaml(args.schedule, data_root=args.data_root)
    n = int(args.num_samples)
    bins = args.bins or max(1, min(100, n // 64))
    counts = plot(schedule, n, args.output, bins=bins, exact=not args.fast)
    print(f"wrote {args.output}  ({n:,} samples)")
    for name, c in zip(schedule.names, counts):
        print(f"  {name:<16} {c:>14,}  {c / max(n, 1):7.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
