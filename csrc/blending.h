// Blending indices for a dynamic data-mix schedule (plain C++17, no Python).
//
// The schedule arrives as a piecewise table over the global sample position x (built by
// chatflow/data/blending.py). Segment s covers [t0[s], t1[s]); the last one runs to +inf. In it,
// source k's normalized weight is a[s,k] + d[s,k] * phi_s(x), phi_s rising from 0 to 1 over the
// segment (kind 0: constant, phi = 0; kind 1: linear; kind 2: cosine), and its integral is
//
//   W_k(x) = base[s,k] + a[s,k] * u + d[s,k] * P_s(u),   u = x - t0[s],
//   P_s(u) = u^2 / (2L)                      (linear, L = t1 - t0)
//   P_s(u) = u/2 - L/(2 pi) * sin(pi u / L)  (cosine)
//
// W_k(x) is the number of samples source k is owed after x positions. Both builders fill
// positions [start, end) and continue source k's sample numbering from initial_counts[k]; offset[k]
// shifts W_k (W'_k = W_k + offset_k) so that a resumed build carries each source's deficit over.
//
// Exact mode: at position i (x = max(i, 1), like megatron-core), pick argmax_k W'_k(x) - count_k,
// ties to the lowest k. For a one-segment constant table with zero offsets the arithmetic is the
// same as megatron-core's helpers_cpp.build_blending_indices, so the outputs are identical.
// Cost O(N * K) with two multiply-adds per source per position and no transcendental call
// (cosine segments use a rotation recurrence re-anchored every kAnchorEvery positions).
//
// Fast mode: sample j of source k is released at r = inf{x : W'_k(x) > j}; positions
// take the releases in increasing (r, k) order. Releases are generated per source by inverting W_k
// (closed form for constant and linear segments, safeguarded Newton for cosine) and ordered with a
// bucket sort over windows of max(kWindow, ~4K) positions: O(N) plus tiny in-bucket sorts, O(K)
// extra memory per thread. Position chunks can be built on several threads with the same output
// (csrc/blending_fast.cpp).
//
// Both modes keep, for every prefix of n positions, count_k(n) <= W'_k(n) + 1 and, when the
// offsets sum to zero, W'_k(n) - count_k(n) <= K - 1 (see README and tests/test_blending.py).
#pragma once

#include <cstdint>
#include <vector>

namespace chatflow {

// Positions between direct sin/cos evaluations in cosine segments of the exact builder.
constexpr int64_t kAnchorEvery = 1024;
// Minimum positions per bucket-sort window of the fast builder (grows to >= 4K).
constexpr int64_t kWindow = 1 << 12;

enum SegmentKind : int8_t { kConstant = 0, kLinear = 1, kCosine = 2 };

// Piecewise description of the cumulative weights W_k. All arrays are row-major and owned by the
// caller: t0, t1, kind have num_segments entries; base, a, d have num_segments * num_sources.
struct SegmentTable {
  int64_t num_segments;
  int64_t num_sources;
  const double* t0;
  const double* t1;
  const int8_t* kind;
  const double* base;
  const double* a;
  const double* d;
};

// Fills dataset_index / dataset_sample_index (length end - start) for positions [start, end).
void build_blending_exact(const SegmentTable& table, int64_t start, int64_t end,
                          const int64_t* initial_counts, const double* offset,
                          int16_t* dataset_index, int64_t* dataset_sample_index);

// num_threads > 1 splits the positions into that many chunks built in parallel (fewer when there
// are few windows); the output is identical for every thread count (see blending_fast.cpp).
void build_blending_fast(const SegmentTable& table, int64_t start, int64_t end,
                         const int64_t* initial_counts, const double* offset,
                         int16_t* dataset_index, int64_t* dataset_sample_index,
                         int num_threads = 1);

// How many multi-thread fast builds in this process failed their chunk-boundary check and were
// rebuilt on one thread (expected: 0; the tests check it).
int64_t fast_builder_fallbacks();

namespace detail {

// Constants of one segment that both builders derive from (t0, t1) the same way.
struct Segment {
  int8_t kind;
  double t0, len;
  double half_inv_len;  // 0.5 / L: linear P(u) = (u * u) * half_inv_len
  double angle;         // pi / L: cosine phase per sample
  double amp;           // L / (2 pi): cosine P(u) = u * 0.5 - amp * sin(u * angle)
  double cos_step, sin_step;
};

std::vector<Segment> make_segments(const SegmentTable& table);

}  // namespace detail

}  // namespace chatflow
