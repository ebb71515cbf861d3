#pragma once
// What one MultiHeadKVQ layer keeps between decoding steps (docs/mechanisms.md, "Incremental
// decoding"): the causal self-attention state (MultiHeadKVQ::prefill / step) and the projected
// memory of a cross-attention (MultiHeadKVQ::project_memory / forward_memory). Both hold the
// module's weights as they were when built: build them again after the weights change.
#include <torch/torch.h>

#include "kvq/functional/decoding.h"

namespace kvq {
namespace nn {

// Causal self-attention after length() tokens: the mechanism's decoding state (keys and values,
// running sums or Cholesky factor; kvq/functional/decoding.h) and, for the kv-pos projection, its
// score terms by key position: gain (H) and the per-key bias u(j) + b0 (H, 1, width) for positions
// j = 0 .. width - 1 (kv_pos_key_terms), extended as tokens arrive.
struct AttentionCache {
  functional::DecodeState state;
  torch::Tensor score_gain, key_bias;  // kv-pos only

  // Tokens seen; the next token has position length().
  int64_t length() const { return state.length; }
};

// Cross-attention over a fixed memory (an encoder's output): its keys and values projected once,
// (B, H, S, d) and (B, H, S, dv), its padding mask (B, S) and, for kv-pos, the score terms of its S
// positions.
struct MemoryCache {
  torch::Tensor keys, values, key_padding_mask;
  torch::Tensor score_gain, score_bias;  // kv-pos only
};

}  // namespace nn
}  // namespace kvq
