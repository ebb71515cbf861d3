#include "kvq/models/in_context_regressor.h"

#include <cmath>

#include "kvq/models/layers.h"

namespace kvq {
namespace models {
namespace {

void check_options(const InContextRegressorOptions& o) {
  const char* owner = "InContextRegressor";
  TORCH_CHECK(o.x_dim() >= 1, owner, ": x_dim must be >= 1, got ", o.x_dim());
  TORCH_CHECK(o.y_dim() >= 1, owner, ": y_dim must be >= 1, got ", o.y_dim());
  TORCH_CHECK(o.block().norm_first(), owner,
              ": block.norm_first must be true (Pre-LN layers; layer_norm = false for none)");
}

}  // namespace

// ---- InContextRegressorLayer ----

InContextRegressorLayerImpl::InContextRegressorLayerImpl(const InContextRegressorOptions& options_,
                                                         std::string mechanism_)
    : options(options_), mechanism(std::move(mechanism_)) {
  reset();
}

void InContextRegressorLayerImpl::reset() {
  check_options(options);
  const auto block = layer_block(options.block(), mechanism);
  check_block_options("InContextRegressorLayer", block);
  const int64_t d = block.d_model();
  attn = register_module("attn", kvq::nn::MultiHeadKVQ(block.multi_head_options()));
  norm1 = norm2 = nullptr;
  linear1 = linear2 = nullptr;
  if (options.layer_norm()) {
    const auto ln = torch::nn::LayerNormOptions({d}).eps(block.layer_norm_eps());
    norm1 = register_module("norm1", torch::nn::LayerNorm(ln));
    if (options.feed_forward()) norm2 = register_module("norm2", torch::nn::LayerNorm(ln));
  }
  if (options.feed_forward()) {
    const int64_t hidden = block.ffn_width();
    linear1 = register_module(
        "linear1", torch::nn::Linear(torch::nn::LinearOptions(d, hidden).bias(block.bias())));
    linear2 = register_module(
        "linear2", torch::nn::Linear(torch::nn::LinearOptions(hidden, d).bias(block.bias())));
  }
  dropout = register_module("dropout", torch::nn::Dropout(block.dropout()));
}

torch::Tensor InContextRegressorLayerImpl::forward(const torch::Tensor& h,
                                                   const torch::Tensor& keys,
                                                   const torch::Tensor& values,
                                                   const torch::Tensor& key_padding_mask) {
  auto q = norm1.is_empty() ? h : norm1(h);
  auto x = h + dropout(attn->forward(q, keys, values, key_padding_mask, /*causal=*/false));
  if (linear1.is_empty()) return x;
  auto u = norm2.is_empty() ? x : norm2(x);
  const auto a = linear1(u);
  auto hidden = options.block().activation() == "gelu" ? torch::gelu(a) : torch::relu(a);
  return x + dropout(linear2(dropout(hidden)));
}

// ---- InContextRegressor ----

InContextRegressorImpl::InContextRegressorImpl(const InContextRegressorOptions& options_)
    : options(options_) {
  reset();
}

void InContextRegressorImpl::reset() {
  const auto& o = options;
  check_options(o);
  const auto blocks = layer_blocks("InContextRegressor", o.block(), o.mechanisms(), o.num_layers());
  const int64_t d = o.block().d_model();
  auto linear = [&](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(o.block().bias()));
  };
  TORCH_CHECK(o.feature_dim() >= 0, "InContextRegressor: feature_dim must be >= 0, got ",
              o.feature_dim());
  const int64_t f = o.feature_dim() > 0 ? o.feature_dim() : o.x_dim();
  features = nullptr;
  if (o.feature_dim() > 0) {
    features = register_module(
        "features", torch::nn::Sequential(linear(o.x_dim(), f), torch::nn::GELU(), linear(f, f),
                                          torch::nn::GELU()));
  }
  x_embed = register_module("x_embed", linear(f, d));
  xy_embed = register_module("xy_embed", linear(f + o.y_dim(), d));
  layers = register_module("layers", torch::nn::ModuleList());
  for (const auto& block : blocks) layers->push_back(InContextRegressorLayer(o, block.mechanism()));
  final_norm = nullptr;
  if (o.layer_norm()) {
    final_norm = register_module(
        "final_norm",
        torch::nn::LayerNorm(torch::nn::LayerNormOptions({d}).eps(o.block().layer_norm_eps())));
  }
  readout = register_module("readout", linear(d, o.y_dim()));
}

torch::Tensor InContextRegressorImpl::forward(const torch::Tensor& context_x,
                                              const torch::Tensor& context_y,
                                              const torch::Tensor& target_x,
                                              const torch::Tensor& context_padding_mask) {
  const char* owner = "InContextRegressor";
  const int64_t dx = options.x_dim(), dy = options.y_dim();
  TORCH_CHECK(context_x.defined() && context_x.dim() == 3 && context_x.size(1) >= 1 &&
                  context_x.size(2) == dx,
              owner, ": context_x must have shape (B, N, dx) with N >= 1 and dx = ", dx, ", got ",
              context_x.defined() ? context_x.sizes() : c10::IntArrayRef{});
  const int64_t batch = context_x.size(0), n = context_x.size(1);
  TORCH_CHECK(context_y.defined() && context_y.dim() == 3 && context_y.size(0) == batch &&
                  context_y.size(1) == n && context_y.size(2) == dy,
              owner, ": context_y must have shape (B, N, dy) = (", batch, ", ", n, ", ", dy,
              "), got ", context_y.defined() ? context_y.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(target_x.defined() && target_x.dim() == 3 && target_x.size(0) == batch &&
                  target_x.size(2) == dx,
              owner, ": target_x must have shape (B, M, dx) = (", batch, ", M, ", dx, "), got ",
              target_x.defined() ? target_x.sizes() : c10::IntArrayRef{});
  if (context_padding_mask.defined()) {
    TORCH_CHECK(context_padding_mask.scalar_type() == torch::kBool &&
                    context_padding_mask.dim() == 2 && context_padding_mask.size(0) == batch &&
                    context_padding_mask.size(1) == n,
                owner, ": context_padding_mask must be bool of shape (B, N) = (", batch, ", ", n,
                "), got ", context_padding_mask.scalar_type(), " ", context_padding_mask.sizes());
  }
  const auto phi = [&](const torch::Tensor& x) {
    return features.is_empty() ? x : features->forward(x);
  };
  const auto context_features = phi(context_x);
  auto keys = x_embed(context_features);
  auto values = xy_embed(torch::cat({context_features, context_y}, /*dim=*/-1));
  auto h = x_embed(phi(target_x));
  for (size_t i = 0; i < layers->size(); ++i) {
    h = layers->ptr<InContextRegressorLayerImpl>(i)->forward(h, keys, values,
                                                             context_padding_mask);
  }
  if (!final_norm.is_empty()) h = final_norm(h);
  return readout(h);
}

InContextRegressorOptions ridge_construction_options(int64_t x_dim, int64_t y_dim) {
  return InContextRegressorOptions(x_dim, y_dim)
      .block(TransformerBlockOptions(x_dim + y_dim, 1)
                 .dropout(0.0)
                 .norm_first(true)
                 .mechanism("intention")
                 .projection("qkv")
                 .learn_alpha(false))
      .num_layers(1)
      .feed_forward(false)
      .layer_norm(false);
}

void set_ridge_weights(InContextRegressor& model, double alpha) {
  const char* op = "set_ridge_weights";
  const auto& o = model->options;
  const int64_t dx = o.x_dim(), dy = o.y_dim(), d = o.block().d_model();
  TORCH_CHECK(o.num_layers() == 1, op, ": needs num_layers = 1, got ", o.num_layers());
  TORCH_CHECK(o.block().num_heads() == 1, op, ": needs num_heads = 1, got ",
              o.block().num_heads());
  TORCH_CHECK(d >= dx + dy, op, ": needs d_model >= x_dim + y_dim = ", dx + dy, ", got ", d);
  TORCH_CHECK(!o.feed_forward(), op, ": needs feed_forward = false");
  TORCH_CHECK(!o.layer_norm(), op, ": needs layer_norm = false");
  TORCH_CHECK(o.feature_dim() == 0, op, ": needs feature_dim = 0 (keys linear in x)");
  auto& attn = model->layers->ptr<InContextRegressorLayerImpl>(0)->attn;
  const double floor = attn->options.alpha_floor();
  if (attn->alpha_raw.defined()) {
    TORCH_CHECK(std::isfinite(alpha) && alpha > floor, op, ": alpha must be finite and > ",
                "alpha_floor = ", floor, ", got ", alpha);
  }

  torch::NoGradGuard no_grad;
  auto set_block = [](const torch::Tensor& w, int64_t row, int64_t col, int64_t size) {
    w.zero_();
    w.narrow(0, row, size).narrow(1, col, size).copy_(torch::eye(size, w.options()));
  };
  auto zero_bias = [](const torch::nn::Linear& layer) {
    if (layer->bias.defined()) layer->bias.zero_();
  };
  set_block(model->x_embed->weight, 0, 0, dx);
  set_block(model->xy_embed->weight, dx, dx, dy);
  set_block(model->readout->weight, 0, dx, dy);
  for (const auto* layer : {&model->x_embed, &model->xy_embed, &model->readout}) zero_bias(*layer);
  for (const auto* proj : {&attn->q_proj, &attn->k_proj, &attn->v_proj, &attn->out_proj}) {
    if (proj->is_empty()) continue;  // no W_q under the kv projections
    set_block((*proj)->weight, 0, 0, d);
    zero_bias(*proj);
  }
  if (attn->alpha_raw.defined()) attn->alpha_raw.fill_(nn::alpha_raw_for(alpha, floor));
}

}  // namespace models
}  // namespace kvq
