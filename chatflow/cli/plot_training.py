#!/usr/bin/env python
"""Plot a ChatFlow run: loss per source (train and validation) and the data mix over steps.

    python tools/plot_training.py --metrics demo_out/checkpoints/metrics.jsonl \
        --output demo_out/training.png

Reads the metrics.jsonl the trainer writes (one JSON object per log interval) and writes a PNG
with two panels: top, training loss per source (solid) and validation loss per source (dots);
bottom, realized share of each source per interval (solid) against the scheduled share (dashed).
The plotting is :func:`chatflow.training_plot.plot_training`.
"""

from __future__ import annotations

import argparse
import sys

from chatflow.training_plot import TrainingPlotError, plot_training


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chatflow-plot-training`` / ``tools/plot_training.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--metrics", required=True, help="metrics.jsonl written by the trainer")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--title", default="ChatFlow training", help="figure title")
    args = parser.parse_args(argv)
    try:
        summary = plot_training(args.metrics, args.output, args.title)
    except TrainingPlotError as e:
        print(f"plot_training: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.output} ({summary.intervals} intervals, "
        f"sources: {', '.join(summary.sources)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
