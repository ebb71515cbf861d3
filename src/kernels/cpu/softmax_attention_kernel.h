#pragma once
// Tiled online-softmax attention on the CPU: the kernel layer under the softmax family (softmax,
// kv, kv-pos, and the mixer of softmax-intention). Kernels see plain parameter structs: pointers,
// sizes, strides, the scale and flags; never tensors. The binding in
// src/functional/softmax/tiled_softmax.cpp checks and unpacks tensors (docs/architecture.md).
//
// Per (batch, head), with S = scale * Q K^T + bias and masked entries at -inf:
//   forward   P = softmax(S), O = (P * Z) V, lse_i = log sum_j exp(S_ij)  (online over key blocks)
//   backward  P = exp(S - lse), delta_i = sum_c dO_ic O_ic, dP = (dO V^T) * Z,
//             dV = (P * Z)^T dO, dS = P * (dP - delta), dQ = scale dS K, dK = scale dS^T Q,
//             dbias = dS summed over the bias's broadcast dimensions
// where Z holds the dropout factors (attention_dropout.h: 0 or 1 / (1 - p), regenerated from the
// seed in both passes; Z = 1 without dropout). delta keeps its dropout-free form:
// sum_j P_ij dP_ij = sum_j (P * Z)_ij (dO V^T)_ij = sum_c dO_ic O_ic since O = (P * Z) V
// (FlashAttention-2's dropout backward).
// recomputing S tile by tile (FlashAttention-2; PyTorch's FlashAttentionKernel.cpp). No m x n
// buffer is allocated: per thread one query block of scores, its running max and sum, and an
// output accumulator. A query row whose keys are all masked outputs zeros (lse = +inf).
#include <cstdint>

#include "kernels/cpu/attention_dropout.h"
#include "kernels/cpu/heads_view.h"

namespace kvq {
namespace kernels {
namespace cpu {

template <typename T>
struct SoftmaxAttentionParams {
  int64_t batch = 0, heads = 0, m = 0, n = 0, d = 0, dv = 0;
  HeadsView<const T> q, k, v;  // (B, H, m, d), (B, H, n, d), (B, H, n, dv)
  // Optional additive score bias of any broadcast shape: element (b, h, i, j) at
  // bias[b * bias_strides[0] + h * bias_strides[1] + i * bias_strides[2] + j * bias_strides[3]]
  // (zero strides broadcast). nullptr = no bias.
  const T* bias = nullptr;
  int64_t bias_strides[4] = {0, 0, 0, 0};
  // Optional key padding, element (b, j) at key_padding[b * key_padding_batch_stride + j],
  // true = the key is ignored. nullptr = none.
  const bool* key_padding = nullptr;
  int64_t key_padding_batch_stride = 0;
  T scale = 1;
  bool causal = false;  // query i sees keys j <= i (m == n)
  AttentionDropout dropout;  // on the normalised weights; inactive by default
  // Query rows per block (the parallel unit of the forward) and keys per block: one score tile
  // is query_block x key_block. A sweep of 64..256 x 128..512 at T = 1024, d = 64 on a 2-core
  // AVX-512 machine moved fwd+bwd by under 8% (docs/results/benchmarks.md); the tile stays in
  // L2. Only float rounding depends on them (the order of the online sums), never the dropout
  // mask; tests vary them.
  int64_t query_block = 128, key_block = 256;
};

template <typename T>
struct SoftmaxAttentionForwardOutputs {
  HeadsView<T> out;    // (B, H, m, dv)
  T* lse = nullptr;    // (B, H, m) contiguous; +inf for rows with no visible key
};

template <typename T>
struct SoftmaxAttentionBackwardParams {
  SoftmaxAttentionParams<T> forward;
  HeadsView<const T> out, grad_out;  // the forward's O and dL/dO, (B, H, m, dv)
  const T* lse = nullptr;            // the forward's log-sum-exp, (B, H, m) contiguous
  HeadsView<T> grad_q, grad_k, grad_v;  // written (not accumulated)
  // Optional dL/dbias before the reduction to the bias's shape: a contiguous (B, H, bias_rows,
  // bias_cols) buffer, bias_rows in {1, m} and bias_cols in {1, n}; entries of dS are summed into
  // it along the dimensions of size 1. nullptr = not wanted.
  T* grad_bias = nullptr;
  int64_t bias_rows = 1, bias_cols = 1;
};

// Both run at::parallel_for over their independent pieces: forward over batch x heads x query
// blocks, backward over batch x heads.
template <typename T>
void softmax_attention_forward(const SoftmaxAttentionParams<T>& params,
                               const SoftmaxAttentionForwardOutputs<T>& outputs);

template <typename T>
void softmax_attention_backward(const SoftmaxAttentionBackwardParams<T>& params);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
