#pragma once
#include <torch/torch.h>

namespace kvq {
namespace functional {
namespace detail {

// Splits the time axis of x (B, H, T, D) into chunks of c rows, zero-padding T up to N * c:
// returns (B, H, N, c, D).
torch::Tensor split_chunks(const torch::Tensor& x, int64_t chunk);
// Inverse of split_chunks: (B, H, N, c, D) -> (B, H, length, D).
torch::Tensor merge_chunks(const torch::Tensor& x, int64_t length);

// Exclusive prefix sum over the chunk axis (dim 2) of per-chunk states (B, H, N, ...): entry c is
// the sum over chunks before c.
torch::Tensor exclusive_chunk_cumsum(const torch::Tensor& states);

// Causal linear product o_t = sum_{s<=t} (q_t . k_s) v_s, chunk-parallel:
//   O_c = Q_c S_c + tril(Q_c K_c^T) V_c,  S_c = sum over earlier chunks of K^T V.
// q, k (B, H, T, d), v (B, H, T, dv) -> (B, H, T, dv). O(T C d + T d dv), memory O((T/C) d dv).
// CPU float32/float64 run the fused kernel of src/kernels/cpu/causal_linear_kernel.h with its
// analytic backward; other tensors the chunked LibTorch composition.
torch::Tensor causal_linear_product(const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& v, int64_t chunk);

}  // namespace detail
}  // namespace functional
}  // namespace kvq
