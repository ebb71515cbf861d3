#include "kernels/cpu/attention_dropout.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/multiversion.h"
#include "kernels/cpu/philox.h"

namespace kvq {
namespace kernels {
namespace cpu {
namespace {

constexpr int64_t kGroupsPerChunk = 64;  // Philox calls per pass: 256 words on the stack

// words[4 g + w] = word w of Philox at counter (first_group + g, query, head, offset), g < groups.
// One counter per loop iteration: GCC vectorises the loop (a lane per counter).
KVQ_MULTIVERSION void philox_words(uint32_t first_group, int64_t groups, uint32_t query,
                                   uint32_t head, uint32_t offset, uint32_t key0, uint32_t key1,
                                   uint32_t* words) {
  for (int64_t g = 0; g < groups; ++g) {
    uint32_t c0 = first_group + static_cast<uint32_t>(g), c1 = query, c2 = head, c3 = offset;
    philox4x32_10(c0, c1, c2, c3, key0, key1);
    words[4 * g] = c0;
    words[4 * g + 1] = c1;
    words[4 * g + 2] = c2;
    words[4 * g + 3] = c3;
  }
}

template <typename T>
KVQ_MULTIVERSION void words_to_factors(const uint32_t* words, int64_t count, uint32_t threshold,
                                       T keep, T* factors) {
  for (int64_t c = 0; c < count; ++c) factors[c] = words[c] >= threshold ? keep : T(0);
}

}  // namespace

AttentionDropout make_attention_dropout(double p, uint64_t seed, uint32_t offset) {
  AttentionDropout d;
  d.seed = seed;
  d.offset = offset;
  d.drop_threshold = static_cast<uint32_t>(std::llround(p * 4294967296.0));
  d.keep_scale = 1.0 / (1.0 - p);
  return d;
}

template <typename T>
void dropout_factors(const AttentionDropout& dropout, uint32_t head, uint32_t query, int64_t key0,
                     int64_t count, T* factors) {
  const auto seed_low = static_cast<uint32_t>(dropout.seed);
  const auto seed_high = static_cast<uint32_t>(dropout.seed >> 32);
  const T keep = static_cast<T>(dropout.keep_scale);
  uint32_t words[4 * kGroupsPerChunk];
  const int64_t end = key0 + count;
  for (int64_t group0 = key0 / 4; group0 * 4 < end; group0 += kGroupsPerChunk) {
    const int64_t groups = std::min(kGroupsPerChunk, (end - group0 * 4 + 3) / 4);
    philox_words(static_cast<uint32_t>(group0), groups, query, head, dropout.offset, seed_low,
                 seed_high, words);
    // The chunk's words cover keys [group0 * 4, group0 * 4 + 4 * groups); keep those in range.
    const int64_t first = std::max(group0 * 4, key0), last = std::min(group0 * 4 + 4 * groups, end);
    words_to_factors(words + (first - group0 * 4), last - first, dropout.drop_threshold, keep,
                     factors + (first - key0));
  }
}

template void dropout_factors<float>(const AttentionDropout&, uint32_t, uint32_t, int64_t, int64_t,
                                     float*);
template void dropout_factors<double>(const AttentionDropout&, uint32_t, uint32_t, int64_t,
                                      int64_t, double*);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
