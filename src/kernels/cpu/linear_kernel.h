#pragma once
// Non-causal normalised linear attention on the CPU (Katharopoulos et al. 2020, "Transformers are
// RNNs"; kernel layer: parameter structs, never tensors; binding in
// src/functional/linear/linear_attention.cpp). Per (batch, head), with phi(x) = elu(x) + 1,
// padded keys dropped (their rows of phi(K) and V zeroed) and the key state
//   [S z] = phi(K)^T [V 1]           (d x (dv + 1): S = phi(K)^T V, z = phi(K)^T 1)
//   forward   num = phi(Q) S, den = phi(Q) z + eps, O = num / den (row-wise)
//   backward  dnum = dO / den, dden_i = -(dO_i . O_i) / den_i,
//             dphi(Q) = [dnum dden] [S z]^T, [dS dz] = phi(Q)^T [dnum dden],
//             dphi(K) = [V 1] [dS dz]^T, dV = phi(K) dS   (both zero on padded keys),
//             dQ = dphi(Q) * elu'(Q), dK = dphi(K) * elu'(K), elu'(x) = 1 (x > 0), exp(x) (x <= 0)
// One fused call each way: phi is computed (and recomputed in the backward) block by block in
// per-thread scratch, so neither phi(Q) nor phi(K) is stored. The forward saves [S z] and den,
// d (dv + 1) + m numbers per head; the backward also reads O.
#include <cstdint>

#include "kernels/cpu/heads_view.h"

namespace kvq {
namespace kernels {
namespace cpu {

template <typename T>
struct LinearAttentionParams {
  int64_t batch = 0, heads = 0, m = 0, n = 0, d = 0, dv = 0;
  HeadsView<const T> q, k, v;  // (B, H, m, d), (B, H, n, d), (B, H, n, dv)
  // Optional key padding, element (b, j) at key_padding[b * key_padding_batch_stride + j],
  // true = the key is ignored. nullptr = none.
  const bool* key_padding = nullptr;
  int64_t key_padding_batch_stride = 0;
  T eps = 0;  // >= 0, added to every denominator
  // Saved for the backward, contiguous: the key state [S z] (B, H, d, dv + 1) and the
  // denominators den (B, H, m). Written by the forward, read by the backward.
  T* key_state = nullptr;
  T* denominators = nullptr;
};

// out (B, H, m, dv) = O. Runs at::parallel_for over batch x heads.
template <typename T>
void linear_attention_forward(const LinearAttentionParams<T>& params, const HeadsView<T>& out);

// Gradients are written (not accumulated); out is the forward's O, grad_out dL/dO (B, H, m, dv).
// Runs at::parallel_for over batch x heads.
template <typename T>
void linear_attention_backward(const LinearAttentionParams<T>& params,
                               const HeadsView<const T>& out, const HeadsView<const T>& grad_out,
                               const HeadsView<T>& grad_q, const HeadsView<T>& grad_k,
                               const HeadsView<T>& grad_v);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
