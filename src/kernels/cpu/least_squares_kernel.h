#pragma once
// Least squares (intention) on the CPU (kernel layer: parameter structs, never tensors; bindings
// in src/functional/least_squares/intention.cpp and
// src/functional/least_squares/causal_least_squares.cpp).
//
// Non-causal intention, per (batch, head), one fused call instead of a dozen LibTorch ops (what
// dominates at short lengths):
//   forward   A = K^T K + alpha I = L L^T, W = A^{-1} K^T V, O = Q W     (saves L and W)
//   backward  G = A^{-1} Q^T dO, dQ = dO W^T, dV = K G, dK = V G^T - K (G W^T + W G^T),
//             dalpha = -sum(G * W)
//
// Causal least squares, fused over chunks. Per (batch, head), with
//   A_t = alpha I + sum_{s<=t} k_s k_s^T,  B_t = sum_{s<=t} k_s v_s^T,  u_t = A_t^{-1} q_t,
// two outputs are offered:
//   values   o_t = B_t^T u_t                      causal intention (Garnelo & Czarnecki 2023)
//   queries  u_t                                  the causal preconditioner of softmax-intention
// in chunks of C rows with the d x d state A and the d x dv state B kept hot. Per chunk
// (docs/mechanisms.md, "Causal intention"):
//   A0 = L0 L0^T, P = A0^{-1}, M = I + K_c P K_c^T = L L^T, R = L^{-1} K_c P,
//   W0 = A0^{-1} B0, E = L^{-1} (V_c - K_c W0)
//   values   O_c = Q_c W0 + tril(Q_c R^T) E       (the residual form)
//   queries  U_c = Q_c P - tril(Q_c R^T) R
// The forward saves P, R (and W0, E for values) per chunk, O(T (d + dv)) numbers per head for
// C = d. The backward is the reverse chunk scan (docs/mechanisms.md, "Backward"), with the suffix
// states GB = sum over later chunks of U^T dO (d x dv) and SA = -sum over later chunks of
// (U^T dQ + dQ^T U) (d x d, symmetric):
//   values   dQ_c = dO_c W0^T + tril(dO_c E^T) R
//            dV_c = K_c GB + triu(K_c U_c^T) dO_c
//            dK_c = V_c GB^T + K_c SA + triu(V_c dO_c^T - K_c dQ_c^T) U_c - triu(K_c U_c^T) dQ_c
//   queries  dQ_c = dU_c P - tril(dU_c R^T) R, and dK_c without the V and GB terms
//   dalpha   = -sum_t u_t . dq_t
// tril and triu keep the diagonal.
#include <cstdint>
#include <vector>

#include "kernels/cpu/heads_view.h"

namespace kvq {
namespace kernels {
namespace cpu {

// Where a factorisation failed: the first failing (batch, head), the chunk (causal; 0 otherwise),
// and which matrix.
struct FactorFailure {
  bool failed = false;
  int64_t batch = 0, head = 0, chunk = 0;
  const char* matrix = "";
};

// The first failure in (batch, head) order of one entry per head ({} when none failed).
inline FactorFailure first_failure(const std::vector<FactorFailure>& failures) {
  for (const auto& f : failures) {
    if (f.failed) return f;
  }
  return {};
}

template <typename T>
struct CausalLeastSquaresParams {
  int64_t batch = 0, heads = 0, length = 0, d = 0;
  int64_t dv = 0;              // 0 for the queries output (v unused)
  int64_t chunk = 64;          // C >= 1
  HeadsView<const T> q, k, v;  // (B, H, T, d), (B, H, T, d), (B, H, T, dv)
  const T* alpha = nullptr;    // alpha of head h at alpha[h * alpha_stride]
  int64_t alpha_stride = 0;    // 0 for one alpha shared by every head
  // Saved per chunk for the backward, contiguous (B, H, ceil(T / C), ...): P (d x d), R (C x d),
  // and for values W0 (d x dv), E (C x dv). Written by the forward, read by the backward.
  T *p = nullptr, *r = nullptr, *w0 = nullptr, *e = nullptr;
};

template <typename T>
struct LeastSquaresParams {
  int64_t batch = 0, heads = 0, m = 0, n = 0, d = 0, dv = 0;
  HeadsView<const T> q, k, v;  // (B, H, m, d), (B, H, n, d), (B, H, n, dv)
  const T* alpha = nullptr;    // alpha of head h at alpha[h * alpha_stride]
  int64_t alpha_stride = 0;
  // Saved for the backward, contiguous: L (B, H, d, d) (lower triangle) and W (B, H, d, dv).
  T *factor = nullptr, *weights = nullptr;
};

template <typename T>
FactorFailure intention_forward(const LeastSquaresParams<T>& params, const HeadsView<T>& out);

// Gradients are written (not accumulated); grad_alpha (B * H) receives each head's -sum(G * W).
template <typename T>
void intention_backward(const LeastSquaresParams<T>& params, const HeadsView<const T>& grad_out,
                        const HeadsView<T>& grad_q, const HeadsView<T>& grad_k,
                        const HeadsView<T>& grad_v, T* grad_alpha);

// values (dv > 0): out (B, H, T, dv) = o; queries (dv == 0): out (B, H, T, d) = u.
template <typename T>
FactorFailure causal_least_squares_forward(const CausalLeastSquaresParams<T>& params,
                                           const HeadsView<T>& out);

// Gradients are written (not accumulated). grad_out is dL/do (values) or dL/du (queries); u is
// the forward's output for queries and unused for values (it is recomputed). grad_v is unused for
// queries. grad_alpha (B * H) receives each head's -sum_t u_t . dq_t.
template <typename T>
void causal_least_squares_backward(const CausalLeastSquaresParams<T>& params,
                                   const HeadsView<const T>& grad_out, const HeadsView<const T>& u,
                                   const HeadsView<T>& grad_q, const HeadsView<T>& grad_k,
                                   const HeadsView<T>& grad_v, T* grad_alpha);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
