// Conversation packing: whole documents (conversations) packed into bins of a fixed capacity
// (seq_length + 1 tokens), never across a bin boundary, epoch by epoch.
//
// Plain C++17, no Python: csrc/bind_packing.cpp exposes it to chatflow._C, chatflow/data/
// packing.py validates inputs, and tests/reference_packing.py mirrors it in slow pure Python.
//
// Per epoch e (0, 1, ...):
//  1. The documents doc_ids are shuffled with the generator (seed, kStreamPacking, e)
//     (sample_index.h: SplitMix64 Fisher-Yates), so epoch e never depends on the epoch count.
//  2. Each document in that order becomes one or more pieces [start, start + len):
//     - a document of at most `capacity` tokens is one piece (empty documents none);
//     - a longer one is cut at its allowed split points (split_points of that sequence, sorted
//       positions in (0, size); ChatFlow passes the turn boundaries: positions where the loss
//       mask goes from 1 to 0, i.e. a new prompt starts). From the piece start s, the piece ends
//       at the largest split point p with s < p <= s + capacity (one split counted);
//     - when there is no such point (one turn longer than a bin) the piece is s .. s + capacity
//       and, with chunk_long_turns = 0, the rest of that turn is dropped: the next piece starts
//       at the turn's end (the next split point, or the document's end). One truncation counted,
//       and the dropped tokens. With chunk_long_turns = 1 (documents without a loss mask: no
//       prompt to protect) the turn is cut into capacity-sized pieces instead (counted as splits).
//  3. First-fit: each piece, in order, goes into the first bin of this epoch with room for it,
//     a new bin opening when none has; a bin's pieces keep their insertion order. Bins of an
//     epoch follow those of earlier epochs.
// Whole epochs are built until at least min_bins bins exist, so the output for a larger min_bins
// only appends (prefix stability).
#pragma once

#include <cstdint>
#include <vector>

namespace chatflow {

// Stream of derive_state() for the packing document order (see sample_index.h for 1-3).
constexpr uint64_t kStreamPacking = 4;

// Per-epoch counters; see PackingResult::stats.
enum PackingStat : int { kStatSplits = 0, kStatTruncations, kStatDropped, kStatTokens, kNumStats };

struct PackingResult {
  std::vector<int64_t> bin_offsets{0};  // bin b holds pieces [bin_offsets[b], bin_offsets[b+1])
  std::vector<int64_t> piece_doc;       // sequence id of each piece
  std::vector<int32_t> piece_start;     // first token of the piece in its sequence
  std::vector<int32_t> piece_len;       // its token count (1 .. capacity)
  std::vector<int64_t> epoch_bins{0};   // epoch e holds bins [epoch_bins[e], epoch_bins[e+1])
  // kNumStats counters per epoch (row-major): extra pieces made by splitting, turns truncated,
  // tokens dropped by truncation, tokens placed in bins.
  std::vector<int64_t> stats;
};

// Packs epochs of doc_ids until at least min_bins bins exist (none when min_bins <= 0).
// sizes: token count of every sequence; split_offsets[num_sequences + 1] / split_points: CSR
// lists of each sequence's allowed split points. Throws std::invalid_argument when an epoch
// yields no bin (no tokens at all) or a split point lies outside (0, size).
template <typename T>
PackingResult build_packing(const int32_t* sizes, int64_t num_sequences, const T* doc_ids,
                            int64_t num_docs, const int64_t* split_offsets,
                            const int32_t* split_points, int64_t capacity, int64_t min_bins,
                            uint64_t seed, bool chunk_long_turns);

}  // namespace chatflow
