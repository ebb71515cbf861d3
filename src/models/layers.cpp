#include "kvq/models/layers.h"

#include <cmath>
#include <functional>
#include <sstream>
#include <utility>
#include <vector>

#include "kvq/registry.h"

namespace kvq {
namespace models {
namespace {

torch::Tensor activate(const std::string& activation, const torch::Tensor& x) {
  return activation == "gelu" ? torch::gelu(x) : torch::relu(x);
}

using Branch = std::function<torch::Tensor(const torch::Tensor&)>;

// x with each branch f in a residual: Pre-LN x + drop(f(LN(x))), Post-LN LN(x + drop(f(x))).
torch::Tensor residual_branches(
    bool norm_first, const torch::Tensor& x,
    const std::vector<std::pair<Branch, torch::nn::LayerNorm>>& branches,
    torch::nn::Dropout& dropout) {
  auto h = x;
  for (auto branch : branches) {  // a copy: LayerNorm's call operator is not const
    auto& [f, norm] = branch;
    h = norm_first ? h + dropout(f(norm(h))) : norm(h + dropout(f(h)));
  }
  return h;
}

}  // namespace

torch::Tensor sinusoidal_positional_encoding(int64_t length, int64_t dim,
                                             torch::TensorOptions options) {
  TORCH_CHECK(length >= 0, "sinusoidal_positional_encoding: length must be >= 0, got ", length);
  TORCH_CHECK(dim > 0, "sinusoidal_positional_encoding: dim must be > 0, got ", dim);
  // Built in float64 so that long tables keep their precision, then cast.
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto position = torch::arange(length, f64).unsqueeze(1);                        // (L, 1)
  auto inv_freq = torch::exp(torch::arange(0, dim, 2, f64) * (-std::log(10000.0) / dim));
  auto angle = position * inv_freq;                                               // (L, ceil(d/2))
  auto table = torch::zeros({length, dim}, f64);
  using torch::indexing::Slice;
  table.index_put_({Slice(), Slice(0, dim, 2)}, torch::sin(angle));
  table.index_put_({Slice(), Slice(1, dim, 2)}, torch::cos(angle.narrow(1, 0, dim / 2)));
  return table.to(options);
}

std::vector<std::string> layer_mechanisms(const std::string& owner,
                                          const nn::AttentionOptions& attention,
                                          const std::vector<std::string>& mechanisms,
                                          int64_t num_layers) {
  TORCH_CHECK(mechanisms.empty() || static_cast<int64_t>(mechanisms.size()) == num_layers, owner,
              ": mechanisms must be empty (use `mechanism` for every layer) or name one mechanism "
              "per layer (", num_layers, "), got ", mechanisms.size(), " names");
  nn::check_attention_options(attention, owner, mechanisms);
  if (!mechanisms.empty()) return mechanisms;
  return std::vector<std::string>(static_cast<size_t>(std::max<int64_t>(num_layers, 0)),
                                  attention.mechanism());
}

void check_tokens(const char* owner, const char* arg, const torch::Tensor& tokens,
                  int64_t vocab_size) {
  TORCH_CHECK(tokens.defined() && tokens.dim() == 2 && tokens.scalar_type() == torch::kInt64,
              owner, ": ", arg, " must be int64 of shape (B, T), got ",
              tokens.defined() ? c10::toString(tokens.scalar_type()) : "an undefined tensor", " ",
              tokens.defined() ? tokens.sizes() : c10::IntArrayRef{});
  if (tokens.numel() == 0) return;
  const auto extremes = torch::stack({tokens.min(), tokens.max()}).cpu();
  const int64_t lo = extremes[0].item<int64_t>(), hi = extremes[1].item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < vocab_size, owner, ": ", arg, " must be in [0, ", vocab_size,
              "), got values in [", lo, ", ", hi, "]");
}

kvq::nn::MultiHeadKVQOptions TransformerBlockOptions::multi_head_options() const {
  return kvq::nn::MultiHeadKVQOptions(d_model(), num_heads())
      .attention(attention())
      .dropout(attention().dropout().value_or(dropout()))
      .bias(bias())
      .batch_first(true);
}

int64_t TransformerBlockOptions::ffn_width() const {
  return ffn_dim() == 0 ? 4 * d_model() : ffn_dim();
}

void check_block_options(const std::string& owner, const TransformerBlockOptions& o,
                         const std::vector<std::string>& mechanisms) {
  TORCH_CHECK(o.d_model() > 0 && o.num_heads() > 0 && o.d_model() % o.num_heads() == 0, owner,
              ": d_model must be a positive multiple of num_heads, got d_model = ", o.d_model(),
              ", num_heads = ", o.num_heads());
  TORCH_CHECK(o.ffn_dim() >= 0, owner, ": ffn_dim must be >= 0 (0 = 4 * d_model), got ",
              o.ffn_dim());
  TORCH_CHECK(o.activation() == "relu" || o.activation() == "gelu", owner,
              ": activation must be 'relu' or 'gelu', got '", o.activation(), "'");
  TORCH_CHECK(o.dropout() >= 0.0 && o.dropout() < 1.0, owner, ": dropout must be in [0, 1), got ",
              o.dropout());
  TORCH_CHECK(o.layer_norm_eps() > 0.0, owner, ": layer_norm_eps must be > 0, got ",
              o.layer_norm_eps());
  nn::check_attention_options(o.attention(), owner, mechanisms);
}

TransformerBlockOptions layer_block(const TransformerBlockOptions& block,
                                    const std::string& mechanism) {
  return TransformerBlockOptions(block).attention(
      nn::layer_attention(block.attention(), mechanism));
}

std::vector<TransformerBlockOptions> layer_blocks(const std::string& owner,
                                                  const TransformerBlockOptions& block,
                                                  const std::vector<std::string>& mechanisms,
                                                  int64_t num_layers, bool needs_norm_first) {
  TORCH_CHECK(num_layers >= 1, owner, ": num_layers must be >= 1, got ", num_layers);
  TORCH_CHECK(!needs_norm_first || block.norm_first(), owner,
              ": block.norm_first must be true (Pre-LN blocks; the stack ends with a LayerNorm)");
  const auto names = layer_mechanisms(owner, block.attention(), mechanisms, num_layers);
  check_block_options(owner, block, names);
  std::vector<TransformerBlockOptions> out;
  for (const auto& name : names) out.push_back(layer_block(block, name));
  return out;
}

namespace {

// Self-attention, then the feed-forward network, each in a residual branch.
torch::Tensor encoder_block(TransformerBlockImpl& b, const torch::Tensor& x, const Branch& attend) {
  const Branch ffn = [&b](const torch::Tensor& h) { return b.feed_forward(h); };
  return residual_branches(b.options.norm_first(), x, {{attend, b.norm1}, {ffn, b.norm2}},
                           b.dropout);
}

// Causal self-attention, cross-attention, then the feed-forward network.
torch::Tensor decoder_block(TransformerDecoderBlockImpl& b, const torch::Tensor& x,
                            const Branch& self_attend, const Branch& cross_attend) {
  const Branch ffn = [&b](const torch::Tensor& h) { return b.feed_forward(h); };
  return residual_branches(b.options.norm_first(), x,
                           {{self_attend, b.norm1}, {cross_attend, b.norm2}, {ffn, b.norm3}},
                           b.dropout);
}

}  // namespace

// ---- TransformerBlock ----

TransformerBlockImpl::TransformerBlockImpl(const TransformerBlockOptions& options_)
    : options(options_) {
  reset();
}

void TransformerBlockImpl::reset() {
  check_block_options("TransformerBlock", options);
  const int64_t d = options.d_model(), hidden = options.ffn_width();
  self_attn = register_module("self_attn", kvq::nn::MultiHeadKVQ(options.multi_head_options()));
  const auto ln = torch::nn::LayerNormOptions({d}).eps(options.layer_norm_eps());
  norm1 = register_module("norm1", torch::nn::LayerNorm(ln));
  norm2 = register_module("norm2", torch::nn::LayerNorm(ln));
  linear1 = register_module(
      "linear1", torch::nn::Linear(torch::nn::LinearOptions(d, hidden).bias(options.bias())));
  linear2 = register_module(
      "linear2", torch::nn::Linear(torch::nn::LinearOptions(hidden, d).bias(options.bias())));
  dropout = register_module("dropout", torch::nn::Dropout(options.dropout()));
}

torch::Tensor TransformerBlockImpl::feed_forward(const torch::Tensor& x) {
  return linear2(dropout(activate(options.activation(), linear1(x))));
}

torch::Tensor TransformerBlockImpl::forward(const torch::Tensor& x,
                                            const torch::Tensor& key_padding_mask, bool causal) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == options.d_model(),
              "TransformerBlock: x must have shape (B, T, d_model) with d_model = ",
              options.d_model(), ", got ", x.sizes());
  return encoder_block(*this, x, [&](const torch::Tensor& h) {
    return self_attn->forward_self(h, key_padding_mask, causal);
  });
}

torch::Tensor TransformerBlockImpl::prefill(const torch::Tensor& x, kvq::nn::AttentionCache& cache,
                                            const torch::Tensor& key_padding_mask) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == options.d_model(),
              "TransformerBlock: x must have shape (B, T, d_model) with d_model = ",
              options.d_model(), ", got ", x.sizes());
  return encoder_block(*this, x, [&](const torch::Tensor& h) {
    auto [out, filled] = self_attn->prefill(h, key_padding_mask);
    cache = std::move(filled);
    return out;
  });
}

torch::Tensor TransformerBlockImpl::step(const torch::Tensor& x_t, kvq::nn::AttentionCache& cache) {
  return encoder_block(*this, x_t,
                       [&](const torch::Tensor& h) { return self_attn->step(h, cache); });
}

// ---- TransformerDecoderBlock ----

TransformerDecoderBlockImpl::TransformerDecoderBlockImpl(const TransformerBlockOptions& options_)
    : options(options_) {
  reset();
}

void TransformerDecoderBlockImpl::reset() {
  check_block_options("TransformerDecoderBlock", options);
  const int64_t d = options.d_model(), hidden = options.ffn_width();
  self_attn = register_module("self_attn", kvq::nn::MultiHeadKVQ(options.multi_head_options()));
  cross_attn = register_module("cross_attn", kvq::nn::MultiHeadKVQ(options.multi_head_options()));
  const auto ln = torch::nn::LayerNormOptions({d}).eps(options.layer_norm_eps());
  norm1 = register_module("norm1", torch::nn::LayerNorm(ln));
  norm2 = register_module("norm2", torch::nn::LayerNorm(ln));
  norm3 = register_module("norm3", torch::nn::LayerNorm(ln));
  linear1 = register_module(
      "linear1", torch::nn::Linear(torch::nn::LinearOptions(d, hidden).bias(options.bias())));
  linear2 = register_module(
      "linear2", torch::nn::Linear(torch::nn::LinearOptions(hidden, d).bias(options.bias())));
  dropout = register_module("dropout", torch::nn::Dropout(options.dropout()));
}

void TransformerDecoderBlockImpl::check_decoder_inputs(const torch::Tensor& x,
                                                       const torch::Tensor& memory) const {
  const int64_t d = options.d_model();
  TORCH_CHECK(x.dim() == 3 && x.size(2) == d,
              "TransformerDecoderBlock: x must have shape (B, T, d_model) with d_model = ", d,
              ", got ", x.sizes());
  TORCH_CHECK(memory.dim() == 3 && memory.size(0) == x.size(0) && memory.size(2) == d,
              "TransformerDecoderBlock: memory must have shape (B, S, d_model) with B = ",
              x.size(0), " and d_model = ", d, ", got ", memory.sizes());
}

torch::Tensor TransformerDecoderBlockImpl::feed_forward(const torch::Tensor& x) {
  return linear2(dropout(activate(options.activation(), linear1(x))));
}

torch::Tensor TransformerDecoderBlockImpl::forward(const torch::Tensor& x,
                                                   const torch::Tensor& memory,
                                                   const torch::Tensor& tgt_padding_mask,
                                                   const torch::Tensor& memory_padding_mask,
                                                   bool causal) {
  check_decoder_inputs(x, memory);
  return decoder_block(
      *this, x,
      [&](const torch::Tensor& h) { return self_attn->forward_self(h, tgt_padding_mask, causal); },
      [&](const torch::Tensor& h) {
        return cross_attn->forward(h, memory, memory, memory_padding_mask, /*causal=*/false);
      });
}

torch::Tensor TransformerDecoderBlockImpl::prefill(const torch::Tensor& x,
                                                   const torch::Tensor& memory,
                                                   DecoderBlockCache& cache,
                                                   const torch::Tensor& tgt_padding_mask,
                                                   const torch::Tensor& memory_padding_mask) {
  check_decoder_inputs(x, memory);
  cache.memory = cross_attn->project_memory(memory, memory_padding_mask);
  return decoder_block(
      *this, x,
      [&](const torch::Tensor& h) {
        auto [out, filled] = self_attn->prefill(h, tgt_padding_mask);
        cache.self = std::move(filled);
        return out;
      },
      [&](const torch::Tensor& h) { return cross_attn->forward_memory(h, cache.memory); });
}

torch::Tensor TransformerDecoderBlockImpl::step(const torch::Tensor& x_t,
                                                DecoderBlockCache& cache) {
  return decoder_block(
      *this, x_t, [&](const torch::Tensor& h) { return self_attn->step(h, cache.self); },
      [&](const torch::Tensor& h) { return cross_attn->forward_memory(h, cache.memory); });
}

}  // namespace models
}  // namespace kvq
