#pragma once
// The causal linear product on the CPU, fused over chunks (kernel layer: parameter structs, never
// tensors; binding in src/functional/chunked_causal.cpp). Per (batch, head):
//   o_t = sum_{s<=t} (q_t . k_s) v_s
// in chunks of C rows with the d x dv state S_c = sum over earlier chunks of K^T V kept hot:
//   forward   O_c = Q_c S_c + tril(Q_c K_c^T) V_c,  S_{c+1} = S_c + K_c^T V_c
//   backward  (reverse over chunks, G_c = sum over later chunks of Q^T dO)
//             dQ_c = dO_c S_c^T + tril(dO_c V_c^T) K_c
//             dK_c = tril(dO_c V_c^T)^T Q_c + V_c G_c^T
//             dV_c = tril(Q_c K_c^T)^T dO_c + K_c G_c
// tril keeps the diagonal. The forward saves the chunk-start states S_c ((T / C) d dv numbers per
// head, O(T d) for C = d) for the backward. Linear and linear-identity attention use it
// (Katharopoulos et al. 2020; docs/mechanisms.md, "Linear attention").
#include <cstdint>

#include "kernels/cpu/heads_view.h"

namespace kvq {
namespace kernels {
namespace cpu {

template <typename T>
struct CausalLinearParams {
  int64_t batch = 0, heads = 0, length = 0, d = 0, dv = 0;
  int64_t chunk = 64;              // C >= 1
  HeadsView<const T> q, k, v;      // (B, H, T, d), (B, H, T, d), (B, H, T, dv)
  // Chunk-start states, contiguous (B, H, ceil(T / C), d, dv): written by the forward, read by
  // the backward.
  T* states = nullptr;
};

template <typename T>
void causal_linear_forward(const CausalLinearParams<T>& params, const HeadsView<T>& out);

// Gradients are written (not accumulated); params.states must hold the forward's states.
template <typename T>
void causal_linear_backward(const CausalLinearParams<T>& params, const HeadsView<const T>& grad_out,
                            const HeadsView<T>& grad_q, const HeadsView<T>& grad_k,
                            const HeadsView<T>& grad_v);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
