#pragma once
// The dual system of kernel intention, shared by the batched op and its decoding prefill, without
// argument checks.
#include <torch/torch.h>

#include "kvq/functional/options.h"

namespace kvq {
namespace functional {
namespace detail {

// kappa(x, y) = exp(x . y * scale) in the solve dtype; padded keys get kernel rows and columns of
// zero (their coefficients decouple, alpha on the diagonal keeps the system definite, and they meet
// a zero column of kappa(Q, K): exact).
struct KernelSystem {
  torch::Tensor kappa_qk;  // (B, H, m, n)
  torch::Tensor system;    // kappa(K, K) + alpha I, (B, H, n, n)
  torch::Tensor values;    // V with padded rows zeroed, (B, H, n, dv)
};
KernelSystem kernel_system(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const torch::Tensor& alpha, const AttentionFuncOptions& options);

// The causal rows from one Cholesky factor L of the system (the leading t x t block of L factors
// the system of keys s <= t): U = L^{-1} kappa(K, Q), Z = L^{-1} V, o_t = sum_{s<=t} U[s, t] Z[s].
struct CausalKernelParts {
  torch::Tensor out;     // (B, H, n, dv)
  torch::Tensor factor;  // L, (B, H, n, n)
  torch::Tensor z;       // L^{-1} V, (B, H, n, dv)
};
CausalKernelParts causal_kernel_intention(const KernelSystem& system);

}  // namespace detail
}  // namespace functional
}  // namespace kvq
