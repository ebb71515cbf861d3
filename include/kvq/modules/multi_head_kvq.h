#pragma once
#include <torch/torch.h>

#include <string>
#include <utility>

#include "kvq/modules/attention_cache.h"
#include "kvq/modules/attention_options.h"
#include "kvq/registry.h"

namespace kvq {
namespace nn {

struct MultiHeadKVQOptions {
  MultiHeadKVQOptions(int64_t embed_dim, int64_t num_heads)
      : embed_dim_(embed_dim), num_heads_(num_heads) {}
  /// Model width E; must be divisible by num_heads.
  TORCH_ARG(int64_t, embed_dim);
  /// Number of heads H; head width d = E / H.
  TORCH_ARG(int64_t, num_heads);
  /// Bias in the input and output projections. Default: true.
  TORCH_ARG(bool, bias) = true;
  /// Inputs are (B, T, E) when true, (T, B, E) as torch::nn::MultiheadAttention when false.
  /// Default: true.
  TORCH_ARG(bool, batch_first) = true;
  // mechanism, projection, alpha_init, alpha_floor, learn_alpha, pos_channels, pos_map,
  // chunk_size, scale and dropout (on the attention weights, mechanisms with a softmax only;
  // unset = 0): the fields of `attention` (kvq/modules/attention_options.h), settable here
  // directly.
  KVQ_ATTENTION_FORWARD(c10::optional<double>, dropout)
  KVQ_ATTENTION_ARGS;
};

// Multi-head attention over any KVQ mechanism (Garnelo & Czarnecki 2023; Borji 2023).
//   q = x_q W_q (qkv) or x_q W_k (kv, kv-pos: tied); k = x_kv W_k; v = x_kv W_v
//   heads = mechanism(q, k, v, alpha, causal, key_padding_mask); out = concat(heads) W_o
// query (B, m, E), key/value (B, n, E) (batch_first) -> (B, m, E).
// key_padding_mask (B, n) bool, true = ignore. causal requires m == n.
class MultiHeadKVQImpl : public torch::nn::Cloneable<MultiHeadKVQImpl> {
 public:
  MultiHeadKVQImpl(int64_t embed_dim, int64_t num_heads)
      : MultiHeadKVQImpl(MultiHeadKVQOptions(embed_dim, num_heads)) {}
  explicit MultiHeadKVQImpl(const MultiHeadKVQOptions& options);

  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  // Cross- or self-attention.
  torch::Tensor forward(const torch::Tensor& query, const torch::Tensor& key,
                        const torch::Tensor& value, const torch::Tensor& key_padding_mask = {},
                        bool causal = false);
  // Self-attention: forward(x, x, x, ...).
  torch::Tensor forward_self(const torch::Tensor& x, const torch::Tensor& key_padding_mask = {},
                             bool causal = false);

  // Incremental causal self-attention (decoding; docs/mechanisms.md, "Incremental decoding").
  // prefill: x (B, T, E) (batch_first; (T, B, E) otherwise), T >= 0, key_padding_mask (B, T) ->
  // forward_self(x, key_padding_mask, causal=true) and the cache after the T tokens.
  // step: one more token x_t (B, 1, E) ((1, B, E)) -> its output, the row the batched causal
  // forward over all tokens so far gives it; advances the cache. The stepped token has position
  // cache.length() (kv-pos) and is never padding. Inference only: no attention dropout, and the
  // intention mechanisms' steps have no backward (run under torch::NoGradGuard).
  std::pair<torch::Tensor, AttentionCache> prefill(const torch::Tensor& x,
                                                   const torch::Tensor& key_padding_mask = {});
  torch::Tensor step(const torch::Tensor& x_t, AttentionCache& cache);

  // Cross-attention over a memory that stays fixed while the queries change (a decoder over its
  // encoder's output): project_memory projects memory (B, S, E) once; forward_memory(query, cache)
  // then equals forward(query, memory, memory, key_padding_mask) without projecting it again.
  MemoryCache project_memory(const torch::Tensor& memory,
                             const torch::Tensor& key_padding_mask = {});
  torch::Tensor forward_memory(const torch::Tensor& query, const MemoryCache& memory);

  // The positive per-head ridge parameter, (H).
  torch::Tensor alpha() const;

  MultiHeadKVQOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
  torch::Tensor alpha_raw;    // (H), alpha = softplus(alpha_raw) + alpha_floor
  torch::Tensor pos_weight;   // (H, p), or (p) with pos_map "layer"; kv-pos only
  torch::Tensor pos_bias;     // (H), or () with pos_map "layer"; kv-pos only

 private:
  // x (B, T, E) in the module's layout, checked (`name` in errors), as (B, T, E).
  torch::Tensor batch_first_input(const char* name, const torch::Tensor& x) const;
  // (B, T, E) -> (B, H, T, E / H).
  torch::Tensor split_heads(const torch::Tensor& x) const;
  // Projected queries of x_q (B, m, E); keys_of_x_q = k_proj(x_q) split, when the caller has it.
  torch::Tensor project_queries(const torch::Tensor& x_q, const torch::Tensor& keys_of_x_q = {});
  // (B, H, m, d) heads -> out_proj(concat(heads)) in the module's layout.
  torch::Tensor merge_heads(const torch::Tensor& heads_out);
  functional::AttentionFuncOptions mechanism_options(bool causal,
                                                     const torch::Tensor& key_padding_mask) const;

  const MechanismInfo* mechanism_ = nullptr;
  Projection projection_ = Projection::QKV;
};
TORCH_MODULE(MultiHeadKVQ);

}  // namespace nn
}  // namespace kvq
