// Per-source index builders; see sample_index.h for the contract and the RNG definition.
#include "sample_index.h"

#include <stdexcept>
#include <string>
#include <utility>

namespace chatflow {

namespace {
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
}  // namespace

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t derive_state(uint64_t seed, uint64_t stream, uint64_t index) {
  // Two finalizer rounds so that nearby (seed, stream, index) triples give unrelated states.
  return mix64(mix64(seed + stream * kGolden) + index * kGolden);
}

uint64_t SplitMix64::next() {
  state += kGolden;
  return mix64(state);
}

uint64_t SplitMix64::below(uint64_t bound) {
  // 2^64 mod bound, computed in uint64 as (2^64 - bound) mod bound.
  const uint64_t threshold = (0 - bound) % bound;
  uint64_t r = next();
  while (r < threshold) r = next();
  return r % bound;
}

template <typename T>
void shuffle_in_place(T* values, int64_t n, uint64_t seed, uint64_t stream, uint64_t index) {
  SplitMix64 rng{derive_state(seed, stream, index)};
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(values[i], values[j]);
  }
}

template <typename T>
void build_document_index(const T* doc_ids, int64_t n, int64_t num_epochs, uint64_t seed, T* out) {
  for (int64_t e = 0; e < num_epochs; ++e) {
    T* epoch = out + e * n;
    for (int64_t i = 0; i < n; ++i) epoch[i] = doc_ids[i];
    shuffle_in_place(epoch, n, seed, kStreamDocuments, static_cast<uint64_t>(e));
  }
}

template <typename T>
void build_sample_index(const int32_t* sizes, const T* doc_index, int64_t doc_index_len,
                        int64_t seq_length, int64_t num_samples, int64_t add_extra_token, T* out) {
  int64_t pos = 0;     // position in doc_index of the current document
  int64_t offset = 0;  // token offset inside it
  out[0] = 0;
  out[1] = 0;
  for (int64_t s = 1; s <= num_samples; ++s) {
    // Walk seq_length + add_extra_token tokens forward; the next sample starts add_extra_token
    // tokens before where this one ends, so the extra (label-only) token is shared.
    int64_t remaining = seq_length + add_extra_token;
    while (remaining != 0) {
      if (pos >= doc_index_len) {
        throw std::invalid_argument(
            "build_sample_index: the document order holds too few tokens for " +
            std::to_string(num_samples) + " samples of " + std::to_string(seq_length) +
            " tokens (ran out at sample " + std::to_string(s - 1) + ")");
      }
      const int64_t left = static_cast<int64_t>(sizes[doc_index[pos]]) - offset;
      remaining -= left;
      if (remaining <= 0) {
        // The window ends inside this document (or exactly at its end): step back over the
        // shared extra token, as Megatron does, so the offset stays inside the document.
        offset += remaining + left - add_extra_token;
        remaining = 0;
      } else {
        ++pos;
        offset = 0;
      }
    }
    out[2 * s] = static_cast<T>(pos);
    out[2 * s + 1] = static_cast<T>(offset);
  }
}

template <typename T>
void build_shuffle_index(int64_t num_blocks, int64_t block, uint64_t seed, T* out) {
  for (int64_t b = 0; b < num_blocks; ++b) {
    T* values = out + b * block;
    for (int64_t i = 0; i < block; ++i) values[i] = static_cast<T>(b * block + i);
    shuffle_in_place(values, block, seed, kStreamSamples, static_cast<uint64_t>(b));
  }
}

#define CHATFLOW_INSTANTIATE(T)                                                                 \
  template void shuffle_in_place<T>(T*, int64_t, uint64_t, uint64_t, uint64_t);                \
  template void build_document_index<T>(const T*, int64_t, int64_t, uint64_t, T*);             \
  template void build_sample_index<T>(const int32_t*, const T*, int64_t, int64_t, int64_t,      \
                                      int64_t, T*);                                             \
  template void build_shuffle_index<T>(int64_t, int64_t, uint64_t, T*);

CHATFLOW_INSTANTIATE(int32_t)
CHATFLOW_INSTANTIATE(int64_t)
#undef CHATFLOW_INSTANTIATE

}  // namespace chatflow
