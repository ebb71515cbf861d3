#pragma once
// Incremental causal decoding of every mechanism: a state built from a prefix by X_prefill, then
// advanced one token at a time by X_step. Prefill of tokens 0 .. n-1 followed by steps for tokens
// n, n+1, ... gives exactly the rows of the batched causal forward (docs/mechanisms.md,
// "Incremental decoding").
//
// Layout as the batched ops: q, k (B, H, n, d), v (B, H, n, dv) for a prefill (n >= 0), and one
// token per step: q_t, k_t (B, H, 1, d), v_t (B, H, 1, dv) -> (B, H, 1, dv). The options are the
// batched op's (causal is implied; no dropout is applied); a step takes the same options as its
// prefill. key_padding_mask (B, n) at prefill marks padded prefix keys, which no later step sees;
// a stepped token is never padding. Steps are for inference: the state is updated in place and
// the intention mechanisms' rank-1 update has no backward.
#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>

#include "kvq/functional/options.h"

namespace kvq {
namespace functional {

// The decoding state of one causal self-attention layer after `length` tokens (positions
// 0 .. length - 1), per batch element and head. Each mechanism keeps what its step needs; the
// other fields stay undefined. Per head and per step (t = length):
//   softmax, kv, kv-pos  keys, values (the KV cache)                  memory O(t d), step O(t d)
//   linear               kv_sum = sum phi(k_s) v_s^T, key_sum = sum phi(k_s)   O(d dv), O(d dv)
//   linear-identity      kv_sum = sum k_s v_s^T                              O(d dv), O(d dv)
//   intention            factor = L, the lower Cholesky factor of A_t = alpha I + sum k_s k_s^T,
//                        kv_sum = B_t = sum k_s v_s^T                  O(d^2 + d dv), O(d^2 + d dv)
//   softmax-intention    factor = L of A_t, keys, values               O(d^2 + t d), O(d^2 + t d)
//   kernel-intention     keys, factor = L of kappa(K, K) + alpha I (t x t, one row per token),
//                        kernel_values = L^{-1} V                      O(t^2), O(t^2 + t d)
// The cached rows live in buffers of `capacity` rows that double when full; only the first
// `length` rows are meaningful.
struct DecodeState {
  std::string mechanism;  // which prefill built it: "softmax", "linear", "intention", ...
  int64_t batch = 0, heads = 0, dim = 0, value_dim = 0;  // B, H, d, dv
  int64_t length = 0;              // tokens seen; the next token has position `length`
  torch::Tensor keys;              // (B, H, capacity, d)
  torch::Tensor values;            // (B, H, capacity, dv)
  torch::Tensor key_padding_mask;  // (B, capacity) bool, true = padded; undefined = none padded
  torch::Tensor kv_sum;            // (B, H, d, dv)
  torch::Tensor key_sum;           // (B, H, d)
  torch::Tensor factor;         // (B, H, d, d), or (B, H, capacity, capacity) for kernel-intention
  torch::Tensor kernel_values;  // (B, H, capacity, dv)

  // The first `length` rows of keys / values / key_padding_mask (views; undefined if unused).
  torch::Tensor cached_keys() const;
  torch::Tensor cached_values() const;
  torch::Tensor cached_key_padding_mask() const;
};

// Any mechanism `mix` (q, k, v, options) -> (B, H, m, dv) whose causal row t is `mix` for query t
// over the keys 0 .. t (every kvq mechanism's is): the KV cache, and each step runs `mix` for the
// new query over every cached key (non-causal, padded prefix keys masked). Memory O(t d), a step
// costs one query of `mix` over t keys. The state's mechanism is "cached". The decoding of a
// registry row that has no state of its own (kvq::cached_decoding in kvq/registry.h).
using MixFn = std::function<torch::Tensor(const torch::Tensor& q, const torch::Tensor& k,
                                          const torch::Tensor& v,
                                          const AttentionFuncOptions& options)>;
std::pair<torch::Tensor, DecodeState> cached_prefill(const MixFn& mix, const torch::Tensor& q,
                                                     const torch::Tensor& k,
                                                     const torch::Tensor& v,
                                                     const AttentionFuncOptions& options = {});
torch::Tensor cached_step(const MixFn& mix, DecodeState& state, const torch::Tensor& q,
                          const torch::Tensor& k, const torch::Tensor& v,
                          const AttentionFuncOptions& options = {});

// Softmax family (softmax; kv and kv-pos are softmax with q = k and, for kv-pos, the options'
// score_gain / score_bias). Prefill: the batched causal softmax and the KV cache. Step: append
// (k_t, v_t) and attend with q_t over all cached keys,
//   o_t = softmax(gain q_t K_{<=t}^T scale + bias) V_{<=t}.
// In a step the options' score_bias covers the keys 0 .. t: broadcastable to (B, H, 1, t + 1)
// (kv-pos: the per-key bias u(j) + b0 of kv_pos_key_terms for j <= t).
std::pair<torch::Tensor, DecodeState> softmax_prefill(const torch::Tensor& q,
                                                      const torch::Tensor& k,
                                                      const torch::Tensor& v,
                                                      const AttentionFuncOptions& options = {});
torch::Tensor softmax_step(DecodeState& state, const torch::Tensor& q, const torch::Tensor& k,
                           const torch::Tensor& v, const AttentionFuncOptions& options = {});

// Linear attention, phi = elu + 1:
//   S += phi(k_t) v_t^T,  z += phi(k_t),  o_t = phi(q_t)^T S / (phi(q_t) . z + eps).
std::pair<torch::Tensor, DecodeState> linear_prefill(const torch::Tensor& q, const torch::Tensor& k,
                                                     const torch::Tensor& v,
                                                     const AttentionFuncOptions& options = {});
torch::Tensor linear_step(DecodeState& state, const torch::Tensor& q, const torch::Tensor& k,
                          const torch::Tensor& v, const AttentionFuncOptions& options = {});

// Linear-identity attention:  S += k_t v_t^T,  o_t = q_t^T S.
std::pair<torch::Tensor, DecodeState> linear_identity_prefill(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const AttentionFuncOptions& options = {});
torch::Tensor linear_identity_step(DecodeState& state, const torch::Tensor& q,
                                   const torch::Tensor& k, const torch::Tensor& v,
                                   const AttentionFuncOptions& options = {});

// Causal intention. Prefill: the batched causal intention, L = chol(alpha I + K^T K), B = K^T V.
// Step, O(d^2 + d dv) per head whatever t:
//   L <- rank-1 Cholesky update of L with k_t (cholesky_update.h),  B += k_t v_t^T,
//   u = A_t^{-1} q_t = L^{-T} (L^{-1} q_t) (two triangular solves),  o_t = B^T u.
// alpha () or (H) > 0 enters at prefill only (it is in L). Solves run in float32 for half inputs.
std::pair<torch::Tensor, DecodeState> intention_prefill(const torch::Tensor& q,
                                                        const torch::Tensor& k,
                                                        const torch::Tensor& v,
                                                        const torch::Tensor& alpha,
                                                        const AttentionFuncOptions& options = {});
torch::Tensor intention_step(DecodeState& state, const torch::Tensor& q, const torch::Tensor& k,
                             const torch::Tensor& v, const AttentionFuncOptions& options = {});

// Causal softmax intention: the factor L of A_t as intention, plus the KV cache. Step:
//   L <- update with k_t,  q~_t = A_t^{-1} q_t (two triangular solves),
//   o_t = softmax(q~_t K_{<=t}^T scale + bias) V_{<=t}.
std::pair<torch::Tensor, DecodeState> softmax_intention_prefill(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& alpha, const AttentionFuncOptions& options = {});
torch::Tensor softmax_intention_step(DecodeState& state, const torch::Tensor& q,
                                     const torch::Tensor& k, const torch::Tensor& v,
                                     const AttentionFuncOptions& options = {});

// Causal kernel intention, exact: the Cholesky factor L of kappa(K, K) + alpha I grows by one row
// per token (the leading block of a Cholesky factor factors the leading block), O(t^2):
//   c = kappa(K_{<t}, k_t),  l = L^{-1} c,  L_tt = sqrt(kappa(k_t, k_t) + alpha - l . l),
//   z_t = (v_t - Z^T l) / L_tt  (Z = L^{-1} V gains row z_t),
//   o_t = (L^{-1} kappa(K_{<=t}, q_t))^T Z.
// alpha must be the prefill's; scale as the batched op.
std::pair<torch::Tensor, DecodeState> kernel_intention_prefill(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& alpha, const AttentionFuncOptions& options = {});
torch::Tensor kernel_intention_step(DecodeState& state, const torch::Tensor& q,
                                    const torch::Tensor& k, const torch::Tensor& v,
                                    const torch::Tensor& alpha,
                                    const AttentionFuncOptions& options = {});

}  // namespace functional
}  // namespace kvq
