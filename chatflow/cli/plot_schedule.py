#!/usr/bin/env python
"""Plot a data-mix schedule: target weight vs realized mix per source over the run.

The target is the schedule's normalized weight at each position; the realized mix is the share of
each source among the positions of each bin of the blending index that
``chatflow.data.build_blending_indices`` builds (the same index training reads). The plotting is
:func:`chatflow.data.schedule_plot.plot_schedule`.

Usage::

    python tools/plot_schedule.py examples/chatflow_schedule.yaml --num-samples 6000000 \\
        --output docs/chatflow_schedule.png
"""

from __future__ import annotations

import argparse
import sys

from chatflow.data.schedule import Schedule
from chatflow.data.schedule_plot import default_bins, plot_schedule


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chatflow-plot-schedule`` / ``tools/plot_schedule.py``."""
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
    bins = args.bins or default_bins(n)
    counts = plot_schedule(schedule, n, args.output, bins=bins, exact=not args.fast)
    print(f"wrote {args.output}  ({n:,} samples)")
    for name, c in zip(schedule.names, counts):
        print(f"  {name:<16} {c:>14,}  {c / max(n, 1):7.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
