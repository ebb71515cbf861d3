#pragma once
// The Mesa layer (gated least squares; von Oswald et al. 2025, "MesaNet") on the CPU: kernel layer,
// parameter structs, never tensors (binding in src/functional/least_squares/mesa.cpp).
//
// Per (batch, head), with log-decay g_t <= 0, a_t = exp(g_t), weight beta_t, ridge lambda (d) > 0:
//   S_kk,t = a_t S_kk,t-1 + beta_t k_t k_t^T        (d x d, symmetric)
//   S_kv,t = a_t S_kv,t-1 + beta_t k_t v_t^T        (d x dv)
//   A_t = S_kk,t + diag(lambda),  x_t = A_t^{-1} q_t,  o_t = S_kv,t^T x_t
// exactly: every A_t is factorised (Cholesky, d^3 / 3 flops) because the ridge does not decay and
// A_t is no low-rank update of A_t-1 once g != 0 (docs/mechanisms.md, "Mesa"). The factorisations
// of W heads run in SIMD lockstep: the per-token state and factor are stored lane-interleaved,
// element (i, j) of head l at [(i * n + j) * W + l], every loop innermost over the W lanes, with no
// dependency across lanes (W = 8 for float, 4 for double; heads beyond B * H are padding lanes).
//
// The forward writes the state at the start of each chunk of C tokens (checkpoints: memory
// O((T / C) d (d + dv)) per head). The backward walks the chunks in reverse; per chunk it
// recomputes the states, factors and x_t from the checkpoint (never by undoing the decay) and then,
// with D_t = (dL/dS_kk,t, dL/dS_kv,t) accumulated backwards, D_t = direct_t + a_t+1 D_t+1:
//   direct_t:  dS_kv += x_t do_t^T,  dS_kk += -sym(y_t x_t^T),  y_t = A_t^{-1} S_kv,t do_t
//   dq_t = y_t,  dlambda -= y_t * x_t,  dg_t = a_t (<D^kk_t, S_kk,t-1> + <D^kv_t, S_kv,t-1>),
//   dbeta_t = k_t^T D^kk_t k_t + k_t^T D^kv_t v_t,  dk_t = 2 beta_t D^kk_t k_t + beta_t D^kv_t v_t,
//   dv_t = beta_t D^kv_t^T k_t,  d initial state = a_1 D_1 (D^kk symmetric throughout).
#include <cstdint>

#include "kernels/cpu/heads_view.h"
#include "kernels/cpu/least_squares_kernel.h"

namespace kvq {
namespace kernels {
namespace cpu {

template <typename T>
struct MesaParams {
  int64_t batch = 0, heads = 0, length = 0, d = 0, dv = 0;
  int64_t chunk = 64;          // C >= 1: checkpoint spacing
  HeadsView<const T> q, k, v;  // (B, H, T, d), (B, H, T, d), (B, H, T, dv)
  const T* g = nullptr;        // (B, H, T) contiguous, log-decay
  const T* beta = nullptr;     // (B, H, T) contiguous
  const T* lambda = nullptr;   // (H, d) contiguous, > 0
  // The states before the first token, contiguous (B, H, d, d) (symmetric) and (B, H, d, dv);
  // null for zero states.
  const T* initial_kk = nullptr;
  const T* initial_kv = nullptr;
  // Checkpoints, contiguous (B, H, ceil(T / C), d, d) and (B, H, ceil(T / C), d, dv): the states
  // before token c * C. Written by the forward, read by the backward.
  T* checkpoint_kk = nullptr;
  T* checkpoint_kv = nullptr;
};

// out (B, H, T, dv) = o; final_kk (B, H, d, d) and final_kv (B, H, d, dv) (contiguous) = the states
// after the last token. Returns the first (batch, head, chunk) whose A_t was not numerically
// positive definite, if any.
template <typename T>
FactorFailure mesa_forward(const MesaParams<T>& params, const HeadsView<T>& out, T* final_kk,
                           T* final_kv);

// Gradients are written, not accumulated. grad_final_kk / grad_final_kv (contiguous, as the final
// states) may be null (zero). grad_g and grad_beta (B, H, T), grad_lambda (B, H, d) (each head's
// sum over t; the binding reduces over B), grad_initial_kk (B, H, d, d) (symmetric) and
// grad_initial_kv (B, H, d, dv) are contiguous.
template <typename T>
void mesa_backward(const MesaParams<T>& params, const HeadsView<const T>& grad_out,
                   const T* grad_final_kk, const T* grad_final_kv, const HeadsView<T>& grad_q,
                   const HeadsView<T>& grad_k, const HeadsView<T>& grad_v, T* grad_g, T* grad_beta,
                   T* grad_lambda, T* grad_initial_kk, T* grad_initial_kv);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
