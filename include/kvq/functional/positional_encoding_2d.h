#pragma once
#include <torch/torch.h>

#include "kvq/functional/options.h"

namespace kvq {
namespace functional {

// The fixed sinusoidal 2D table of the `positional-encodings` package (PositionalEncoding2D), as
// used by the Key-Value Transformer code. ch = 2 * ceil(p / 4), f_k = 10000^(-2k / ch),
// e(i) = [sin(i f_0), cos(i f_0), sin(i f_1), cos(i f_1), ...] (length ch),
// P[i, j] = concat(e(i), e(j)) truncated to p channels, positions 0-based.
// Returns (rows, cols, channels); i indexes query positions, j key positions.
torch::Tensor positional_encoding_2d(int64_t rows, int64_t cols, int64_t channels,
                                     torch::TensorOptions options = torch::kFloat32);

// The kv-pos score terms for a (rows, cols) score matrix:
//   gain = sum_c w_c                (H) or ()
//   bias = P . w + b0               (H, rows, cols) or (rows, cols)
// pos_weight (H, p) or (p), pos_bias (H) or (). Both outputs carry gradients to w and b0.
std::pair<torch::Tensor, torch::Tensor> kv_pos_score_terms(const torch::Tensor& pos_weight,
                                                           const torch::Tensor& pos_bias,
                                                           int64_t rows, int64_t cols);

// The same terms with the query-position part of P . w left out, which is what kvq computes with:
//   gain = sum_c w_c                          (H) or ()
//   key_bias_j = e(j) . w[ch:] + b0            (H, 1, cols) or (1, cols)
// P is separable, P_ij . w = e(i) . w[:ch] + e(j) . w[ch:], and a term constant along a score row
// cancels under the row softmax: softmax(gain S + P.w + b0) = softmax(gain S + key_bias) exactly,
// and the dropped term's gradient is exactly zero. O(cols) memory instead of O(rows cols), so the
// tiled softmax kernel runs kv-pos without an m x n buffer.
std::pair<torch::Tensor, torch::Tensor> kv_pos_key_terms(const torch::Tensor& pos_weight,
                                                         const torch::Tensor& pos_bias,
                                                         int64_t cols);

// `options` with kv-pos's terms for `cols` keys as score_gain / score_bias (kv_pos_key_terms of
// pos_weight and pos_bias cast to `dtype`): how the module, the ops and the benchmarks run kv-pos.
AttentionFuncOptions with_kv_pos_terms(AttentionFuncOptions options,
                                       const torch::Tensor& pos_weight,
                                       const torch::Tensor& pos_bias, int64_t cols,
                                       torch::ScalarType dtype);

}  // namespace functional
}  // namespace kvq
