#include "kvq/modules/multi_head_kvq.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <tuple>

#include "kvq/functional/positional_encoding_2d.h"

namespace kvq {
namespace nn {
MultiHeadKVQImpl::MultiHeadKVQImpl(const MultiHeadKVQOptions& options_) : options(options_) {
  reset();
}

void MultiHeadKVQImpl::reset() {
  const int64_t embed = options.embed_dim(), heads = options.num_heads();
  TORCH_CHECK(embed > 0 && heads > 0 && embed % heads == 0,
              "MultiHeadKVQ: embed_dim must be a positive multiple of num_heads, got embed_dim = ",
              embed, ", num_heads = ", heads);
  check_attention_options(options.attention(), "MultiHeadKVQ");
  mechanism_ = &find_mechanism(options.mechanism());
  projection_ = resolved_projection(options.attention());

  auto linear = [&](const char* name) {
    return register_module(name, torch::nn::Linear(
                                     torch::nn::LinearOptions(embed, embed).bias(options.bias())));
  };
  // Input projections: Xavier-uniform on each E x E weight, zero biases (as
  // torch::nn::MultiheadAttention with separate q/k/v weights; docs/mechanisms.md compares its
  // packed weight and the paper's code).
  for (auto* proj : {&q_proj, &k_proj, &v_proj}) *proj = nullptr;
  if (projection_ == Projection::QKV) q_proj = linear("q_proj");
  k_proj = linear("k_proj");
  v_proj = linear("v_proj");
  out_proj = linear("out_proj");
  torch::NoGradGuard no_grad;
  for (auto* proj : {&q_proj, &k_proj, &v_proj}) {
    if (proj->is_empty()) continue;
    torch::nn::init::xavier_uniform_((*proj)->weight);
    if (options.bias()) (*proj)->bias.zero_();
  }
  if (options.bias()) out_proj->bias.zero_();

  if (mechanism_->traits.uses_alpha) {
    auto raw = torch::full({heads}, alpha_raw_for(options.alpha_init(), options.alpha_floor()));
    alpha_raw = options.learn_alpha() ? register_parameter("alpha_raw", raw)
                                      : register_buffer("alpha_raw", raw);
  }
  if (projection_ == Projection::KVPos) {
    // Linear(p, 1) per head, or one per layer as in the paper's code, with PyTorch's default
    // initialisation (the paper's ViT; its synthetic-task code Xavier-initialises the map).
    const int64_t p = options.pos_channels();
    const bool per_head = options.pos_map() == "head";
    const double bound = 1.0 / std::sqrt(static_cast<double>(p));
    auto uniform = [&](torch::IntArrayRef shape) {
      return torch::empty(shape).uniform_(-bound, bound);
    };
    pos_weight = register_parameter("pos_weight", per_head ? uniform({heads, p}) : uniform({p}));
    pos_bias = register_parameter("pos_bias", per_head ? uniform({heads}) : uniform({}));
  }
}

torch::Tensor MultiHeadKVQImpl::alpha() const {
  if (!alpha_raw.defined()) return {};
  return alpha_from_raw(alpha_raw, options.alpha_floor());
}

torch::Tensor MultiHeadKVQImpl::batch_first_input(const char* name, const torch::Tensor& x) const {
  const int64_t embed = options.embed_dim();
  TORCH_CHECK(x.defined() && x.dim() == 3 && x.size(2) == embed, "MultiHeadKVQ: ", name,
              " must have shape ", options.batch_first() ? "(B, T, E)" : "(T, B, E)",
              " with E = ", embed, ", got ", x.defined() ? x.sizes() : c10::IntArrayRef{});
  return options.batch_first() ? x : x.transpose(0, 1);
}

torch::Tensor MultiHeadKVQImpl::split_heads(const torch::Tensor& x) const {
  const int64_t heads = options.num_heads();
  return x.view({x.size(0), x.size(1), heads, options.embed_dim() / heads}).transpose(1, 2);
}

torch::Tensor MultiHeadKVQImpl::project_queries(const torch::Tensor& x_q,
                                                const torch::Tensor& keys_of_x_q) {
  if (projection_ == Projection::QKV) return split_heads(q_proj(x_q));
  // Tied projection. In self-attention q is k itself, so K K^T is exactly symmetric.
  return keys_of_x_q.defined() ? keys_of_x_q : split_heads(k_proj(x_q));
}

torch::Tensor MultiHeadKVQImpl::merge_heads(const torch::Tensor& heads_out) {
  const int64_t batch = heads_out.size(0), m = heads_out.size(2);
  auto out = out_proj(heads_out.transpose(1, 2).reshape({batch, m, options.embed_dim()}));
  return options.batch_first() ? out : out.transpose(0, 1);
}

functional::AttentionFuncOptions MultiHeadKVQImpl::mechanism_options(
    bool causal, const torch::Tensor& key_padding_mask) const {
  functional::AttentionFuncOptions fo;
  fo.causal(causal)
      .key_padding_mask(key_padding_mask)
      .scale(options.scale())
      .chunk_size(options.chunk_size());
  if (mechanism_->traits.has_softmax) {
    fo.dropout(options.dropout().value_or(0.0)).training(is_training());
  }
  return fo;
}

torch::Tensor MultiHeadKVQImpl::forward(const torch::Tensor& query, const torch::Tensor& key,
                                        const torch::Tensor& value,
                                        const torch::Tensor& key_padding_mask, bool causal) {
  auto xq = batch_first_input("query", query), xk = batch_first_input("key", key),
       xv = batch_first_input("value", value);
  const int64_t batch = xq.size(0), n = xk.size(1);
  TORCH_CHECK(xk.size(0) == batch && xv.size(0) == batch && xv.size(1) == n,
              "MultiHeadKVQ: key and value must have the batch size of query and one length, "
              "got query ",
              query.sizes(), ", key ", key.sizes(), ", value ", value.sizes());
  auto k = split_heads(k_proj(xk));
  auto q = project_queries(xq, query.is_same(key) ? k : torch::Tensor());
  auto v = split_heads(v_proj(xv));
  auto fo = mechanism_options(causal, key_padding_mask);
  if (projection_ == Projection::KVPos) {
    fo = functional::with_kv_pos_terms(fo, pos_weight, pos_bias, n, q.scalar_type());
  }
  return merge_heads(mechanism_->fn(q, k, v, alpha(), fo));  // heads (B, H, m, d)
}

torch::Tensor MultiHeadKVQImpl::forward_self(const torch::Tensor& x,
                                             const torch::Tensor& key_padding_mask, bool causal) {
  return forward(x, x, x, key_padding_mask, causal);
}

namespace {

// The kv-pos score terms of key positions 0 .. cols - 1 or more in cache (no autograd history).
void cover_key_positions(AttentionCache& cache, const torch::Tensor& pos_weight,
                         const torch::Tensor& pos_bias, int64_t cols, torch::ScalarType dtype) {
  if (cache.key_bias.defined() && cache.key_bias.size(-1) >= cols) return;
  const int64_t width =
      std::max<int64_t>({cols, 16, cache.key_bias.defined() ? 2 * cache.key_bias.size(-1) : 0});
  torch::NoGradGuard no_grad;
  std::tie(cache.score_gain, cache.key_bias) =
      functional::kv_pos_key_terms(pos_weight.to(dtype), pos_bias.to(dtype), width);
}

}  // namespace

std::pair<torch::Tensor, AttentionCache> MultiHeadKVQImpl::prefill(
    const torch::Tensor& x, const torch::Tensor& key_padding_mask) {
  auto xb = batch_first_input("x", x);
  auto k = split_heads(k_proj(xb));
  auto q = project_queries(xb, k);
  auto v = split_heads(v_proj(xb));
  auto fo = mechanism_options(/*causal=*/true, key_padding_mask);
  AttentionCache cache;
  if (projection_ == Projection::KVPos) {
    fo = functional::with_kv_pos_terms(fo, pos_weight, pos_bias, xb.size(1), q.scalar_type());
    cover_key_positions(cache, pos_weight, pos_bias, xb.size(1) + 1, q.scalar_type());
  }
  auto [heads_out, state] = mechanism_->prefill(q, k, v, alpha(), fo);
  cache.state = std::move(state);
  return {merge_heads(heads_out), std::move(cache)};
}

torch::Tensor MultiHeadKVQImpl::step(const torch::Tensor& x_t, AttentionCache& cache) {
  auto xb = batch_first_input("x_t", x_t);
  const auto& state = cache.state;
  TORCH_CHECK(!state.mechanism.empty(),
              "MultiHeadKVQ::step: the cache is empty; build it with "
              "prefill (of T >= 0 tokens) first");
  TORCH_CHECK(xb.size(1) == 1 && xb.size(0) == state.batch,
              "MultiHeadKVQ::step: x_t must be one "
              "token of the cache's batch size B = ",
              state.batch, ": ", options.batch_first() ? "(B, 1, E)" : "(1, B, E)", ", got ",
              x_t.sizes());
  TORCH_CHECK(state.heads == options.num_heads(), "MultiHeadKVQ::step: the cache has ", state.heads,
              " heads, this module ", options.num_heads(), ": it was built by another module");
  auto k = split_heads(k_proj(xb));
  auto q = project_queries(xb, k);
  auto v = split_heads(v_proj(xb));
  auto fo = mechanism_options(/*causal=*/false, {});
  if (projection_ == Projection::KVPos) {
    const int64_t keys = cache.length() + 1;  // the new token is key position length()
    cover_key_positions(cache, pos_weight, pos_bias, keys, q.scalar_type());
    fo.score_gain(cache.score_gain).score_bias(cache.key_bias.narrow(-1, 0, keys));
  }
  return merge_heads(mechanism_->step(cache.state, q, k, v, alpha(), fo));
}

MemoryCache MultiHeadKVQImpl::project_memory(const torch::Tensor& memory,
                                             const torch::Tensor& key_padding_mask) {
  auto xm = batch_first_input("memory", memory);
  MemoryCache cache;
  cache.keys = split_heads(k_proj(xm));
  cache.values = split_heads(v_proj(xm));
  cache.key_padding_mask = key_padding_mask;
  if (projection_ == Projection::KVPos) {
    std::tie(cache.score_gain, cache.score_bias) = functional::kv_pos_key_terms(
        pos_weight.to(cache.keys.scalar_type()), pos_bias.to(cache.keys.scalar_type()), xm.size(1));
  }
  return cache;
}

torch::Tensor MultiHeadKVQImpl::forward_memory(const torch::Tensor& query,
                                               const MemoryCache& memory) {
  TORCH_CHECK(memory.keys.defined(),
              "MultiHeadKVQ::forward_memory: the memory cache is empty; "
              "build it with project_memory");
  auto xq = batch_first_input("query", query);
  TORCH_CHECK(xq.size(0) == memory.keys.size(0),
              "MultiHeadKVQ::forward_memory: query has batch "
              "size ",
              xq.size(0), ", the memory ", memory.keys.size(0));
  auto fo = mechanism_options(/*causal=*/false, memory.key_padding_mask);
  if (projection_ == Projection::KVPos)
    fo.score_gain(memory.score_gain).score_bias(memory.score_bias);
  return merge_heads(mechanism_->fn(project_queries(xq), memory.keys, memory.values, alpha(), fo));
}

void MultiHeadKVQImpl::pretty_print(std::ostream& stream) const {
  stream << "kvq::nn::MultiHeadKVQ(embed_dim=" << options.embed_dim()
         << ", num_heads=" << options.num_heads() << ", mechanism=" << mechanism_->name
         << ", projection=" << projection_name(projection_) << ")";
}

}  // namespace nn
}  // namespace kvq
