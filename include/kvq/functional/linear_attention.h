#pragma once
#include "kvq/functional/options.h"

namespace kvq {
namespace functional {

// Normalised linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"), the `linear`
// mechanism:
//   phi(x) = elu(x) + 1,  O = phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1 + eps)
// Non-causal O((m + n) d dv); on CPU float32/float64 one fused kernel call each way with an
// analytic backward (src/kernels/cpu/linear_kernel.h), saving O(m + d dv) per head. Causal form by
// chunked prefix sums, O(T C d + T d dv). Padded keys (key_padding_mask true) are dropped exactly.
// q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv) -> (B, H, m, dv); eps >= 0 (default 1e-6).
torch::Tensor linear_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const AttentionFuncOptions& options = {});

// Unnormalised identity linear attention, the `linear-identity` mechanism: O = Q (K^T V); causal
// o_t = q_t^T sum_{s<=t} k_s v_s^T. This is the form Intention generalises (Garnelo & Czarnecki
// 2023): with K^T K = I and alpha = 0 the two agree.
torch::Tensor linear_identity_attention(const torch::Tensor& q, const torch::Tensor& k,
                                        const torch::Tensor& v,
                                        const AttentionFuncOptions& options = {});

}  // namespace functional
}  // namespace kvq
