// Exact blending-index builder, and the segment constants it shares with the fast builder
// (blending_fast.cpp); see blending.h for the model and the guarantees.
//
// Floating point: the exact builder must reproduce megatron-core's comparisons bit for bit on a
// constant schedule, and tests/reference_blending.py reproduces every operation of this file in
// Python. Both rely on plain IEEE double arithmetic in the written order: no -ffast-math, and no
// fused multiply-add contraction. The default x86-64 target has no FMA, so none happens; on a
// target with FMA (aarch64, -march=native) build with -ffp-contract=off. A per-file
// `#pragma GCC optimize` would do it too, but it changed GCC 12's inlining here and cost 40% at
// K = 10. tests/test_blending.py (C++ == Python reference, megatron parity) catches a violation.
#include "blending.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

namespace chatflow {
namespace detail {

Segment make_segment(const SegmentTable& t, int64_t s) {
  constexpr double kPi = 3.141592653589793;
  Segment g{};
  g.kind = t.kind[s];
  g.t0 = t.t0[s];
  g.len = t.t1[s] - t.t0[s];
  if (g.kind != kConstant) {
    g.half_inv_len = 0.5 / g.len;
    g.angle = kPi / g.len;
    g.amp = g.len / (2.0 * kPi);
    g.cos_step = std::cos(g.angle);
    g.sin_step = std::sin(g.angle);
  }
  return g;
}

std::vector<Segment> make_segments(const SegmentTable& t) {
  std::vector<Segment> segs;
  segs.reserve(t.num_segments);
  for (int64_t s = 0; s < t.num_segments; ++s) segs.push_back(make_segment(t, s));
  return segs;
}

}  // namespace detail

namespace {

using detail::Segment;
using detail::make_segments;

constexpr double kInf = std::numeric_limits<double>::infinity();
// The exact builder's argmax: one branch-free pass up to kScanBranchless sources, one branchy
// pass up to kScanDirectly, two passes beyond (see argmax_deficit). Tuned on x86-64.
constexpr int64_t kScanBranchless = 4;
constexpr int64_t kScanDirectly = 11;

// ------------------------------------------------------------------------------ exact builder
struct ExactState {
  int64_t start;
  int16_t* dataset_index;
  int64_t* dataset_sample_index;
  std::vector<int64_t> count;  // per source, including initial_counts
  // Compacted per-segment arrays over the sources that can be picked (see load_segment).
  std::vector<int32_t> id;
  std::vector<double> e, a, d;
  std::vector<double> v;  // scratch: this position's deficits
  int64_t n = 0;
};

// Smallest position i whose x = max(i, 1) lies in a segment starting at t0.
int64_t first_position(int64_t s, double t0) {
  return s == 0 ? 0 : static_cast<int64_t>(std::ceil(t0));
}

// Argmax of v[j] = e[j] + a[j] * u (+ d[j] * P), first index on ties; the constant form is
// exactly megatron-core's weight * t - count when e = -count. Three strategies by size, each
// returning the first maximum exactly as a sequential `>` scan does (see kScanBranchless):
template <int Kind>
inline double deficit(const double* e, const double* a, const double* d, int64_t j, double u,
                      double p) {
  double x = e[j] + a[j] * u;
  if (Kind != kConstant) x = x + d[j] * p;
  return x;
}

enum Scan : int { kScanCmov = 0, kScanBranchy = 1, kScanTwoPass = 2 };

// The strategy is picked once per segment (a template argument), so the compiler never learns a
// bound on n inside a strategy: with one, GCC 12 specialized the branchy loop and slowed it by 40%
// at exactly n == the bound.
template <int Kind, int Strategy>
inline int64_t argmax_deficit(const double* e, const double* a, const double* d, double* v,
                              int64_t n, double u, double p) {
  double best = -kInf;
  int64_t best_j = 0;
  if (Strategy == kScanCmov) {
    // Conditional moves: with very few sources the winner flips unpredictably.
    for (int64_t j = 0; j < n; ++j) {
      const double x = deficit<Kind>(e, a, d, j, u, p);
      const bool better = x > best;
      best_j = better ? j : best_j;
      best = better ? x : best;
    }
    return best_j;
  }
  if (Strategy == kScanBranchy) {
    // One branchy pass: only a few new running maxima per scan to mispredict.
    for (int64_t j = 0; j < n; ++j) {
      const double x = deficit<Kind>(e, a, d, j, u, p);
      if (x > best) {
        best = x;
        best_j = j;
      }
    }
    return best_j;
  }
  // Two branch-free passes: deficits into v (a loop the compiler vectorizes) and four
  // independent max chains, then the first index holding the maximum. Tracking the index in one
  // pass mispredicts at every new running maximum, which dominated the cost at K ~ 100.
  for (int64_t j = 0; j < n; ++j) v[j] = deficit<Kind>(e, a, d, j, u, p);
  double m0 = -kInf, m1 = -kInf, m2 = -kInf, m3 = -kInf;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    m0 = v[j] > m0 ? v[j] : m0;
    m1 = v[j + 1] > m1 ? v[j + 1] : m1;
    m2 = v[j + 2] > m2 ? v[j + 2] : m2;
    m3 = v[j + 3] > m3 ? v[j + 3] : m3;
  }
  for (; j < n; ++j) m0 = v[j] > m0 ? v[j] : m0;
  m0 = m1 > m0 ? m1 : m0;
  m2 = m3 > m2 ? m3 : m2;
  best = m2 > m0 ? m2 : m0;
  j = 0;
  while (v[j] != best) ++j;  // the maximum is one of the v[j]: always found
  return j;
}

template <int Kind, int Strategy>
void run_exact(ExactState& st, const Segment& g, int64_t first_i, int64_t i, int64_t i_hi) {
  double sn = 0.0, cs = 1.0;  // sin/cos of the cosine phase at the previous position
  auto is_anchor = [&](int64_t pos) {
    return pos <= 1 || pos == first_i || pos % kAnchorEvery == 0;
  };
  if (Kind == kCosine && !is_anchor(i)) {
    // Start mid-block (a resumed build): replay from the block's anchor so the values equal
    // those of a build that ran through this block from its beginning.
    const int64_t anchor = std::max({first_i, (i / kAnchorEvery) * kAnchorEvery, int64_t{1}});
    const double theta = (static_cast<double>(anchor) - g.t0) * g.angle;
    sn = std::sin(theta);
    cs = std::cos(theta);
    for (int64_t q = anchor + 1; q < i; ++q) {
      const double s2 = sn * g.cos_step + cs * g.sin_step;
      cs = cs * g.cos_step - sn * g.sin_step;
      sn = s2;
    }
  }
  // Locals with __restrict: the output arrays cannot alias the state, so nothing is reloaded.
  double* __restrict e = st.e.data();
  const double* __restrict a = st.a.data();
  const double* __restrict d = st.d.data();
  double* __restrict v = st.v.data();
  int64_t* __restrict count = st.count.data();
  const int32_t* __restrict id = st.id.data();
  int16_t* __restrict out_index = st.dataset_index;
  int64_t* __restrict out_sample = st.dataset_sample_index;
  const int64_t start = st.start, n = st.n;
  for (; i < i_hi; ++i) {
    const double u = static_cast<double>(i > 1 ? i : 1) - g.t0;
    double p = 0.0;
    if (Kind == kLinear) {
      p = (u * u) * g.half_inv_len;
    } else if (Kind == kCosine) {
      if (is_anchor(i)) {
        const double theta = u * g.angle;
        sn = std::sin(theta);
        cs = std::cos(theta);
      } else {
        const double s2 = sn * g.cos_step + cs * g.sin_step;
        cs = cs * g.cos_step - sn * g.sin_step;
        sn = s2;
      }
      p = u * 0.5 - g.amp * sn;
    }
    const int64_t j = argmax_deficit<Kind, Strategy>(e, a, d, v, n, u, p);
    const int32_t k = id[j];
    out_index[i - start] = static_cast<int16_t>(k);
    out_sample[i - start] = count[k]++;
    e[j] -= 1.0;
  }
}

template <int Kind>
void run_scan(ExactState& st, const Segment& g, int64_t first_i, int64_t i, int64_t i_hi) {
  if (st.n <= kScanBranchless) {
    run_exact<Kind, kScanCmov>(st, g, first_i, i, i_hi);
  } else if (st.n <= kScanDirectly) {
    run_exact<Kind, kScanBranchy>(st, g, first_i, i, i_hi);
  } else {
    run_exact<Kind, kScanTwoPass>(st, g, first_i, i, i_hi);
  }
}

// Deficit offsets of segment s at the current counts, compacted to the sources that can be
// picked: those with weight somewhere in the segment, or a positive deficit carried in. A source
// with zero weight and nothing owed is skipped so it never wins an exact tie at deficit 0.
void load_segment(ExactState& st, const SegmentTable& t, int64_t s, const double* offset) {
  const int64_t K = t.num_sources;
  st.n = 0;
  for (int64_t k = 0; k < K; ++k) {
    const double ak = t.a[s * K + k], dk = t.d[s * K + k];
    const double ek = (t.base[s * K + k] + offset[k]) - static_cast<double>(st.count[k]);
    if (ak > 0.0 || dk != 0.0 || ek > 0.0) {
      st.id[st.n] = static_cast<int32_t>(k);
      st.e[st.n] = ek;
      st.a[st.n] = ak;
      st.d[st.n] = dk;
      ++st.n;
    }
  }
  if (st.n == 0) throw std::invalid_argument("blending: a schedule segment has no positive weight");
}

}  // namespace

void build_blending_exact(const SegmentTable& t, int64_t start, int64_t end,
                          const int64_t* initial_counts, const double* offset,
                          int16_t* dataset_index, int64_t* dataset_sample_index) {
  const int64_t K = t.num_sources;
  ExactState st;
  st.start = start;
  st.dataset_index = dataset_index;
  st.dataset_sample_index = dataset_sample_index;
  st.count.assign(initial_counts, initial_counts + K);
  st.id.resize(K);
  st.e.resize(K);
  st.a.resize(K);
  st.d.resize(K);
  st.v.resize(K);
  const std::vector<Segment> segs = make_segments(t);
  int64_t s = 0;
  int64_t i = start;
  while (i < end) {
    const double x = static_cast<double>(i > 1 ? i : 1);
    while (s + 1 < t.num_segments && x >= t.t1[s]) ++s;
    int64_t i_hi = end;
    if (s + 1 < t.num_segments) {
      const double c = std::ceil(t.t1[s]);  // first position with x >= t1
      if (c < static_cast<double>(end)) i_hi = std::max(static_cast<int64_t>(c), i + 1);
    }
    const Segment& g = segs[s];
    load_segment(st, t, s, offset);
    const int64_t first_i = first_position(s, g.t0);
    switch (g.kind) {
      case kConstant: run_scan<kConstant>(st, g, first_i, i, i_hi); break;
      case kLinear: run_scan<kLinear>(st, g, first_i, i, i_hi); break;
      case kCosine: run_scan<kCosine>(st, g, first_i, i, i_hi); break;
      default: throw std::invalid_argument("blending: unknown segment kind");
    }
    i = i_hi;
  }
}

}  // namespace chatflow
