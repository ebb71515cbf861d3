#pragma once
// The Mesa layer (gated least squares): von Oswald et al. 2025, "MesaNet: Sequence Modeling by
// Locally Optimal Test-Time Training". Causal only; CPU float32 and float64.
#include <torch/torch.h>

#include <tuple>

namespace kvq {
namespace functional {

struct MesaOptions {
  /// The states before the first token: S_kk (B, H, d, d) and S_kv (B, H, d, dv), both or
  /// neither. S_kk is used as (S_kk + S_kk^T) / 2; its gradient is symmetric. Default: undefined
  /// (zero states).
  TORCH_ARG(torch::Tensor, initial_kk) = {};
  TORCH_ARG(torch::Tensor, initial_kv) = {};
  /// (B, T) bool, true = padding: a padded token updates nothing (it is run with beta_t = 0 and
  /// g_t = 0, so the states pass it unchanged) and g, beta, k and v get zero gradients there. Its
  /// output row is still o_t = S_kv,t^T A_t^{-1} q_t with the unchanged states. Default: undefined.
  TORCH_ARG(torch::Tensor, key_padding_mask) = {};
  /// Checkpoint spacing C >= 1: the forward keeps the states at every C-th token (memory
  /// O((T / C) d (d + dv)) per head), the backward recomputes C tokens at a time from them
  /// (scratch O((4 + C / 4) d (d + dv)) per lane group). The result does not depend on C.
  /// Default: 64.
  TORCH_ARG(int64_t, chunk_size) = 64;
};

// Mesa, per (batch, head), with log-decay g_t (<= 0 in the layer; not checked), a_t = exp(g_t),
// weight beta_t (in (0, 1] in the layer; >= 0 keeps A_t positive definite), ridge lambda > 0:
//   S_kk,t = a_t S_kk,t-1 + beta_t k_t k_t^T,   S_kv,t = a_t S_kv,t-1 + beta_t k_t v_t^T
//   o_t = S_kv,t^T (S_kk,t + diag(lambda))^{-1} q_t
// exactly (one Cholesky factorisation per token, W heads in SIMD lockstep; no conjugate-gradient
// approximation), with an analytic backward for every input (docs/mechanisms.md, "Mesa").
// g = 0, beta = 1, lambda = alpha is causal intention.
// q (B, H, T, d), k (B, H, T, d), v (B, H, T, dv), g and beta (B, H, T), lambda (H, d), (H) or ()
// (every entry > 0) -> o (B, H, T, dv). q, k, v, g, beta and the initial states share one dtype,
// float32 or float64, on the CPU; lambda is converted to it. Time O(B H T (d^3 / 3 + d dv)),
// memory linear in T.
torch::Tensor mesa(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                   const torch::Tensor& g, const torch::Tensor& beta, const torch::Tensor& lambda,
                   const MesaOptions& options = {});

// mesa() and the states after the last token: (o (B, H, T, dv), S_kk (B, H, d, d),
// S_kv (B, H, d, dv)), all differentiable. Running a prefix, then the rest with these as
// initial states, equals one run.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> mesa_with_final_state(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& g,
    const torch::Tensor& beta, const torch::Tensor& lambda, const MesaOptions& options = {});

}  // namespace functional
}  // namespace kvq
