#!/usr/bin/env python
"""Benchmark ChatFlow's blending-index builders against megatron-core's, in one process.

For each source count K, on the same N positions:

* ``mcore static``: megatron-core ``helpers_cpp.build_blending_indices`` with constant weights
  (the baseline: all Megatron-LM can do);
* ``exact dynamic``: ChatFlow's exact mode on a dynamic schedule (random start and end mixes,
  linear ramp to mid-run, then held: the ChatFlow preset's shape);
* ``fast dynamic``: ChatFlow's fast mode on the same schedule.

Reported: wall time, extra memory (peak RSS during the call minus RSS before, minus the 10 bytes
per position of the two output arrays; sampled every 2 ms), and the ratio to megatron-core.
``--sections dataset`` also runs tools/bench_dataset.py (per-source index build and
``__getitem__`` throughput), when that script exists.

Usage::

    python tools/bench_index.py                       # N = 1e8, K = 2, 10, 100, 1000
    python tools/bench_index.py --num-samples 1e7 --large-k-samples 1e7 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

import numpy as np
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from chatflow.data.blending import build_blending_indices  # noqa: E402
from chatflow.data.schedule import Knot, Schedule, Source  # noqa: E402


class PeakRSS:
    """Samples this process's RSS in a thread while the (GIL-releasing) builder runs."""

    def __init__(self, interval: float = 0.002) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.before = self.proc.memory_info().rss
        self.peak = self.before
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def measure(fn: Callable[[], tuple], n: int) -> tuple[float, float]:
    """(seconds, extra MiB beyond the output arrays) of one call; outputs are dropped after."""
    gc.collect()
    with PeakRSS() as mem:
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
    del out
    gc.collect()
    extra = (mem.peak - mem.before - 10 * n) / 2**20
    return seconds, max(extra, 0.0)


def dynamic_schedule(K: int, seed: int) -> Schedule:
    rng = np.random.default_rng(seed)
    sources = tuple(Source(f"s{k}", f"/bench/s{k}") for k in range(K))
    knots = (Knot(tuple(rng.random(K) + 0.01), at_fraction=0.0),
             Knot(tuple(rng.random(K) + 0.01), at_fraction=0.5))
    return Schedule(sources, knots)


def bench_blending(ks: list[int], n: int, large_k_samples: int, skip_mcore: bool) -> list[dict]:
    from megatron.core.datasets import helpers_cpp

    rows = []
    for K in ks:
        nk = n if K < 1000 else min(n, large_k_samples)
        schedule = dynamic_schedule(K, seed=K)
        static_w = np.array(schedule.knots[0].weights, dtype=np.float64)

        def mcore():
            di = np.empty(nk, dtype=np.int16)
            dsi = np.empty(nk, dtype=np.int64)
            helpers_cpp.build_blending_indices(di, dsi, static_w, K, nk, False)
            return di, dsi

        build_blending_indices(schedule, 1000)  # warm-up: import, page in the extension
        results = {}
        if not skip_mcore:
            results["mcore static"] = measure(mcore, nk)
        results["exact dynamic"] = measure(lambda: build_blending_indices(schedule, nk, True), nk)
        results["fast dynamic"] = measure(lambda: build_blending_indices(schedule, nk, False), nk)
        base = results.get("mcore static", (float("nan"),))[0]
        for mode, (sec, extra) in results.items():
            row = {"K": K, "N": nk, "mode": mode, "seconds": round(sec, 3),
                   "extra_MiB": round(extra, 1), "ratio_to_mcore": round(sec / base, 3)}
            rows.append(row)
            print(f"K={K:>5} N={nk:.0e} {mode:<14} {sec:9.3f} s  extra {extra:8.1f} MiB  "
                  f"x{sec / base:6.3f} of mcore", flush=True)
    return rows


def run_dataset_section(extra_args: list[str]) -> int:
    script = os.path.join(REPO, "tools", "bench_dataset.py")
    if not os.path.exists(script):
        print("dataset section: tools/bench_dataset.py not found, skipped")
        return 0
    return subprocess.call([sys.executable, script, *extra_args])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", type=float, default=1e8, help="positions N (default 1e8)")
    p.add_argument("--sources", default="2,10,100,1000", help="comma-separated source counts K")
    p.add_argument("--large-k-samples", type=float, default=None,
                   help="cap N for K >= 1000 (megatron-core needs ~85 s at K=1000, N=1e8)")
    p.add_argument("--sections", default="blending",
                   help="comma-separated: blending, dataset (runs tools/bench_dataset.py)")
    p.add_argument("--dataset-args", default="", help="arguments passed to bench_dataset.py")
    p.add_argument("--skip-mcore", action="store_true", help="time ChatFlow's builders only")
    p.add_argument("--json", default=None, help="also write the blending rows to this JSON file")
    args = p.parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - {"blending", "dataset"}
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}")
    n = int(args.num_samples)
    rc = 0
    if "blending" in sections:
        ks = [int(k) for k in args.sources.split(",")]
        large = int(args.large_k_samples) if args.large_k_samples else n
        print(f"blending index: {os.cpu_count()} CPUs, numpy {np.__version__}", flush=True)
        rows = bench_blending(ks, n, large, args.skip_mcore)
        if args.json:
            out_dir = os.path.dirname(os.path.abspath(args.json))
            fd, tmp = tempfile.mkstemp(prefix=".bench_index.", dir=out_dir)
            with os.fdopen(fd, "w") as f:
                json.dump(rows, f, indent=1)
            os.replace(tmp, args.json)
    if "dataset" in sections:
        rc = run_dataset_section(args.dataset_args.split())
    return rc


if __name__ == "__main__":
    sys.exit(main())
