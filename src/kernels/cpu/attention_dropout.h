#pragma once
// Dropout on attention weights without a stored mask (FlashAttention, Dao et al. 2022, sec. 3.1):
// whether weight (b, h, i, j) is kept is a pure function of (seed, offset, b * H + h, i, j), so
// the forward and the backward of the tiled kernel regenerate the same mask tile by tile, and the
// mask depends on neither the tile sizes nor the threads. Word j % 4 of Philox 4x32-10 (philox.h)
// with key = seed and counter = (j / 4, i, b * H + h, offset) decides weight (b, h, i, j): kept
// when the word is >= drop_threshold = round(p * 2^32), i.e. with probability 1 - p (to 2^-32),
// and a kept weight is scaled by 1 / (1 - p) (torch.nn.functional.dropout's convention).
#include <cstdint>

namespace kvq {
namespace kernels {
namespace cpu {

struct AttentionDropout {
  uint64_t seed = 0;
  uint32_t offset = 0;          // a second stream per seed (the counter's last word)
  uint32_t drop_threshold = 0;  // a weight is dropped when its word is below it; 0 = no dropout
  double keep_scale = 1;        // 1 / (1 - p)

  bool active() const { return drop_threshold != 0; }
};

// The parameters for dropout probability p in [0, 1) (p = 0, or p below 2^-33: inactive).
AttentionDropout make_attention_dropout(double p, uint64_t seed, uint32_t offset);

// factors[c] = keep_scale if weight (head, query, key0 + c) is kept, else 0, for c < count; head
// is b * H + h. Needs key0 + count <= 2^34 and query, head < 2^32.
template <typename T>
void dropout_factors(const AttentionDropout& dropout, uint32_t head, uint32_t query, int64_t key0,
                     int64_t count, T* factors);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
