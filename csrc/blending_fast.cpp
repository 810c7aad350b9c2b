// Fast blending-index builder (due order), on one or several threads; see blending.h.
//
// Sample j of source k is released at r_k(j) = inf{x : W'_k(x) > j}; positions take the releases
// in increasing (r, k) order. Releases are generated window by window (x in [lo, lo + width)) and
// counting-sorted on a half-position bucket straight into the output; one insertion pass then puts
// the few releases that share a bucket in exact (r, k) order. Sample indices need no counter:
// source k's j-th release is its sample j.
//
// Threads split the releases at window boundaries L_1 < L_2 < ... in position space. Everything a
// chunk needs to start at L is computable without its predecessors: source k's first sample there
// is the smallest j with r_k(j) >= L (a search on the inverted W_k), and the chunk's first output
// position is the number of releases before L, the sum over sources. Each chunk then runs the
// single-thread algorithm on its windows and writes its own output range, so the output does not
// depend on the thread count. The search assumes r_k(j) non-decreasing in j (true up to rounding,
// and consecutive releases of a source are >= 1 position apart since w_k <= 1); after the threads
// join, every chunk's end state is compared with the next chunk's computed start, and on any
// difference the whole index is rebuilt on one thread. First-touch page faults of fresh output
// arrays are spread over the threads with it.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "blending.h"

namespace chatflow {
namespace {

using detail::Segment;

constexpr double kInf = std::numeric_limits<double>::infinity();
// Parallel builds whose chunk boundaries failed the check (rebuilt on one thread); for tests.
std::atomic<int64_t> g_fallbacks{0};

// Counting-sort buckets per position (a power of 2, so bucketing is exact and monotone).
constexpr int64_t kBucketsPerPosition = 2;

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

// Where source k's releases currently are: its segment and that segment's constants, so the
// common case (the next release lies in the same segment) needs no table lookups.
struct Cursor {
  int64_t seg = 0;
  int8_t shape = kConstant;  // kConstant also for linear/cosine segments where d == 0
  bool last = false;         // last segment: runs to +inf
  double w_end = 0.0;        // W_k at the segment's end (+inf for a last segment with weight)
  double base = 0.0, a = 0.0, d = 0.0, t0 = 0.0, len = 0.0, slope2 = 0.0;
};

// Read-only inputs shared by all chunks.
struct Plan {
  const SegmentTable& t;
  std::vector<Segment> segs;
  const int64_t* initial_counts;
  const double* offset;
  double x0;      // first position (start)
  int64_t n;      // positions to fill
  int64_t width;  // positions per window
  int16_t* dataset_index;
  int64_t* dataset_sample_index;
};

// Moves the cursor to the first segment (from its current one) where W_k ends above y; false
// when W_k never exceeds y. W_k's segment ends never decrease, so where the cursor lands depends
// on y only, not on where it was: release positions are a pure function of (k, j).
bool locate(const Plan& p, int64_t k, double y, Cursor& c) {
  const SegmentTable& t = p.t;
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
  const Segment& g = p.segs[s];
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
inline double release_position(const Plan& p, int64_t k, double y, Cursor& c) {
  if (!(y < c.w_end) && !locate(p, k, y, c)) return kInf;
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
    u = invert_cosine(p.segs[c.seg], c.a, c.d, delta);
  }
  if (!c.last) u = std::min(u, c.len);
  return c.t0 + u;
}

// A fresh cursor on source k's first segment.
Cursor first_cursor(const Plan& p, int64_t k) {
  Cursor c;
  locate(p, k, -kInf, c);
  return c;
}

// W_k(x) in closed form: only the first guess of start_sample's search, no exactness needed.
double cumulative(const Plan& p, int64_t k, double x) {
  const SegmentTable& t = p.t;
  const int64_t K = t.num_sources;
  int64_t s = 0;
  while (s + 1 < t.num_segments && x >= t.t1[s]) ++s;
  const Segment& g = p.segs[s];
  const double u = std::max(x - g.t0, 0.0);
  double shape = 0.0;
  if (g.kind == kLinear) shape = u * u * g.half_inv_len;
  if (g.kind == kCosine) shape = u * 0.5 - g.amp * std::sin(u * g.angle);
  return t.base[s * K + k] + t.a[s * K + k] * u + t.d[s * K + k] * shape;
}

// Source k's first sample released at or after position L: the smallest j >= initial_counts[k]
// with r_k(j) >= L, assuming r_k non-decreasing (the caller verifies the chunk boundaries).
int64_t start_sample(const Plan& p, int64_t k, double L) {
  const int64_t j0 = p.initial_counts[k];
  const double off = p.offset[k];
  auto due_from = [&](int64_t j) {
    Cursor c = first_cursor(p, k);
    return release_position(p, k, static_cast<double>(j) - off, c) >= L;
  };
  if (due_from(j0)) return j0;
  int64_t lo = j0;  // r(lo) < L <= r(hi)
  const double guess = std::ceil(cumulative(p, k, L) + off);
  int64_t hi = guess > static_cast<double>(lo) && guess < 9e15 ? static_cast<int64_t>(guess)
                                                                : lo + 1;
  for (int64_t step = 1; !due_from(hi); step *= 2) {  // gallop up
    lo = hi;
    hi = lo + step;
  }
  for (int64_t step = 1; hi - lo > 1; step *= 2) {  // gallop down
    const int64_t probe = hi - step;
    if (probe <= lo) break;
    if (!due_from(probe)) {
      lo = probe;
      break;
    }
    hi = probe;
  }
  while (hi - lo > 1) {  // bisect
    const int64_t mid = lo + (hi - lo) / 2;
    if (due_from(mid)) hi = mid; else lo = mid;
  }
  return hi;
}

// One thread's share: windows [lo, lo_end) (lo_end = +inf for the last chunk), output positions
// [out_begin, out_end). Per-source state (next sample, its release, cursor) carries from window
// to window; at the end it is the state at lo_end, which the caller checks against the next
// chunk's start.
struct Chunk {
  double lo = 0.0, lo_end = kInf;
  int64_t out_begin = 0, out_end = 0;
  bool last = false;
  std::vector<int64_t> start_j;  // first sample of each source (kept for the boundary check)
  std::vector<int64_t> next_j;
  std::vector<double> next_r;
  std::vector<Cursor> cursor;
  // Results.
  int64_t out = 0;
  bool complete = false;  // ran through all its windows (or all sources stopped), no truncation
  std::exception_ptr error;
};

void init_chunk(const Plan& p, Chunk& ch, bool first) {
  const int64_t K = p.t.num_sources;
  ch.next_j.resize(K);
  ch.next_r.resize(K);
  ch.cursor.resize(K);
  int64_t before = 0;
  for (int64_t k = 0; k < K; ++k) {
    // Releases before `start` keep their true positions (not clamped), so a resumed build
    // orders overdue samples exactly as the uninterrupted build would.
    const int64_t j = first ? p.initial_counts[k] : start_sample(p, k, ch.lo);
    ch.cursor[k] = first_cursor(p, k);
    ch.next_j[k] = j;
    ch.next_r[k] = release_position(p, k, static_cast<double>(j) - p.offset[k], ch.cursor[k]);
    before += j - p.initial_counts[k];
  }
  ch.out_begin = before;
  ch.start_j = ch.next_j;
}

// Scratch of one chunk, reused from window to window.
struct Scratch {
  std::vector<double> r;       // releases of the window, grouped by source in sample order
  std::vector<int32_t> run_k;  // per source run: its source, ...
  std::vector<int64_t> run_j;  // ... first sample index, ...
  std::vector<int64_t> run_end;  // ... and end in r
  std::vector<int32_t> bucket;   // counting sort: counts, then next slot per bucket
  std::vector<double> sorted_r;  // releases in output order (for the insertion pass)
  std::vector<int16_t> tmp_index;   // a window that crosses out_end goes here first
  std::vector<int64_t> tmp_sample;
};

// Sorts the m releases of one window into index[0, m), sample[0, m) (and s.sorted_r): counting
// sort on the bucket, then insertion for exact (r, k) order inside buckets.
void sort_window(Scratch& s, double lo, int64_t num_buckets, int16_t* __restrict index,
                 int64_t* __restrict sample) {
  const double scale = static_cast<double>(kBucketsPerPosition);
  int32_t* __restrict bucket = s.bucket.data();
  int32_t sum = 0;
  for (int64_t b = 0; b < num_buckets; ++b) {
    const int32_t c = bucket[b];
    bucket[b] = sum;
    sum += c;
  }
  const int64_t m = sum;
  double* __restrict sr = s.sorted_r.data();
  const double* __restrict r = s.r.data();
  int64_t q = 0;
  for (size_t run = 0; run < s.run_k.size(); ++run) {
    const int16_t k = static_cast<int16_t>(s.run_k[run]);
    int64_t j = s.run_j[run];
    for (const int64_t q_end = s.run_end[run]; q < q_end; ++q, ++j) {
      const double x = r[q];
      // Overdue releases (x < lo, only in a resumed build's first window) share bucket 0.
      const int64_t b = x > lo ? static_cast<int64_t>((x - lo) * scale) : 0;
      const int32_t pos = bucket[b]++;
      sr[pos] = x;
      index[pos] = k;
      sample[pos] = j;
    }
  }
  for (int64_t i = 1; i < m; ++i) {
    const double x = sr[i];
    const int16_t k = index[i];
    if (!(x < sr[i - 1] || (x == sr[i - 1] && k < index[i - 1]))) continue;
    const int64_t j = sample[i];
    int64_t q2 = i;
    do {
      sr[q2] = sr[q2 - 1];
      index[q2] = index[q2 - 1];
      sample[q2] = sample[q2 - 1];
      --q2;
    } while (q2 > 0 && (x < sr[q2 - 1] || (x == sr[q2 - 1] && k < index[q2 - 1])));
    sr[q2] = x;
    index[q2] = k;
    sample[q2] = j;
  }
}

void run_chunk(const Plan& p, Chunk& ch) {
  const int64_t K = p.t.num_sources;
  const double width = static_cast<double>(p.width);
  const int64_t num_buckets = p.width * kBucketsPerPosition;
  const double scale = static_cast<double>(kBucketsPerPosition);
  Scratch s;
  s.bucket.resize(num_buckets + 1);
  s.r.reserve(2 * p.width);
  int64_t out = ch.out_begin;
  double lo = ch.lo;
  ch.complete = false;
  while (out < ch.out_end && lo < ch.lo_end) {
    const double hi = lo + width;
    s.r.clear();
    s.run_k.clear();
    s.run_j.clear();
    s.run_end.clear();
    std::fill(s.bucket.begin(), s.bucket.end(), 0);
    int32_t* __restrict bucket = s.bucket.data();
    for (int64_t k = 0; k < K; ++k) {
      // Source state in locals: kept in registers instead of round-tripping through memory.
      double r = ch.next_r[k];
      if (!(r < hi)) continue;
      int64_t j = ch.next_j[k];
      s.run_k.push_back(static_cast<int32_t>(k));
      s.run_j.push_back(j);
      Cursor c = ch.cursor[k];
      const double off = p.offset[k];
      do {
        const int64_t b = r > lo ? static_cast<int64_t>((r - lo) * scale) : 0;
        s.r.push_back(r);
        ++bucket[b];
        ++j;
        // Running max: rounding must never order a source's own samples backwards.
        r = std::max(r, release_position(p, k, static_cast<double>(j) - off, c));
      } while (r < hi);
      s.run_end.push_back(static_cast<int64_t>(s.r.size()));
      ch.next_r[k] = r;
      ch.next_j[k] = j;
      ch.cursor[k] = c;
    }
    const int64_t m = static_cast<int64_t>(s.r.size());
    if (m == 0) {
      bool any = false;
      for (int64_t k = 0; k < K; ++k) any = any || ch.next_r[k] < kInf;
      if (!any) {
        if (ch.last) throw std::runtime_error("blending: the schedule stops releasing samples");
        ch.complete = true;  // nothing left anywhere: the next chunks start from the same state
        break;
      }
      lo = hi;
      continue;
    }
    if (s.sorted_r.size() < static_cast<size_t>(m)) s.sorted_r.resize(m);
    if (m <= ch.out_end - out) {
      sort_window(s, lo, num_buckets, p.dataset_index + out, p.dataset_sample_index + out);
      out += m;
    } else {  // the window crosses out_end: sort aside, keep its first releases
      s.tmp_index.resize(m);
      s.tmp_sample.resize(m);
      sort_window(s, lo, num_buckets, s.tmp_index.data(), s.tmp_sample.data());
      const int64_t keep = ch.out_end - out;
      std::copy_n(s.tmp_index.data(), keep, p.dataset_index + out);
      std::copy_n(s.tmp_sample.data(), keep, p.dataset_sample_index + out);
      out += keep;
      ch.out = out;
      return;  // truncated: complete stays false
    }
    lo = hi;
  }
  ch.out = out;
  if (lo >= ch.lo_end) ch.complete = true;
}

void run_chunk_noexcept(const Plan& p, Chunk& ch) {
  try {
    run_chunk(p, ch);
  } catch (...) {
    ch.error = std::current_exception();
  }
}

// Builds on one thread (num_threads == 1) or several; false if a chunk boundary was wrong.
bool build(const Plan& p, int num_threads) {
  const int64_t windows = p.n / p.width;  // windows that certainly lie before the end
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(num_threads, windows));
  std::vector<Chunk> chunks(T);
  for (int64_t c = 0; c < T; ++c) {
    Chunk& ch = chunks[c];
    ch.lo = p.x0 + static_cast<double>((c * windows / T) * p.width);
    ch.last = c + 1 == T;
  }
  for (int64_t c = 0; c + 1 < T; ++c) chunks[c].lo_end = chunks[c + 1].lo;
  // Every chunk's start (K searches each) before any runs: chunk c's output ends where c + 1's
  // begins.
  for (int64_t c = 0; c < T; ++c) init_chunk(p, chunks[c], c == 0);
  for (int64_t c = 0; c < T; ++c) {
    Chunk& ch = chunks[c];
    ch.out_begin = std::min(ch.out_begin, p.n);
    ch.out_end = ch.last ? p.n : std::min(chunks[c + 1].out_begin, p.n);
    if (ch.out_end < ch.out_begin) return false;
  }
  std::vector<std::thread> threads;
  std::vector<Chunk*> inline_chunks;  // if a thread cannot be started
  for (int64_t c = 1; c < T; ++c) {
    if (chunks[c].out_begin >= p.n) continue;  // nothing left to write
    try {
      threads.emplace_back(run_chunk_noexcept, std::cref(p), std::ref(chunks[c]));
    } catch (const std::system_error&) {
      inline_chunks.push_back(&chunks[c]);
    }
  }
  run_chunk_noexcept(p, chunks[0]);
  for (Chunk* ch : inline_chunks) run_chunk_noexcept(p, *ch);
  for (std::thread& th : threads) th.join();
  // Each chunk with output must end exactly where the next one starts, or fill the index.
  for (int64_t c = 0; c < T && chunks[c].out_begin < p.n; ++c) {
    const Chunk& a = chunks[c];
    if (c + 1 < T && chunks[c + 1].out_begin < p.n) {
      const Chunk& b = chunks[c + 1];
      if (a.error || !a.complete || a.out != b.out_begin || a.next_j != b.start_j) return false;
    } else if (a.error) {
      // Only the last chunk may fail legitimately (the schedule stops releasing samples); its
      // start was checked above, so a one-thread build fails the same way.
      if (!a.last) return false;
      std::rethrow_exception(a.error);
    } else if (a.out != p.n) {
      return false;
    }
  }
  return true;
}

}  // namespace

void build_blending_fast(const SegmentTable& t, int64_t start, int64_t end,
                         const int64_t* initial_counts, const double* offset,
                         int16_t* dataset_index, int64_t* dataset_sample_index,
                         int num_threads) {
  const int64_t K = t.num_sources;
  int64_t width = kWindow;
  while (width < 4 * K) width *= 2;
  const Plan p{t, detail::make_segments(t), initial_counts, offset, static_cast<double>(start),
               end - start, width, dataset_index, dataset_sample_index};
  if (p.n == 0) return;
  if (num_threads > 1) {
    if (build(p, num_threads)) return;
    ++g_fallbacks;
  }
  build(p, 1);
}

int64_t fast_builder_fallbacks() { return g_fallbacks.load(); }

}  // namespace chatflow
