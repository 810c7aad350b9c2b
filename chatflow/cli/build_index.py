#!/usr/bin/env python
"""Prebuild every index cache of a ChatFlow run offline (e.g. on a CPU node), then print the mix.

Builds the blend and each source's document/sample/shuffle indices (and, with
``--valid-fraction``, the held-out validation indices) under ``--cache-dir``, with the same keys
the trainer computes, so the training job only loads them. Prints, per source, the samples drawn,
the realized share against the schedule's average target weight, and the epochs it covers.

Examples::

    python tools/build_index.py --schedule examples/chatflow_schedule.yaml \\
        --seq-length 4096 --num-samples 6000000 --cache-dir cache/index
    python tools/build_index.py --data-path 0.3 data/en 0.7 data/zh --seq-length 2048 \\
        --train-iters 1000 --global-batch-size 512 --cache-dir cache/index
    # before resuming with a new schedule: the data state saved in the checkpoint (JSON)
    python tools/build_index.py --schedule new.yaml --data-state ckpt/data_state.json ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from chatflow.data import BlendedDatasetConfig, DataState, DynamicBlendedDataset
from chatflow.data.index_report import mix_report
from chatflow.data.schedule import Schedule


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of ``chatflow-build-index`` / ``tools/build_index.py``, parsed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--schedule", help="weight-schedule YAML")
    src.add_argument("--data-path", nargs="+", help="Megatron-style [w1] p1 [w2 p2 ...]")
    p.add_argument("--data-root", default=None, help="overrides the YAML's data_root")
    p.add_argument("--seq-length", type=int, required=True)
    n = p.add_mutually_exclusive_group(required=True)
    n.add_argument("--num-samples", type=int, help="training samples of the run")
    n.add_argument("--train-iters", type=int, help="with --global-batch-size")
    p.add_argument("--global-batch-size", type=int)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--valid-fraction", type=float, default=0.0)
    p.add_argument(
        "--valid-samples",
        type=int,
        default=None,
        help="validation samples per source (default: one pass)",
    )
    p.add_argument(
        "--fast-blend", action="store_true", help="fast O(N) blending mode (for many sources)"
    )
    p.add_argument("--shuffle-block", type=int, default=None)
    p.add_argument(
        "--data-state",
        default=None,
        help="JSON of a checkpoint's DataState: prebuild the resumed run's indices",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.train_iters is not None:
        if not args.global_batch_size:
            p.error("--train-iters needs --global-batch-size")
        args.num_samples = args.train_iters * args.global_batch_size
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chatflow-build-index`` / ``tools/build_index.py``."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.schedule:
        schedule = Schedule.from_yaml(args.schedule, data_root=args.data_root)
    else:
        schedule = Schedule.from_data_path(args.data_path)
    config = BlendedDatasetConfig(
        seq_length=args.seq_length,
        num_samples=args.num_samples,
        seed=args.seed,
        cache_dir=args.cache_dir,
        valid_fraction=args.valid_fraction,
        exact_blend=not args.fast_blend,
        shuffle_block=args.shuffle_block,
    )
    spec = schedule
    consumed = 0
    if args.data_state:
        with open(args.data_state) as f:
            state = DataState.from_dict(json.load(f))
        spec = state.segments_for(schedule, args.num_samples)
        consumed = state.consumed_samples
    start = time.perf_counter()
    ds = DynamicBlendedDataset(config, spec)
    valid = ds.validation_datasets(args.valid_samples) if args.valid_fraction > 0 else {}
    elapsed = time.perf_counter() - start

    n = len(ds)
    mix = mix_report(ds, args.seq_length)
    print(
        f"{n} samples of {args.seq_length} tokens, {len(ds.names)} sources, "
        f"{len(ds.segments)} segment(s), built or loaded in {elapsed:.1f}s "
        f"under {os.path.abspath(args.cache_dir)}"
    )
    if consumed:
        print(f"resumed at sample {consumed}")
    print(
        f"{'source':24s} {'samples':>12s} {'realized':>9s} {'target':>9s} {'epochs':>8s}"
        + ("  valid" if valid else "")
    )
    for m in mix:
        line = f"{m.name:24s} {m.samples:12d} {m.realized:9.4f} {m.target:9.4f} {m.epochs:8.2f}"
        if m.name in valid:
            line += f"  {len(valid[m.name])}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
