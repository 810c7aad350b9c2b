#!/usr/bin/env python
"""Benchmark ChatFlow's blending-index builders against megatron-core's, in one process.

For each source count K, on the same N positions:

* ``mcore static``: megatron-core ``helpers_cpp.build_blending_indices`` with constant weights
  (the baseline: all Megatron-LM can do);
* ``exact dynamic``: ChatFlow's exact mode on a dynamic schedule (random start and end mixes,
  linear ramp to mid-run, then held: the ChatFlow preset's shape);
* ``fast dynamic``: ChatFlow's fast mode on the same schedule, on ``--threads`` threads (default:
  ``default_num_threads``, printed; the output is the same for any thread count).

Reported: wall and process CPU time (all threads) with fresh output arrays (as a real build),
the same for the builder alone on reused, already touched output arrays (``builder-only``),
ratios to megatron-core on wall time (the fast mode may use several threads, so a thread's CPU
time would flatter it; the CPU columns show what the threads cost together), extra memory
(peak RSS during the call minus RSS before, minus the 10 bytes per position of the two output
arrays; sampled every 2 ms). With ``--repeat R`` each builder runs
R times in turn and the fastest run counts (first-touch page faults of fresh output arrays and
other tenants of the machine otherwise favour whichever runs second).
``--sections dataset`` also runs benchmarks/bench_dataset.py (per-source index build and
``__getitem__`` throughput), when that script exists.

Usage::

    python benchmarks/bench_index.py                       # N = 1e8, K = 2, 10, 100, 1000
    python benchmarks/bench_index.py --num-samples 1e7 --large-k-samples 1e7 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import psutil

from chatflow.data.blending import build_blending_indices, default_num_threads
from chatflow.data.schedule import Knot, Schedule, Source
from chatflow.fileio import atomic_write


class PeakRSS:
    """Samples this process's RSS in a thread while the (GIL-releasing) builder runs."""

    def __init__(self, interval: float = 0.002) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:  # noqa: PYI034 (typing.Self needs Python 3.11)
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


def measure(fn: Callable[[], tuple], n: int) -> tuple[float, float, float]:
    """(wall s, process CPU s, extra MiB beyond the outputs) of one call.

    Process CPU time counts every builder thread (and the ~2% of the RSS sampler).
    """
    gc.collect()
    with PeakRSS() as mem:
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
    del out
    gc.collect()
    extra = (mem.peak - mem.before - 10 * n) / 2**20
    return seconds, cpu, max(extra, 0.0)


def dynamic_schedule(K: int, seed: int) -> Schedule:
    rng = np.random.default_rng(seed)
    sources = tuple(Source(f"s{k}", f"/bench/s{k}") for k in range(K))
    knots = (
        Knot(tuple(rng.random(K) + 0.01), at_fraction=0.0),
        Knot(tuple(rng.random(K) + 0.01), at_fraction=0.5),
    )
    return Schedule(sources, knots)


def bench_blending(
    ks: list[int],
    n: int,
    large_k_samples: int,
    skip_mcore: bool,
    repeat: int = 1,
    threads: int | None = None,
) -> list[dict]:
    from megatron.core.datasets import helpers_cpp

    rows = []
    for K in ks:
        nk = n if K < 1000 else min(n, large_k_samples)
        schedule = dynamic_schedule(K, seed=K)
        static_w = np.array(schedule.knots[0].weights, dtype=np.float64)

        def mcore(out, nk=nk, w=static_w, K=K):
            di, dsi = out if out is not None else (np.empty(nk, np.int16), np.empty(nk, np.int64))
            helpers_cpp.build_blending_indices(di, dsi, w, K, nk, False)
            return di, dsi

        builders = {} if skip_mcore else {"mcore static": mcore}
        builders["exact dynamic"] = lambda out, s=schedule, nk=nk: build_blending_indices(
            s, nk, True, out=out
        )
        fast_threads = threads if threads is not None else default_num_threads(nk)
        builders["fast dynamic"] = lambda out, s=schedule, nk=nk, t=fast_threads: (
            build_blending_indices(s, nk, False, out=out, num_threads=t)
        )
        build_blending_indices(schedule, 1000)  # warm-up: import, page in the extension
        # Builder-only timing reuses these touched buffers: no first-touch page faults, which on
        # a VM can cost more than a cheap builder itself.
        bufs = (np.ones(nk, np.int16), np.ones(nk, np.int64))
        fresh: dict[str, tuple[float, float, float]] = {}
        reused: dict[str, tuple[float, float, float]] = {}
        for _ in range(repeat):  # in turn, so each sees the same machine state on average
            for mode, fn in builders.items():
                for store, out in ((fresh, None), (reused, bufs)):
                    r = measure(lambda fn=fn, out=out: fn(out), nk)
                    if mode not in store or r[0] < store[mode][0]:
                        store[mode] = r
        del bufs
        base = fresh.get("mcore static", (float("nan"),) * 2)[0]
        base_reused = reused.get("mcore static", (float("nan"),) * 2)[0]
        for mode, (sec, cpu, extra) in fresh.items():
            sec_b, cpu_b = reused[mode][:2]
            row = {
                "K": K,
                "N": nk,
                "mode": mode,
                "threads": fast_threads if mode.startswith("fast") else 1,
                "wall_s": round(sec, 3),
                "cpu_s": round(cpu, 3),
                "ratio_to_mcore": round(sec / base, 3),
                "builder_wall_s": round(sec_b, 3),
                "builder_cpu_s": round(cpu_b, 3),
                "builder_ratio_to_mcore": round(sec_b / base_reused, 3),
                "extra_MiB": round(extra, 1),
            }
            rows.append(row)
            print(
                f"K={K:>5} N={nk:.0e} {mode:<14} T={row['threads']}  fresh wall {sec:6.2f} s "
                f"cpu {cpu:6.2f} s (x{sec / base:5.3f})  builder-only wall {sec_b:6.2f} s "
                f"cpu {cpu_b:6.2f} s (x{sec_b / base_reused:5.3f})  extra {extra:6.1f} MiB",
                flush=True,
            )
    return rows


def run_dataset_section(extra_args: list[str]) -> int:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_dataset.py")
    return subprocess.call([sys.executable, script, *extra_args])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", type=float, default=1e8, help="positions N (default 1e8)")
    p.add_argument("--sources", default="2,10,100,1000", help="comma-separated source counts K")
    p.add_argument(
        "--large-k-samples",
        type=float,
        default=None,
        help="cap N for K >= 1000 (megatron-core needs ~85 s at K=1000, N=1e8)",
    )
    p.add_argument(
        "--sections",
        default="blending",
        help="comma-separated: blending, dataset (runs benchmarks/bench_dataset.py)",
    )
    p.add_argument("--dataset-args", default="", help="arguments passed to bench_dataset.py")
    p.add_argument("--repeat", type=int, default=1, help="runs per builder; the fastest counts")
    p.add_argument("--skip-mcore", action="store_true", help="time ChatFlow's builders only")
    p.add_argument(
        "--threads", type=int, default=None, help="fast mode threads (default: automatic)"
    )
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
        rows = bench_blending(ks, n, large, args.skip_mcore, args.repeat, args.threads)
        if args.json:
            atomic_write(args.json, json.dumps(rows, indent=1))
    if "dataset" in sections:
        rc = run_dataset_section(args.dataset_args.split())
    return rc


if __name__ == "__main__":
    sys.exit(main())
