// Per-source index builders of ChatFlow's datasets: the shuffled document order over epochs, the
// sample index that packs documents into fixed-length windows, and the shuffled sample order.
//
// Plain C++17, no Python: csrc/bind_sample_index.cpp exposes these to chatflow._C and
// chatflow/data/sample_index.py validates inputs and picks int32/int64. tests/
// reference_sample_index.py mirrors every function (including the RNG) in slow pure Python.
//
// Randomness. Every shuffle draws from SplitMix64 (Steele, Lea & Flood 2014), a 64-bit generator
// whose state is one uint64 and whose step is an add and a finalizer; it is trivially mirrored in
// Python with 64-bit masking. A shuffle is named by (seed, stream, index): stream 1 is the
// document order (index = epoch), stream 2 the sample order (index = block), stream 3 the
// train/validation document split. Each (seed, stream, index) starts from its own state, so epoch
// e's order never depends on how many epochs the run needs; this makes every index prefix-stable
// (growing the sample count only appends), which resuming with a changed schedule relies on.
// Shuffles are Fisher-Yates from the last element down, with unbiased bounded draws by rejection.
#pragma once

#include <cstdint>

namespace chatflow {

// Streams of derive_state(): one per kind of shuffle.
constexpr uint64_t kStreamDocuments = 1;
constexpr uint64_t kStreamSamples = 2;
constexpr uint64_t kStreamSplit = 3;

// The SplitMix64 finalizer (a bijection on uint64).
uint64_t mix64(uint64_t z);

// Initial generator state for (seed, stream, index).
uint64_t derive_state(uint64_t seed, uint64_t stream, uint64_t index);

// SplitMix64: state += golden gamma, output mix64(state).
struct SplitMix64 {
  uint64_t state;
  uint64_t next();
  // Uniform integer in [0, bound), bound >= 1, by rejecting the first 2^64 mod bound raw values.
  uint64_t below(uint64_t bound);
};

// In-place Fisher-Yates shuffle of values[0, n) with the generator for (seed, stream, index).
template <typename T>
void shuffle_in_place(T* values, int64_t n, uint64_t seed, uint64_t stream, uint64_t index);

// out[e * n + i] for e in [0, num_epochs): epoch e is doc_ids[0, n) shuffled with
// (seed, kStreamDocuments, e). out holds num_epochs * n elements.
template <typename T>
void build_document_index(const T* doc_ids, int64_t n, int64_t num_epochs, uint64_t seed, T* out);

// Packs the documents listed by doc_index (ids into sizes) into num_samples windows of
// seq_length + add_extra_token tokens, consecutive windows sharing add_extra_token tokens, with
// Megatron's build_sample_idx layout: out[2 * s] = position in doc_index where sample s starts,
// out[2 * s + 1] = token offset in that document; num_samples + 1 rows, the last one closing the
// last sample. Throws std::invalid_argument when doc_index holds too few tokens.
template <typename T>
void build_sample_index(const int32_t* sizes, const T* doc_index, int64_t doc_index_len,
                        int64_t seq_length, int64_t num_samples, int64_t add_extra_token, T* out);

// out[0, num_blocks * block): block b is the identity b*block .. (b+1)*block-1 shuffled with
// (seed, kStreamSamples, b).
template <typename T>
void build_shuffle_index(int64_t num_blocks, int64_t block, uint64_t seed, T* out);

}  // namespace chatflow
