"""The piecewise table of a schedule's cumulative weights W_k, as the C++ builders take it.

Pure numpy: :meth:`chatflow.data.schedule.Schedule.segment_table` builds it from the knots, the
blending builders (:mod:`chatflow.data.blending`, ``csrc/blending.h``) walk it, and
:meth:`SegmentTable.cumulative` evaluates W_k in closed form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KIND_CONSTANT, KIND_LINEAR, KIND_COSINE = 0, 1, 2
# A step holds the left knot's weights, so its segment is constant.
_KINDS = {"linear": KIND_LINEAR, "cosine": KIND_COSINE, "step": KIND_CONSTANT}


@dataclass(frozen=True)
class SegmentTable:
    """Piecewise description of W_k for one run length (see ``csrc/blending.h``).

    Segment s covers ``[t0[s], t1[s])`` (the last one to +inf); in it
    ``W_k(t0 + u) = base[s,k] + a[s,k] * u + d[s,k] * P_s(u)``.
    """

    t0: np.ndarray  # float64[S]
    t1: np.ndarray  # float64[S]
    kind: np.ndarray  # int8[S]
    base: np.ndarray  # float64[S, K]
    a: np.ndarray  # float64[S, K]
    d: np.ndarray  # float64[S, K]

    @property
    def num_sources(self) -> int:
        """K."""
        return self.base.shape[1]

    def cumulative(self, x: np.ndarray) -> np.ndarray:
        """W_k(x) for positions x (float64[len]) -> float64[len, K], in closed form."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        s = np.clip(np.searchsorted(self.t0, x, side="right") - 1, 0, len(self.t0) - 1)
        u = np.maximum(x - self.t0[s], 0.0)[:, None]
        length = (self.t1 - self.t0)[s][:, None]
        p = np.zeros_like(u)
        lin = self.kind[s] == KIND_LINEAR
        cos = self.kind[s] == KIND_COSINE
        p[lin] = u[lin] * u[lin] * (0.5 / length[lin])
        p[cos] = u[cos] * 0.5 - length[cos] / (2 * np.pi) * np.sin(u[cos] * (np.pi / length[cos]))
        return self.base[s] + self.a[s] * u + self.d[s] * p


def build_segment_table(
    positions: np.ndarray, weights: np.ndarray, interpolations: Sequence[str]
) -> SegmentTable:
    """The table of knots at ``positions`` (float64[J], increasing) with normalized ``weights``
    (float64[J, K]) and each knot's interpolation to the next one.

    Adjacent constant pieces with equal weights are merged, so a constant schedule is one segment
    starting at 0 and the exact builder's arithmetic is megatron-core's.
    """
    t, w = positions, weights
    pieces: list[tuple[float, float, int, np.ndarray, np.ndarray]] = []  # t0, t1, kind, a, d

    def add(t0: float, t1: float, kind: int, a: np.ndarray, d: np.ndarray) -> None:
        if kind != KIND_CONSTANT and not np.any(d):
            kind = KIND_CONSTANT  # equal weights at both knots: no shape to follow
        if (
            kind == KIND_CONSTANT
            and pieces
            and pieces[-1][2] == KIND_CONSTANT
            and np.array_equal(pieces[-1][3], a)
        ):
            pieces[-1] = (pieces[-1][0], t1, KIND_CONSTANT, a, pieces[-1][4])
            return
        pieces.append((t0, t1, kind, a, d if kind != KIND_CONSTANT else np.zeros_like(a)))

    if t[0] > 0:  # the first knot's weights hold before it
        add(0.0, float(t[0]), KIND_CONSTANT, w[0], np.zeros_like(w[0]))
    for j in range(len(t) - 1):
        add(float(t[j]), float(t[j + 1]), _KINDS[interpolations[j]], w[j], w[j + 1] - w[j])
    add(float(t[-1]), np.inf, KIND_CONSTANT, w[-1], np.zeros_like(w[-1]))

    t0 = np.array([p[0] for p in pieces], dtype=np.float64)
    t1 = np.array([p[1] for p in pieces], dtype=np.float64)
    kind = np.array([p[2] for p in pieces], dtype=np.int8)
    a = np.array([p[3] for p in pieces], dtype=np.float64)
    d = np.array([p[4] for p in pieces], dtype=np.float64)
    base = np.zeros_like(a)
    for s in range(len(pieces) - 1):
        length = t1[s] - t0[s]
        # Integral over the whole segment: both linear and cosine shapes average 1/2.
        inc = length * a[s] if kind[s] == KIND_CONSTANT else length * (a[s] + 0.5 * d[s])
        base[s + 1] = base[s] + inc
    return SegmentTable(t0, t1, kind, base, a, d)
