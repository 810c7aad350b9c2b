"""Blending-index builders: megatron-core parity, Python references, prefix bounds, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from reference_blending import ref_build_exact, ref_build_fast, ref_prefix_counts

from chatflow import _C
from chatflow.data.blending import (
    blending_counts,
    blending_deficits,
    build_blending_indices,
    segment_table,
)
from chatflow.data.schedule import Knot, Schedule, ScheduleError, Source

pytestmark = pytest.mark.unit

helpers_cpp = pytest.importorskip("megatron.core.datasets.helpers_cpp")


def make_schedule(weights, ats=None, kinds=None, fractions=False) -> Schedule:
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    K = weights.shape[1]
    ats = [0] * len(weights) if ats is None else ats
    kinds = kinds or ["linear"] * len(weights)
    key = "at_fraction" if fractions else "at"
    knots = tuple(
        Knot(tuple(w), interpolation=kd, **{key: at}) for w, at, kd in zip(weights, ats, kinds)
    )
    return Schedule(tuple(Source(f"s{k}", f"/nonexistent/p{k}") for k in range(K)), knots)


def random_schedule(rng: np.random.Generator, num_samples: int, max_k: int = 6) -> Schedule:
    """Random knots (1-4), kinds, zero weights and positions inside and beyond the run."""
    K = int(rng.integers(1, max_k + 1))
    J = int(rng.integers(1, 5))
    w = rng.random((J, K))
    w[rng.random((J, K)) < 0.25] = 0.0  # zero-weight periods
    for j in range(J):
        if w[j].sum() == 0:
            w[j, rng.integers(K)] = 1.0
    first = 0 if rng.random() < 0.6 else int(rng.integers(1, num_samples + 2))
    gaps = rng.integers(1, max(2, num_samples // 2), size=J - 1)
    ats = [first] + list(first + np.cumsum(gaps))
    if rng.random() < 0.2:
        ats[-1] = 10 * num_samples + 7  # knot beyond the run
        ats = sorted(set(ats))
        w = w[: len(ats)]
    kinds = list(rng.choice(["linear", "cosine", "step"], size=len(ats)))
    return make_schedule(w, ats, kinds)


def mcore_blend(weights: np.ndarray, n: int):
    di = np.zeros(n, dtype=np.int16)
    dsi = np.zeros(n, dtype=np.int64)
    helpers_cpp.build_blending_indices(di, dsi, weights, len(weights), n, False)
    return di, dsi


def check_prefix_bound(schedule, n, di, offset=None, slack=0.0):
    """count_k(m) <= W_k(m) + 1 and W_k(m) - count_k(m) <= K - 1 for every prefix m."""
    K = schedule.num_sources
    counts = ref_prefix_counts(di, K)
    W = segment_table(schedule, n).cumulative(np.arange(len(di) + 1, dtype=np.float64))
    if offset is not None:
        W = W + offset
    dev = W - counts
    assert dev.min() >= -1.0 - 1e-9 - slack, dev.min()
    assert dev.max() <= (K - 1) + 1e-9 + slack, dev.max()
    return dev


# ---------------------------------------------------------------------------- megatron parity
@pytest.mark.parametrize("seed", range(4))
def test_constant_schedule_equals_megatron(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        K = int(rng.integers(1, 40))
        n = int(rng.integers(0, 4000))
        w = rng.random(K) + 1e-6
        if rng.random() < 0.3:
            w = np.round(w * 3) + 1  # ties: small integer ratios
        s = make_schedule(w)
        di, dsi = build_blending_indices(s, n)
        mdi, mdsi = mcore_blend(np.array(s.knots[0].weights), n)
        np.testing.assert_array_equal(di, mdi)
        np.testing.assert_array_equal(dsi, mdsi)


def test_constant_parity_large_and_data_path():
    s = Schedule.from_data_path(["0.3", "a", "0.2", "b", "0.5", "c", "1e-3", "d"])
    n = 300_000
    mdi, mdsi = mcore_blend(np.array(s.knots[0].weights), n)
    di, dsi = build_blending_indices(s, n)
    np.testing.assert_array_equal(di, mdi)
    np.testing.assert_array_equal(dsi, mdsi)
    # The same constant mix written with several equal knots is merged into one segment.
    w = s.knots[0].weights
    s2 = make_schedule([w, w, w], ats=[0, 1000, 5000], kinds=["cosine", "step", "linear"])
    di2, _ = build_blending_indices(s2, n)
    mdi2, _ = mcore_blend(np.array(s2.knots[0].weights), n)  # renormalizing may move a bit
    np.testing.assert_array_equal(di2, mdi2)


# ---------------------------------------------------------------------------- references
@pytest.mark.parametrize("seed", range(6))
def test_exact_and_fast_equal_reference(seed):
    rng = np.random.default_rng(100 + seed)
    max_k = 6 if seed < 4 else 40  # > 12 sources: the exact builder's two-pass argmax
    for _ in range(5):
        n = int(rng.integers(1, 1500))
        s = random_schedule(rng, n, max_k=max_k)
        t = segment_table(s, n)
        zero_c, zero_o = np.zeros(s.num_sources, np.int64), np.zeros(s.num_sources)
        di, dsi = build_blending_indices(s, n, exact=True)
        rdi, rdsi = ref_build_exact(t, 0, n, zero_c, zero_o, _C.BLEND_ANCHOR_EVERY)
        np.testing.assert_array_equal(di, rdi)
        np.testing.assert_array_equal(dsi, rdsi)
        fdi, fdsi = build_blending_indices(s, n, exact=False)
        rfdi, rfdsi = ref_build_fast(t, 0, n, zero_c, zero_o)
        np.testing.assert_array_equal(fdi, rfdi)
        np.testing.assert_array_equal(fdsi, rfdsi)


def test_cosine_anchor_blocks_and_windows_equal_reference():
    """Long enough to cross several cosine re-anchoring blocks and a fast-mode window."""
    n = _C.BLEND_WINDOW + 3000
    s = make_schedule([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], ats=[1000, n - 500], kinds=["cosine"] * 2)
    t = segment_table(s, n)
    zc, zo = np.zeros(3, np.int64), np.zeros(3)
    di, dsi = build_blending_indices(s, 5000)
    rdi, rdsi = ref_build_exact(segment_table(s, 5000), 0, 5000, zc, zo, _C.BLEND_ANCHOR_EVERY)
    np.testing.assert_array_equal(di, rdi)
    np.testing.assert_array_equal(dsi, rdsi)
    fdi, fdsi = build_blending_indices(s, n, exact=False)
    rfdi, rfdsi = ref_build_fast(t, 0, n, zc, zo)
    np.testing.assert_array_equal(fdi, rfdi)
    np.testing.assert_array_equal(fdsi, rfdsi)


# ---------------------------------------------------------------------------- prefix bounds
@pytest.mark.parametrize("exact", [True, False])
def test_prefix_bound_random_schedules(exact):
    rng = np.random.default_rng(7 if exact else 8)
    worst = 0.0
    for _ in range(30):
        n = int(rng.integers(1, 20_000))
        s = random_schedule(rng, n, max_k=12)
        di, dsi = build_blending_indices(s, n, exact=exact)
        dev = check_prefix_bound(s, n, di)
        worst = max(worst, dev.max())
        # Sample indices of each source are 0, 1, 2, ... in order.
        for k in range(s.num_sources):
            np.testing.assert_array_equal(dsi[di == k], np.arange(np.sum(di == k)))
    assert worst > 0.5  # the bound is exercised, not vacuous


def test_fast_matches_exact_proportions_many_sources():
    rng = np.random.default_rng(3)
    K, n = 200, 30_000
    s = make_schedule(
        rng.random((3, K)) ** 2, ats=[0, 10_000, 22_000], kinds=["linear", "cosine", "linear"]
    )
    ex, _ = build_blending_indices(s, n, exact=True)
    fa, _ = build_blending_indices(s, n, exact=False)
    ce, cf = ref_prefix_counts(ex, K), ref_prefix_counts(fa, K)
    assert np.abs(ce - cf).max() <= K  # both lie in [W - (K-1), W + 1]
    assert np.abs(ce[-1] - cf[-1]).max() <= 2  # in practice they end almost identical
    check_prefix_bound(s, n, fa)


# ---------------------------------------------------------------------------- edge cases
def test_single_source():
    s = make_schedule([[1.0]])
    for exact in (True, False):
        di, dsi = build_blending_indices(s, 1000, exact=exact)
        assert di.dtype == np.int16 and dsi.dtype == np.int64
        assert not di.any()
        np.testing.assert_array_equal(dsi, np.arange(1000))


@pytest.mark.parametrize("exact", [True, False])
def test_zero_weight_periods_and_step(exact):
    # Source 2 has zero weight until the step at 1000, source 0 has zero weight all along.
    s = make_schedule([[0.0, 1.0, 0.0], [0.0, 0.5, 0.5]], ats=[0, 1000], kinds=["step", "step"])
    di, _ = build_blending_indices(s, 3000, exact=exact)
    assert not np.any(di == 0)
    assert not np.any(di[:1000] == 2)
    assert np.sum(di == 2) == 1000  # exactly W_2(3000) = 0.5 * 2000
    check_prefix_bound(s, 3000, di)


def test_knots_beyond_run_and_fraction_knots():
    n = 1000
    s_far = make_schedule([[1, 0], [0, 1]], ats=[0, 4 * n])  # reaches 25% of the way at n
    di, _ = build_blending_indices(s_far, n)
    W = segment_table(s_far, n).cumulative(np.array([float(n)]))[0]
    assert abs(np.sum(di == 1) - W[1]) <= 1
    assert W[1] == pytest.approx(n * 0.25 / 2)
    s_frac = make_schedule([[1, 0], [0, 1]], ats=[0.0, 1.0], fractions=True)
    for n in (10, 1000):  # same shape at any run length
        di, _ = build_blending_indices(s_frac, n)
        assert abs(np.sum(di == 1) - n / 2) <= 1


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_continuation_equals_tail_of_full_build(exact, kind):
    n = 5000
    s = make_schedule([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]], ats=[0, 3000], kinds=[kind, kind])
    full_di, full_dsi = build_blending_indices(s, n, exact=exact)
    for start in (1, 2, 999, 1025, 2999, 3000, 4321, n):
        counts = blending_counts(full_di[:start], 3)
        carry = blending_deficits(s, n, start, counts)
        di, dsi = build_blending_indices(
            s, n, exact=exact, start=start, initial_counts=counts, initial_deficits=carry
        )
        np.testing.assert_array_equal(di, full_di[start:])
        np.testing.assert_array_equal(dsi, full_dsi[start:])


@pytest.mark.parametrize("exact", [True, False])
def test_changed_schedule_continues_each_source(exact):
    n, m = 4000, 1500
    s1 = make_schedule([[0.5, 0.5, 0.0]])
    s2 = make_schedule([[0.1, 0.3, 0.6]])
    di1, dsi1 = build_blending_indices(s1, n, exact=exact)
    counts = blending_counts(di1[:m], 3)
    di2, dsi2 = build_blending_indices(s2, n, exact=exact, start=m, initial_counts=counts)
    di = np.concatenate([di1[:m], di2])
    dsi = np.concatenate([dsi1[:m], dsi2])
    for k in range(3):  # each source's samples form exactly a prefix of its order
        np.testing.assert_array_equal(dsi[di == k], np.arange(np.sum(di == k)))
    # The new mix applies from m on, with no catch-up of the old history (default carry 0).
    offset = counts - segment_table(s2, n).cumulative(np.array([float(m)]))[0]
    W = segment_table(s2, n).cumulative(np.arange(m, n + 1, dtype=np.float64)) + offset
    dev = W - ref_prefix_counts(di2, 3) - counts
    assert dev.min() >= -1 - 1e-9 and dev.max() <= 2 + 1e-9


def test_int16_limit_and_input_validation():
    with pytest.raises(ScheduleError, match="32767"):
        make_schedule(np.ones(32768))
    s = make_schedule(np.ones(32767))
    di, _ = build_blending_indices(s, 40_000, exact=False)
    assert di.max() == 32766 and di.min() == 0
    di, _ = build_blending_indices(s, 64)
    np.testing.assert_array_equal(di, np.arange(64))
    s3 = make_schedule([1, 1, 1])
    with pytest.raises(ScheduleError, match="initial_counts"):
        build_blending_indices(s3, 10, start=2, initial_counts=[1, 1])
    with pytest.raises(ScheduleError, match="initial_counts"):
        build_blending_indices(s3, 10, start=2, initial_counts=[-1, 1, 2])
    with pytest.raises(ScheduleError, match="start"):
        build_blending_indices(s3, 10, start=11)
    with pytest.raises(ScheduleError, match="num_samples"):
        build_blending_indices(s3, -1)


def test_fills_given_output_arrays():
    s = make_schedule([[0.2, 0.8], [0.9, 0.1]], ats=[0, 500])
    want_di, want_dsi = build_blending_indices(s, 1000, exact=False)
    out = (np.full(1000, -1, np.int16), np.full(1000, -1, np.int64))
    di, _ = build_blending_indices(s, 1000, exact=False, out=out)
    assert di is out[0] or np.shares_memory(di, out[0])
    np.testing.assert_array_equal(out[0], want_di)
    np.testing.assert_array_equal(out[1], want_dsi)
    with pytest.raises(ValueError, match="int16"):
        build_blending_indices(s, 1000, out=(np.zeros(1000, np.int32), out[1]))
    with pytest.raises(ValueError, match="length 1000"):
        build_blending_indices(s, 1000, out=(np.zeros(999, np.int16), out[1]))


# ---------------------------------------------------------------------------- fast mode threads
def _threads_agree(s, n, **kw):
    """The fast mode's output for 1 thread equals that for several, element for element."""
    want_di, want_dsi = build_blending_indices(s, n, exact=False, num_threads=1, **kw)
    fallbacks = _C.blend_fast_fallbacks()
    for threads in (2, 3, 5, 16):
        di, dsi = build_blending_indices(s, n, exact=False, num_threads=threads, **kw)
        np.testing.assert_array_equal(di, want_di, err_msg=f"{threads} threads")
        np.testing.assert_array_equal(dsi, want_dsi, err_msg=f"{threads} threads")
    # The chunks really ran in parallel: no boundary check failed into the one-thread rebuild.
    assert _C.blend_fast_fallbacks() == fallbacks
    return want_di, want_dsi


def test_fast_threads_identical_random_schedules():
    rng = np.random.default_rng(11)
    for _ in range(6):
        n = int(rng.integers(3, 12)) * _C.BLEND_WINDOW + int(rng.integers(0, 100))
        _threads_agree(random_schedule(rng, n, max_k=30), n)


def test_fast_threads_identical_with_ties_on_chunk_boundaries():
    """Dyadic weights release at exact integers, so every window (and chunk) boundary holds a
    tie of several sources; one source releases every position."""
    n = 9 * _C.BLEND_WINDOW + 5
    s = make_schedule([0.5, 0.25, 0.125, 0.125])
    di, dsi = _threads_agree(s, n)
    rdi, rdsi = ref_build_fast(segment_table(s, n), 0, n, np.zeros(4, np.int64), np.zeros(4))
    np.testing.assert_array_equal(di, rdi)
    np.testing.assert_array_equal(dsi, rdsi)
    for m in range(1, 10):  # all four sources are due exactly at each window boundary L
        L = m * _C.BLEND_WINDOW  # releases before L: L/2 + L/4 + L/8 + L/8 = L
        np.testing.assert_array_equal(di[L : L + 4], [0, 1, 2, 3])
    _threads_agree(make_schedule([[1.0]]), n)
    # A linear ramp of dyadic weights: ties at integer positions inside a dynamic segment.
    _threads_agree(make_schedule([[0.5, 0.5], [0.75, 0.25]], ats=[0, 8 * _C.BLEND_WINDOW]), n)


def test_fast_threads_identical_many_sources_and_resume():
    rng = np.random.default_rng(5)
    K = 1500  # window grows to 8192 positions
    s = make_schedule(rng.random((2, K)) + 0.01, ats=[0, 20_000], kinds=["cosine", "linear"])
    _threads_agree(s, 50_000)
    # Resumed with a carried deficit: overdue releases before `start` in the first window.
    s3 = make_schedule([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]], ats=[0, 30_000])
    carry = np.array([25.5, -20.0, -5.5])
    _threads_agree(s3, 60_000, start=1234, initial_counts=[700, 400, 100], initial_deficits=carry)


def test_fast_num_threads_validation_and_default():
    from chatflow.data.blending import default_num_threads

    s = make_schedule([0.5, 0.5])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ScheduleError, match="num_threads"):
            build_blending_indices(s, 100, exact=False, num_threads=bad)
    assert default_num_threads(1000) == 1  # short builds stay on one thread
    assert 1 <= default_num_threads(10**9) <= 8
    di, _ = build_blending_indices(s, 100, exact=True, num_threads=4)  # exact mode ignores it
    np.testing.assert_array_equal(di, np.arange(100) % 2)
