"""Slow pure-Python references of the C++ blending builders (csrc/blending.cpp).

Written from the definitions in csrc/blending.h, one position (exact) or one release (fast) at a
time, in plain Python floats (IEEE doubles, like the C++ without fused multiply-add), so the C++
must agree element for element. The fast reference orders releases with one global sort instead
of the C++ windowed bucket sort, which is what that part of the C++ is tested against.
"""

from __future__ import annotations

import math

import numpy as np

KIND_CONSTANT, KIND_LINEAR, KIND_COSINE = 0, 1, 2


class _Seg:
    """Per-segment constants, derived from (t0, t1) with the same operations as the C++."""

    def __init__(self, table, s: int) -> None:
        self.kind = int(table.kind[s])
        self.t0 = float(table.t0[s])
        self.len = float(table.t1[s]) - float(table.t0[s])
        if self.kind != KIND_CONSTANT:
            self.half_inv_len = 0.5 / self.len
            self.angle = math.pi / self.len
            self.amp = self.len / (2.0 * math.pi)
            self.cos_step = math.cos(self.angle)
            self.sin_step = math.sin(self.angle)


def _segment_of(table, x: float) -> int:
    s = 0
    while s + 1 < len(table.t0) and x >= float(table.t1[s]):
        s += 1
    return s


def _first_position(s: int, t0: float) -> int:
    return 0 if s == 0 else math.ceil(t0)


def ref_build_exact(table, start: int, end: int, initial_counts, offset, anchor_every: int):
    """Exact (largest-deficit) builder, one position at a time."""
    K = table.base.shape[1]
    count = [int(c) for c in initial_counts]
    offset = [float(o) for o in offset]
    di = np.zeros(end - start, dtype=np.int16)
    dsi = np.zeros(end - start, dtype=np.int64)
    cur_seg = None
    active: list[int] = []
    e: dict[int, float] = {}
    sin_state = None  # (position, sin, cos) of the cosine phase
    for i in range(start, end):
        x = float(max(i, 1))
        s = _segment_of(table, x)
        if s != cur_seg:
            cur_seg = s
            g = _Seg(table, s)
            first_i = _first_position(s, g.t0)
            active, e = [], {}
            for k in range(K):
                ak, dk = float(table.a[s, k]), float(table.d[s, k])
                ek = (float(table.base[s, k]) + offset[k]) - float(count[k])
                if ak > 0.0 or dk != 0.0 or ek > 0.0:
                    active.append(k)
                    e[k] = ek
            sin_state = None
        u = x - g.t0
        p = 0.0
        if g.kind == KIND_LINEAR:
            p = (u * u) * g.half_inv_len
        elif g.kind == KIND_COSINE:
            is_anchor = i <= 1 or i == first_i or i % anchor_every == 0
            if is_anchor:
                sn, cs = math.sin(u * g.angle), math.cos(u * g.angle)
            else:
                if sin_state is None or sin_state[0] != i - 1:
                    anchor = max(first_i, (i // anchor_every) * anchor_every, 1)
                    theta = (float(anchor) - g.t0) * g.angle
                    sin_state = (anchor, math.sin(theta), math.cos(theta))
                    while sin_state[0] < i - 1:
                        q, sn0, cs0 = sin_state
                        sin_state = (
                            q + 1,
                            sn0 * g.cos_step + cs0 * g.sin_step,
                            cs0 * g.cos_step - sn0 * g.sin_step,
                        )
                _, sn0, cs0 = sin_state
                sn, cs = sn0 * g.cos_step + cs0 * g.sin_step, cs0 * g.cos_step - sn0 * g.sin_step
            sin_state = (i, sn, cs)
            p = u * 0.5 - g.amp * sn
        best, best_k = -math.inf, -1
        for k in active:
            v = e[k] + float(table.a[s, k]) * u
            if g.kind != KIND_CONSTANT:
                v = v + float(table.d[s, k]) * p
            if v > best:
                best, best_k = v, k
        di[i - start] = best_k
        dsi[i - start] = count[best_k]
        count[best_k] += 1
        e[best_k] -= 1.0
    return di, dsi


def _invert_cosine(g: _Seg, a: float, d: float, delta: float) -> float:
    lo, hi = 0.0, g.len
    rate = a + 0.5 * d
    u = min(max(delta / rate, lo), hi)
    for _ in range(100):
        f = a * u + d * (u * 0.5 - g.amp * math.sin(u * g.angle)) - delta
        if f == 0.0:
            break
        if f > 0.0:
            hi = u
        else:
            lo = u
        fp = a + d * (0.5 - 0.5 * math.cos(u * g.angle))
        un = u - f / fp if fp > 0.0 else 0.5 * (lo + hi)
        if not (lo < un < hi):
            un = 0.5 * (lo + hi)
        step = abs(un - u)
        u = un
        if step <= 1e-13 * max(1.0, u) or hi - lo <= 1e-13 * max(1.0, u):
            break
    return u


def ref_release_position(table, k: int, y: float) -> float:
    """First x where W_k(x) exceeds y (+inf if never): the due position of a sample."""
    S = len(table.t0)
    s = 0
    while True:
        if s + 1 < S:
            w_end = float(table.base[s + 1, k])
        else:
            w_end = math.inf if float(table.a[s, k]) > 0.0 else float(table.base[s, k])
        if w_end > y:
            break
        if s + 1 >= S:
            return math.inf
        s += 1
    g = _Seg(table, s)
    a, d = float(table.a[s, k]), float(table.d[s, k])
    delta = y - float(table.base[s, k])
    if not delta > 0.0:
        return g.t0
    if g.kind == KIND_CONSTANT or d == 0.0:
        u = delta / a
    elif g.kind == KIND_LINEAR:
        q = max(a * a + 2.0 * (d / g.len) * delta, 0.0)
        den = a + math.sqrt(q)
        u = 2.0 * delta / den if den > 0.0 else 0.0
    else:
        u = _invert_cosine(g, a, d, delta)
    if s + 1 < S:
        u = min(u, g.len)
    return g.t0 + u


def ref_build_fast(table, start: int, end: int, initial_counts, offset):
    """Fast (due-order) builder: every release, one global sort by (position, source)."""
    K = table.base.shape[1]
    n = end - start
    horizon = float(end) + 1.0
    while True:
        releases = []
        for k in range(K):
            j, prev = int(initial_counts[k]), -math.inf
            while True:
                r = max(prev, ref_release_position(table, k, float(j) - float(offset[k])))
                if r >= horizon:
                    break
                releases.append((r, k))
                prev, j = r, j + 1
        if len(releases) >= n or horizon > 4 * (end + 10):
            break
        horizon *= 2  # carried deficits can push the n-th release past `end`
    releases.sort()
    di = np.zeros(n, dtype=np.int16)
    dsi = np.zeros(n, dtype=np.int64)
    emitted = [int(c) for c in initial_counts]
    for pos, (_, k) in enumerate(releases[:n]):
        di[pos] = k
        dsi[pos] = emitted[k]
        emitted[k] += 1
    return di, dsi


def ref_prefix_counts(dataset_index: np.ndarray, num_sources: int) -> np.ndarray:
    """counts[n, k]: samples of source k among the first n positions, n = 0..N."""
    out = np.zeros((len(dataset_index) + 1, num_sources), dtype=np.int64)
    for k in range(num_sources):
        out[1:, k] = np.cumsum(dataset_index == k)
    return out
