#pragma once
// The binding of the tiled CPU softmax-attention kernel (src/kernels/cpu/): checks and unpacks
// tensors into the kernel's parameter structs, and wraps forward and backward in one autograd
// function (the backward recomputes the scores from the saved log-sum-exp).
#include <torch/torch.h>

namespace kvq {
namespace functional {
namespace detail {

// Whether the tiled kernel takes a call with these inputs: CPU float32/float64 tensors.
bool tiled_softmax_supports(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

// O = softmax(scale * Q K^T + bias, masked) V without an m x n buffer.
// q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv); bias undefined or broadcastable to
// (B, H, m, n) (its gradient is summed back to its shape; only a bias with both an m and an n
// dimension makes that gradient m x n); key_padding_mask undefined or (B, n) bool, true = ignore;
// causal needs m == n. Rows with no visible key output zeros; rows that see a NaN or an infinity
// (in q, a visible k or v row, or a visible bias entry that is NaN or +inf) output NaN. Returns
// (B, H, m, dv), contiguous.
torch::Tensor tiled_softmax_attention(const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& v, const torch::Tensor& bias,
                                      const torch::Tensor& key_padding_mask, double scale,
                                      bool causal);

}  // namespace detail
}  // namespace functional
}  // namespace kvq
