#!/usr/bin/env python
"""Plot a ChatFlow run: loss per source (train and validation) and the data mix over steps.

    python tools/plot_training.py --metrics demo_out/checkpoints/metrics.jsonl \
        --output demo_out/training.png

Reads the metrics.jsonl the trainer writes (one JSON object per log interval) and writes a PNG
with two panels: top, training loss per source (solid) and validation loss per source (dots);
bottom, realized share of each source per interval (solid) against the scheduled share (dashed).
"""

from __future__ import annotations

import argparse
import os
import sys

from chatflow.fileio import atomic_open


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chatflow-plot-training`` / ``tools/plot_training.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--metrics", required=True, help="metrics.jsonl written by the trainer")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--title", default="ChatFlow training", help="figure title")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    from chatflow.metrics import read_metrics

    if not os.path.isfile(args.metrics):
        print(f"plot_training: metrics file not found: {args.metrics}", file=sys.stderr)
        return 1
    records = read_metrics(args.metrics)
    train = [r for r in records if r.get("kind") == "train"]
    valid = [r for r in records if r.get("kind") == "valid"]
    if not train:
        print(f"plot_training: no training records in {args.metrics}", file=sys.stderr)
        return 1
    names = list(train[0]["source_loss"])
    steps = [r["iteration"] for r in train]

    fig, (ax_loss, ax_mix) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    ax_loss.plot(steps, [r["loss"] for r in train], color="black", lw=2, label="overall")
    for n in names:
        ys = [r["source_loss"][n] for r in train]
        pts = [(s, y) for s, y in zip(steps, ys) if y is not None]
        if pts:
            ax_loss.plot(*zip(*pts), color=colors[n], label=f"{n} (train)")
        vpts = [(r["iteration"], r["valid_source_loss"].get(n)) for r in valid]
        vpts = [(s, y) for s, y in vpts if y is not None]
        if vpts:
            ax_loss.plot(*zip(*vpts), "o", color=colors[n], ms=5, label=f"{n} (valid)")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8, ncol=2)
    ax_loss.grid(alpha=0.3)

    for n in names:
        ax_mix.plot(steps, [r["realized_mix"][n] for r in train], color=colors[n], label=n)
        ax_mix.plot(steps, [r["scheduled_mix"][n] for r in train], "--", color=colors[n])
    ax_mix.set_ylabel("share of samples (solid: realized, dashed: scheduled)")
    ax_mix.set_xlabel("iteration")
    ax_mix.set_ylim(0, 1)
    ax_mix.legend(fontsize=8)
    ax_mix.grid(alpha=0.3)
    fig.suptitle(args.title)
    fig.tight_layout()

    with atomic_open(args.output, "wb") as fh:
        fig.savefig(fh, dpi=110, format="png")
    print(f"wrote {args.output} ({len(train)} intervals, sources: {', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
