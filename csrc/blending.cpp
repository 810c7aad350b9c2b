// Exact and fast blending-index builders; see blending.h for the model and the guarantees.
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
namespace {

constexpr double kPi = 3.141592653589793;
constexpr double kInf = std::numeric_limits<double>::infinity();
// Fast builder: bucket-sort buckets per position (a power of 2).
constexpr int64_t kBucketsPerPosition = 2;
// The exact builder's argmax: one branch-free pass up to kScanBranchless sources, one branchy
// pass up to kScanDirectly, two passes beyond (see argmax_deficit). Tuned on x86-64.
constexpr int64_t kScanBranchless = 4;
constexpr int64_t kScanDirectly = 11;

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

// Where source k's fast-mode releases currently are: its segment and that segment's constants,
// so the common case (the next release lies in the same segment) needs no table lookups.
struct Cursor {
  int64_t seg = 0;
  int8_t shape = kConstant;  // kConstant also for linear/cosine segments where d == 0
  bool last = false;         // last segment: runs to +inf
  double w_end = 0.0;        // W_k at the segment's end (+inf for a last segment with weight)
  double base = 0.0, a = 0.0, d = 0.0, t0 = 0.0, len = 0.0, slope2 = 0.0;
};

// Moves the cursor to the first segment (from its current one) where W_k ends above y; false
// when W_k never exceeds y.
bool locate(const SegmentTable& t, const std::vector<Segment>& segs, int64_t k, double y,
            Cursor& c) {
  const int64_t K = t.num_sources, S = t.num_segments;
  int64_t s = c.seg;
  double w_end;
  for (;;) {
    if (s + 1 < S) {
      w_end = t.base[(s + 1) * K + k];
    } else {
      w_end = t.a[s * K + k] > 0.0 ? kInf : t.base[s * K + k];
    }
    if (w_end > y) break;
    if (s + 1 >= S) return false;
    ++s;
  }
  const Segment& g = segs[s];
  c.seg = s;
  c.last = s + 1 >= S;
  c.w_end = w_end;
  c.base = t.base[s * K + k];
  c.a = t.a[s * K + k];
  c.d = t.d[s * K + k];
  c.t0 = g.t0;
  c.len = g.len;
  c.shape = c.d == 0.0 ? static_cast<int8_t>(kConstant) : g.kind;
  c.slope2 = c.shape == kLinear ? 2.0 * (c.d / g.len) : 0.0;
  return true;
}

// Position where W_k first exceeds y (the release of the sample with W'_k = y + offset_k), or
// +inf when it never does. y only grows per source, so the cursor only moves forward.
inline double release_position(const SegmentTable& t, const std::vector<Segment>& segs,
                               int64_t k, double y, Cursor& c) {
  if (!(y < c.w_end) && !locate(t, segs, k, y, c)) return kInf;
  const double delta = y - c.base;
  if (!(delta > 0.0)) return c.t0;
  double u;
  if (c.shape == kConstant) {
    u = delta / c.a;
  } else if (c.shape == kLinear) {
    // Root of (d / 2L) u^2 + a u - delta in the form that does not cancel when d < 0.
    double q = c.a * c.a + c.slope2 * delta;
    if (q < 0.0) q = 0.0;
    const double den = c.a + std::sqrt(q);
    u = den > 0.0 ? 2.0 * delta / den : 0.0;
  } else {
    u = invert_cosine(segs[c.seg], c.a, c.d, delta);
  }
  if (!c.last) u = std::min(u, c.len);
  return c.t0 + u;
}

struct Release {
  double r;
  int32_t k;  // source
  int32_t b;  // bucket within the window
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
  std::vector<int64_t> next_j(initial_counts, initial_counts + K);
  std::vector<Cursor> cursor(K);
  for (int64_t k = 0; k < K; ++k) locate(t, segs, k, -kInf, cursor[k]);
  // Samples of one source leave in the order they were released, so the emitted sample index is
  // a per-source counter (ties of equal (r, k) cannot reorder them).
  std::vector<int64_t> emitted(initial_counts, initial_counts + K);
  std::vector<double> next_r(K);
  // Releases before `start` keep their true positions (not clamped), so a resumed build orders
  // overdue samples exactly as the uninterrupted build would.
  for (int64_t k = 0; k < K; ++k) {
    const double y = static_cast<double>(next_j[k]) - offset[k];
    next_r[k] = release_position(t, segs, k, y, cursor[k]);
  }

  // Window width: a few times K so the per-window scan over sources stays cheap, and small
  // enough (>= kWindow) that the bucket counters stay in cache. kBucketsPerPosition buckets per
  // position make two releases rarely share a bucket, so the final insertion pass rarely moves
  // anything and its branch predicts well.
  int64_t width = kWindow;
  while (width < 4 * K) width *= 2;
  const int64_t num_buckets = width * kBucketsPerPosition;
  const double scale = static_cast<double>(kBucketsPerPosition);  // power of 2: exact, monotone
  std::vector<Release> items, sorted;
  std::vector<int32_t> bucket_start(num_buckets + 1);
  int64_t out = 0;
  double lo = x0;
  while (out < n) {
    const double hi = lo + static_cast<double>(width);
    items.clear();
    std::fill(bucket_start.begin(), bucket_start.end(), 0);
    for (int64_t k = 0; k < K; ++k) {
      // Source state in locals: kept in registers instead of round-tripping through memory.
      double r = next_r[k];
      if (!(r < hi)) continue;
      int64_t j = next_j[k];
      Cursor c = cursor[k];
      const double off = offset[k];
      do {
        // Overdue releases (r < lo, only in a resumed build) share the first bucket.
        const int32_t b = r > lo ? static_cast<int32_t>((r - lo) * scale) : 0;
        items.push_back({r, static_cast<int32_t>(k), b});
        ++bucket_start[b + 1];
        ++j;
        // Running max: rounding must never order a source's own samples backwards.
        r = std::max(r, release_position(t, segs, k, static_cast<double>(j) - off, c));
      } while (r < hi);
      next_r[k] = r;
      next_j[k] = j;
      cursor[k] = c;
    }
    if (items.empty()) {
      bool any = false;
      for (int64_t k = 0; k < K; ++k) any = any || next_r[k] < kInf;
      if (!any) throw std::runtime_error("blending: the schedule stops releasing samples");
      lo = hi;
      continue;
    }
    // Counting sort on the bucket (monotone in r), then one insertion pass for (r, k) order
    // inside buckets.
    for (int64_t b = 0; b < num_buckets; ++b) bucket_start[b + 1] += bucket_start[b];
    sorted.resize(items.size());
    for (const Release& it : items) sorted[bucket_start[it.b]++] = it;
    const int64_t m = static_cast<int64_t>(sorted.size());
    for (int64_t i = 1; i < m; ++i) {
      if (!release_less(sorted[i], sorted[i - 1])) continue;
      const Release x = sorted[i];
      int64_t j = i;
      do {
        sorted[j] = sorted[j - 1];
        --j;
      } while (j > 0 && release_less(x, sorted[j - 1]));
      sorted[j] = x;
    }
    for (int64_t i = 0; i < m && out < n; ++i, ++out) {
      const int32_t k = sorted[i].k;
      dataset_index[out] = static_cast<int16_t>(k);
      dataset_sample_index[out] = emitted[k]++;
    }
    lo = hi;
  }
}

}  // namespace chatflow
