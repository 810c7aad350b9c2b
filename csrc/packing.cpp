// Conversation packing; the algorithm is specified in packing.h.
#include "packing.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "sample_index.h"

namespace chatflow {

namespace {

struct Piece {
  int64_t doc;
  int32_t start;
  int32_t len;
};

// Cuts sequence `doc` into pieces of at most `capacity` tokens (packing.h, step 2).
void cut_document(int64_t doc, int64_t size, const int32_t* points, int64_t num_points,
                  int64_t capacity, bool chunk_long_turns, std::vector<Piece>& out,
                  int64_t* stats) {
  int64_t s = 0;
  int64_t k = 0;  // first split point > s
  while (s < size) {
    if (size - s <= capacity) {
      out.push_back({doc, static_cast<int32_t>(s), static_cast<int32_t>(size - s)});
      return;
    }
    while (k < num_points && points[k] <= s) ++k;
    // Largest split point <= s + capacity (points are sorted).
    const int32_t* hi = std::upper_bound(points + k, points + num_points, s + capacity);
    if (hi != points + k) {
      const int64_t p = *(hi - 1);
      out.push_back({doc, static_cast<int32_t>(s), static_cast<int32_t>(p - s)});
      stats[kStatSplits] += 1;
      s = p;
      continue;
    }
    out.push_back({doc, static_cast<int32_t>(s), static_cast<int32_t>(capacity)});
    if (chunk_long_turns) {
      stats[kStatSplits] += 1;
      s += capacity;
    } else {
      const int64_t turn_end = k < num_points ? points[k] : size;
      stats[kStatTruncations] += 1;
      stats[kStatDropped] += turn_end - (s + capacity);
      s = turn_end;
    }
  }
}

}  // namespace

template <typename T>
PackingResult build_packing(const int32_t* sizes, int64_t num_sequences, const T* doc_ids,
                            int64_t num_docs, const int64_t* split_offsets,
                            const int32_t* split_points, int64_t capacity, int64_t min_bins,
                            uint64_t seed, bool chunk_long_turns) {
  if (capacity < 1) throw std::invalid_argument("build_packing: capacity must be >= 1");
  for (int64_t i = 0; i < num_sequences; ++i) {
    for (int64_t j = split_offsets[i]; j < split_offsets[i + 1]; ++j) {
      const int32_t p = split_points[j];
      if (p <= 0 || p >= sizes[i] || (j > split_offsets[i] && p <= split_points[j - 1])) {
        throw std::invalid_argument("build_packing: split points of sequence " +
                                    std::to_string(i) + " must be increasing in (0, size)");
      }
    }
  }
  PackingResult r;
  std::vector<T> order(doc_ids, doc_ids + num_docs);
  std::vector<Piece> pieces;
  std::vector<int64_t> tree;  // max-segment tree of the room left in each bin slot
  std::vector<int64_t> bin_of;
  for (int64_t e = 0; static_cast<int64_t>(r.bin_offsets.size()) - 1 < min_bins; ++e) {
    std::copy(doc_ids, doc_ids + num_docs, order.begin());
    shuffle_in_place(order.data(), num_docs, seed, kStreamPacking, static_cast<uint64_t>(e));
    int64_t stats[kNumStats] = {0, 0, 0, 0};
    pieces.clear();
    for (int64_t i = 0; i < num_docs; ++i) {
      const int64_t d = static_cast<int64_t>(order[i]);
      const int64_t lo = split_offsets[d];
      cut_document(d, sizes[d], split_points + lo, split_offsets[d + 1] - lo, capacity,
                   chunk_long_turns, pieces, stats);
    }
    const int64_t n = static_cast<int64_t>(pieces.size());
    if (n == 0) {
      throw std::invalid_argument("build_packing: the documents hold no tokens (epoch " +
                                  std::to_string(e) + " has no bin)");
    }
    // First-fit with a segment tree over n bin slots (at most one bin per piece): every slot
    // starts with full room, so the leftmost slot with room >= len is either an open bin or the
    // first unopened one, which then opens.
    int64_t leaves = 1;
    while (leaves < n) leaves <<= 1;
    tree.assign(2 * leaves, 0);
    for (int64_t i = 0; i < n; ++i) tree[leaves + i] = capacity;
    for (int64_t i = leaves - 1; i >= 1; --i) tree[i] = std::max(tree[2 * i], tree[2 * i + 1]);
    bin_of.resize(n);
    int64_t num_bins = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t len = pieces[i].len;
      int64_t node = 1;
      while (node < leaves) node = tree[2 * node] >= len ? 2 * node : 2 * node + 1;
      const int64_t slot = node - leaves;
      bin_of[i] = slot;
      num_bins = std::max(num_bins, slot + 1);
      tree[node] -= len;
      for (node >>= 1; node >= 1; node >>= 1) {
        tree[node] = std::max(tree[2 * node], tree[2 * node + 1]);
      }
      stats[kStatTokens] += len;
    }
    // Stable counting sort of the pieces by bin: each bin keeps its insertion order.
    const int64_t base = r.bin_offsets.back();
    std::vector<int64_t> count(num_bins + 1, 0);
    for (int64_t i = 0; i < n; ++i) ++count[bin_of[i] + 1];
    for (int64_t b = 0; b < num_bins; ++b) {
      count[b + 1] += count[b];
      r.bin_offsets.push_back(base + count[b + 1]);
    }
    const size_t first = r.piece_doc.size();
    r.piece_doc.resize(first + n);
    r.piece_start.resize(first + n);
    r.piece_len.resize(first + n);
    for (int64_t i = 0; i < n; ++i) {
      const size_t at = first + count[bin_of[i]]++;
      r.piece_doc[at] = pieces[i].doc;
      r.piece_start[at] = pieces[i].start;
      r.piece_len[at] = pieces[i].len;
    }
    r.epoch_bins.push_back(r.epoch_bins.back() + num_bins);
    r.stats.insert(r.stats.end(), stats, stats + kNumStats);
  }
  return r;
}

template PackingResult build_packing<int32_t>(const int32_t*, int64_t, const int32_t*, int64_t,
                                              const int64_t*, const int32_t*, int64_t, int64_t,
                                              uint64_t, bool);
template PackingResult build_packing<int64_t>(const int32_t*, int64_t, const int64_t*, int64_t,
                                              const int64_t*, const int32_t*, int64_t, int64_t,
                                              uint64_t, bool);

}  // namespace chatflow
