"""The dynamic blending index: which source each global sample position draws from.

This module validates inputs, takes a :class:`~chatflow.data.schedule.Schedule`'s piecewise table
(:mod:`chatflow.data.segment_table`, the form ``csrc/blending.h`` takes), and calls the C++
builders. Definitions:

* ``w_k(x)``: source k's normalized scheduled weight at global sample position x.
* ``W_k(x) = integral_0^x w_k``: the number of samples source k is owed after x positions.
* Exact mode: position i (with ``x = max(i, 1)``, as in megatron-core) takes
  ``argmax_k W_k(x) - count_k``, ties to the lowest k. On a constant schedule this is
  megatron-core's ``helpers_cpp.build_blending_indices``, element for element.
* Fast mode: sample j of source k is due where ``W_k`` first exceeds j; positions take samples in
  due order (ties to the lowest k). O(N + K) per window of positions instead of O(N * K), and
  position chunks build in parallel (``num_threads``) with the same output for any thread count.

Both keep ``count_k(n) <= W_k(n) + 1`` for every prefix of n positions, and ``W_k(n) - count_k(n)
<= K - 1`` (tests/test_blending.py measures how far inside those bounds real schedules stay).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import numpy as np

from chatflow import _C
from chatflow.data.schedule import MAX_SOURCES, Schedule
from chatflow.data.schedule_parts import ScheduleError, check_num_samples
from chatflow.data.segment_table import SegmentTable

logger = logging.getLogger(__name__)

# Fast mode, num_threads=None: at most this many threads, each with at least _MIN_PER_THREAD
# positions (below that, starting threads costs more than it saves).
MAX_AUTO_THREADS = 8
_MIN_PER_THREAD = 1 << 22


def segment_table(schedule: Schedule, num_samples: int) -> SegmentTable:
    """The piecewise table of ``schedule`` for a run of ``num_samples`` samples.

    Adjacent constant pieces with equal weights are merged, so a constant schedule is one segment
    starting at 0 and the exact builder's arithmetic is megatron-core's.
    """
    return schedule.segment_table(num_samples)


def blending_deficits(
    schedule: Schedule, num_samples: int, position: int, counts: Sequence[int]
) -> np.ndarray:
    """W_k(position) - counts[k]: what each source is owed (or ahead) after ``position`` samples.

    Pass the result as ``initial_deficits`` to continue a run bit for bit, or the old schedule's
    value when the schedule changed, so each source's sub-sample deficit carries over.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (schedule.num_sources,):
        raise ScheduleError(f"counts must have {schedule.num_sources} entries, got {counts.shape}")
    w = segment_table(schedule, num_samples).cumulative(np.array([float(position)]))[0]
    return w - counts.astype(np.float64)


def blending_counts(dataset_index: np.ndarray, num_sources: int) -> np.ndarray:
    """Exact number of samples each source contributes: int64[num_sources]."""
    return np.bincount(np.asarray(dataset_index), minlength=num_sources).astype(np.int64)


def build_blending_indices(
    schedule: Schedule,
    num_samples: int,
    exact: bool = True,
    *,
    start: int = 0,
    initial_counts: Sequence[int] | None = None,
    initial_deficits: Sequence[float] | None = None,
    out: tuple[np.ndarray, np.ndarray] | None = None,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Build the blending index for positions ``[start, num_samples)`` of a run.

    Args:
        schedule: the sources and their weight schedule.
        num_samples: total samples of the run (places ``at_fraction`` knots).
        exact: greedy largest-deficit mode (megatron-core compatible, O(N*K)); False for the
            fast due-order mode (O(N + K) per window, for many sources).
        start: first position to build (resume).
        initial_counts: samples each source gave before ``start`` (int64[K]); source k's sample
            indices continue from ``initial_counts[k]``. Default zeros.
        initial_deficits: deficit ``W_k - count_k`` carried in at ``start`` (float64[K]).
            Default zeros: the schedule's mix applies from ``start`` with no catch-up. Pass
            :func:`blending_deficits` of the run being continued to reproduce it exactly.
        out: optional ``(int16[N'], int64[N'])`` arrays to fill in place (e.g. reused buffers,
            which avoids first-touch page faults; the benchmark uses it to time the builder).
        num_threads: fast mode only: threads building position chunks in parallel. The output
            is identical for every value. None: :func:`default_num_threads` (1 for short runs).
            The exact mode is sequential and ignores it.

    Returns:
        ``(dataset_index int16[N'], dataset_sample_index int64[N'])`` with N' = num_samples -
        start: source id and sample index within that source for each position.
    """
    check_num_samples(num_samples)
    K = schedule.num_sources
    if K > MAX_SOURCES:
        raise ScheduleError(f"{K} sources; the int16 dataset index holds at most {MAX_SOURCES}")
    if (
        isinstance(start, bool)
        or not isinstance(start, (int, np.integer))
        or not 0 <= start <= num_samples
    ):
        raise ScheduleError(
            f"start must be an integer in [0, num_samples={num_samples}], got {start!r}"
        )
    counts = _vector(initial_counts, K, np.int64, "initial_counts")
    if np.any(counts < 0):
        raise ScheduleError(f"initial_counts must be >= 0, got {counts.tolist()}")
    carry = _vector(initial_deficits, K, np.float64, "initial_deficits")
    if not np.all(np.isfinite(carry)):
        raise ScheduleError("initial_deficits must be finite")
    table = segment_table(schedule, num_samples)
    # W'_k = W_k + offset_k makes W'_k(start) - counts_k equal the carried deficit. Written as
    # carry - (W - counts) so that a carry from blending_deficits gives an offset of exactly 0.
    w_start = table.cumulative(np.array([float(start)]))[0]
    offset = carry - (w_start - counts.astype(np.float64))
    if num_threads is None:
        threads = default_num_threads(num_samples - start)
    elif isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
        raise ScheduleError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    elif num_threads < 1:
        raise ScheduleError(f"num_threads must be >= 1, got {num_threads}")
    else:
        threads = int(num_threads)
    out_index, out_sample = out if out is not None else (None, None)
    args = (table.t0, table.t1, table.kind, table.base, table.a, table.d, int(start))
    args += (int(num_samples), counts, offset, out_index, out_sample)
    t_begin = time.perf_counter()
    if exact:
        threads = 1
        dataset_index, dataset_sample_index = _C.build_blending_exact(*args)
    else:
        dataset_index, dataset_sample_index = _C.build_blending_fast(*args, num_threads=threads)
    logger.debug(
        "blending index: %d positions, %d sources, %s mode, %d thread(s), %.3f s",
        num_samples - start,
        K,
        "exact" if exact else "fast",
        threads,
        time.perf_counter() - t_begin,
    )
    return dataset_index, dataset_sample_index


def default_num_threads(num_positions: int) -> int:
    """Threads the fast mode uses by default for ``num_positions`` positions.

    The CPUs this process may run on, at most :data:`MAX_AUTO_THREADS`, and at least
    ``_MIN_PER_THREAD`` positions per thread.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_AUTO_THREADS, num_positions // _MIN_PER_THREAD))


def _vector(v: Sequence | None, k: int, dtype: type, name: str) -> np.ndarray:
    if v is None:
        return np.zeros(k, dtype=dtype)
    arr = np.asarray(v)
    if arr.shape != (k,):
        raise ScheduleError(f"{name} must have shape ({k},), got {arr.shape}")
    if dtype is np.int64 and not np.issubdtype(arr.dtype, np.integer):
        raise ScheduleError(f"{name} must be integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)
