// Exact and fast blending-index builders; see blending.h for the model and the guarantees.
//
// Floating point: the exact builder must reproduce megatron-core's comparisons bit for bit on a
// constant schedule, and tests/reference_blending.py reproduces every operation of this file in
// Python. Both rely on plain IEEE double arithmetic in the written order: no -ffast-math, and no
// fused multiply-add contraction (the default x86-64 target has no FMA; keep it that way).
#include "blending.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

namespace chatflow {
namespace {

constexpr double kPi = 3.141592653589793;
constexpr double kInf = std::numeric_limits<double>::infinity();
// The exact builder's argmax: one branch-free pass up to kScanBranchless sources, four
// branch-free lanes up to kScanLanes, two passes beyond (see argmax_deficit). Tuned on x86-64.
constexpr int64_t kScanBranchless = 4;
constexpr int64_t kScanLanes = 12;

// Constants of one segment that both builders derive from (t0, t1) the same way.
struct Segment {
  int8_t kind;
  double t0, len;
  double half_inv_len;  // 0.5 / L: linear P(u) = (u * u) * half_inv_len
  double angle;         // pi / L: cosine phase per sample
  double amp;           // L / (2 pi): cosine P(u) = u * 0.5 - amp * sin(u * angle)
  double cos_step, sin_step;
};

Segment make_segment(const SegmentTable& t, int64_t s) {
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
int64_t first_position(int64_t s, double t0) { return s == 0 ? 0 : static_cast<int64_t>(std::ceil(t0)); }

// Argmax of v[j] = e[j] + a[j] * u (+ d[j] * P), first index on ties; the constant form is
// exactly megatron-core's weight * t - count when e = -count.
//
// Branch-free in two passes: the deficits are computed into `v` (a loop the compiler vectorizes)
// while four independent max chains run; then the first index holding the maximum is found. A
// single-pass scan that tracks the index mispredicts a branch at every new running maximum,
// which dominated the cost at K ~ 100.
// One branch-free pass (conditional moves): with few sources the winner flips unpredictably.
template <int Kind>
inline int64_t argmax_few(const double* e, const double* a, const double* d, int64_t n, double u,
                          double p) {
  // Conditional moves, not a branch: with few sources the winner flips unpredictably.
  double best = -kInf;
  int64_t best_j = 0;
  for (int64_t j = 0; j < n; ++j) {
    double x = e[j] + a[j] * u;
    if (Kind != kConstant) x = x + d[j] * p;
    const bool better = x > best;
    best_j = better ? j : best_j;
    best = better ? x : best;
  }
  return best_j;
}

template <int Kind>
inline int64_t argmax_deficit(const double* e, const double* a, const double* d, double* v,
                              int64_t n, double u, double p) {
  if (n <= kScanLanes) {
    // Four branch-free lanes (j mod 4) run four short conditional-move chains in parallel; the
    // lanes' first maxima merge with ties to the smaller index, as a sequential scan would pick.
    double b[4] = {-kInf, -kInf, -kInf, -kInf};
    int64_t bj[4] = {0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      for (int l = 0; l < 4; ++l) {
        double x = e[j + l] + a[j + l] * u;
        if (Kind != kConstant) x = x + d[j + l] * p;
        const bool better = x > b[l];
        bj[l] = better ? j + l : bj[l];
        b[l] = better ? x : b[l];
      }
    }
    for (; j < n; ++j) {
      double x = e[j] + a[j] * u;
      if (Kind != kConstant) x = x + d[j] * p;
      const bool better = x > b[0];
      bj[0] = better ? j : bj[0];
      b[0] = better ? x : b[0];
    }
    for (int l = 1; l < 4; ++l) {
      const bool better = b[l] > b[0] || (b[l] == b[0] && bj[l] < bj[0]);
      bj[0] = better ? bj[l] : bj[0];
      b[0] = better ? b[l] : b[0];
    }
    return bj[0];
  }
  for (int64_t j = 0; j < n; ++j) {
    double x = e[j] + a[j] * u;
    if (Kind != kConstant) x = x + d[j] * p;
    v[j] = x;
  }
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
  const double best = m2 > m0 ? m2 : m0;
  j = 0;
  while (v[j] != best) ++j;  // the maximum is one of the v[j]: always found
  return j;
}

template <int Kind>
void run_exact(ExactState& st, const Segment& g, int64_t first_i, int64_t i, int64_t i_hi) {
  double sn = 0.0, cs = 1.0;  // sin/cos of the cosine phase at the previous position
  auto is_anchor = [&](int64_t pos) { return pos <= 1 || pos == first_i || pos % kAnchorEvery == 0; };
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
    const int64_t j = n <= kScanBranchless ? argmax_few<Kind>(e, a, d, n, u, p)
                                           : argmax_deficit<Kind>(e, a, d, v, n, u, p);
    const int32_t k = id[j];
    out_index[i - start] = static_cast<int16_t>(k);
    out_sample[i - start] = count[k]++;
    e[j] -= 1.0;
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
      case kConstant: run_exact<kConstant>(st, g, first_i, i, i_hi); break;
      case kLinear: run_exact<kLinear>(st, g, first_i, i, i_hi); break;
      case kCosine: run_exact<kCosine>(st, g, first_i, i, i_hi); break;
      default: throw std::invalid_argument("blending: unknown segment kind");
    }
    i = i_hi;
  }
}

// ------------------------------------------------------------------------------ fast builder
namespace {

// u in [0, L] with a*u + d*(u/2 - amp*sin(u*angle)) = delta: Newton safeguarded by bisection.
double invert_cosine(const Segment& g, double a, double d, double delta) {
  double lo = 0.0, hi = g.len;
  const double rate = a + 0.5 * d;  // mean weight over the segment (> 0 here)
  double u = std::min(std::max(delta / rate, lo), hi);
  for (int it = 0; it < 100; ++it) {
    const double f = a * u + d * (u * 0.5 - g.amp * std::sin(u * g.angle)) - delta;
    if (f == 0.0) break;
    if (f > 0.0) hi = u; else lo = u;
    const double fp = a + d * (0.5 - 0.5 * std::cos(u * g.angle));
    double un = fp > 0.0 ? u - f / fp : 0.5 * (lo + hi);
    if (!(un > lo && un < hi)) un = 0.5 * (lo + hi);
    const double step = std::fabs(un - u);
    u = un;
    if (step <= 1e-13 * std::max(1.0, u) || hi - lo <= 1e-13 * std::max(1.0, u)) break;
  }
  return u;
}

// Position where W_k first exceeds y (the release of the sample with W'_k = y + offset_k), or
// +inf when it never does. seg is source k's segment cursor: y only grows, so it only advances.
double release_position(const SegmentTable& t, const std::vector<Segment>& segs, int64_t k,
                        double y, int64_t& seg) {
  const int64_t K = t.num_sources, S = t.num_segments;
  int64_t s = seg;
  for (;;) {
    double w_end;
    if (s + 1 < S) {
      w_end = t.base[(s + 1) * K + k];
    } else {
      w_end = t.a[s * K + k] > 0.0 ? kInf : t.base[s * K + k];
    }
    if (w_end > y) break;
    if (s + 1 >= S) return kInf;
    ++s;
  }
  seg = s;
  const Segment& g = segs[s];
  const double a = t.a[s * K + k], d = t.d[s * K + k];
  const double delta = y - t.base[s * K + k];
  if (!(delta > 0.0)) return g.t0;
  double u;
  if (g.kind == kConstant || (g.kind == kLinear && d == 0.0) || (g.kind == kCosine && d == 0.0)) {
    u = delta / a;
  } else if (g.kind == kLinear) {
    // Root of (d / 2L) u^2 + a u - delta in the form that does not cancel when d < 0.
    double q = a * a + 2.0 * (d / g.len) * delta;
    if (q < 0.0) q = 0.0;
    const double den = a + std::sqrt(q);
    u = den > 0.0 ? 2.0 * delta / den : 0.0;
  } else {
    u = invert_cosine(g, a, d, delta);
  }
  if (s + 1 < S) u = std::min(u, g.len);
  return g.t0 + u;
}

struct Release {
  double r;
  int64_t k;
};

inline bool release_less(const Release& x, const Release& y) {
  return x.r < y.r || (x.r == y.r && x.k < y.k);
}

}  // namespace

void build_blending_fast(const SegmentTable& t, int64_t start, int64_t end,
                         const int64_t* initial_counts, const double* offset,
                         int16_t* dataset_index, int64_t* dataset_sample_index) {
  const int64_t K = t.num_sources;
  const int64_t n = end - start;
  const double x0 = static_cast<double>(start);
  const std::vector<Segment> segs = make_segments(t);
  std::vector<int64_t> next_j(initial_counts, initial_counts + K), seg(K, 0);
  // Samples of one source leave in the order they were released, so the emitted sample index is
  // a per-source counter (ties of equal (r, k) cannot reorder them).
  std::vector<int64_t> emitted(initial_counts, initial_counts + K);
  std::vector<double> next_r(K);
  auto advance = [&](int64_t k, double prev) {
    const double y = static_cast<double>(next_j[k]) - offset[k];
    // Running max: rounding must never order a source's own samples backwards.
    next_r[k] = std::max(prev, release_position(t, segs, k, y, seg[k]));
  };
  // Releases before `start` keep their true positions (not clamped), so a resumed build orders
  // overdue samples exactly as the uninterrupted build would.
  for (int64_t k = 0; k < K; ++k) advance(k, -kInf);

  std::vector<Release> items, sorted;
  std::vector<int64_t> bucket_start(kWindow + 1), fill(kWindow);
  int64_t out = 0;
  double lo = x0;
  while (out < n) {
    const double hi = lo + static_cast<double>(kWindow);
    items.clear();
    for (int64_t k = 0; k < K; ++k) {
      while (next_r[k] < hi) {
        items.push_back({next_r[k], k});
        ++next_j[k];
        advance(k, next_r[k]);
      }
    }
    if (items.empty()) {
      bool any = false;
      for (int64_t k = 0; k < K; ++k) any = any || next_r[k] < kInf;
      if (!any) throw std::runtime_error("blending: the schedule stops releasing samples");
      lo = hi;
      continue;
    }
    // Counting sort on floor(r - lo), then (r, k) order inside each bucket (usually 1 item).
    std::fill(bucket_start.begin(), bucket_start.end(), 0);
    auto bucket = [&](double r) {
      const int64_t b = static_cast<int64_t>(r - lo);
      return std::min<int64_t>(std::max<int64_t>(b, 0), kWindow - 1);
    };
    for (const Release& it : items) ++bucket_start[bucket(it.r) + 1];
    for (int64_t b = 0; b < kWindow; ++b) bucket_start[b + 1] += bucket_start[b];
    sorted.resize(items.size());
    std::copy(bucket_start.begin(), bucket_start.end() - 1, fill.begin());
    for (const Release& it : items) sorted[fill[bucket(it.r)]++] = it;
    for (int64_t b = 0; b < kWindow; ++b) {
      const int64_t b0 = bucket_start[b], b1 = bucket_start[b + 1];
      if (b1 - b0 > 1) std::sort(sorted.begin() + b0, sorted.begin() + b1, release_less);
    }
    for (const Release& it : sorted) {
      if (out >= n) break;
      dataset_index[out] = static_cast<int16_t>(it.k);
      dataset_sample_index[out] = emitted[it.k]++;
      ++out;
    }
    lo = hi;
  }
}

}  // namespace chatflow
