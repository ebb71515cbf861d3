#include "kvq/models/few_shot_classifier.h"

#include <cmath>

#include "kvq/registry.h"

namespace kvq {
namespace models {
namespace {

// Side of the encoder output: image_size halved (rounding down) num_blocks times.
int64_t encoded_side(const ConvEncoderOptions& o) {
  int64_t side = o.image_size();
  for (int64_t i = 0; i < o.num_blocks() && side > 0; ++i) side /= 2;
  return side;
}

void check_images(const char* owner, const char* arg, const torch::Tensor& images, int64_t dims,
                  int64_t channels, int64_t size) {
  const char* layout = dims == 4 ? "(M, C, H, W)" : "(B, S, C, H, W)";
  TORCH_CHECK(images.defined() && images.dim() == dims && images.size(dims - 3) == channels &&
                  images.size(dims - 2) == size && images.size(dims - 1) == size,
              owner, ": ", arg, " must have shape ", layout, " with C = in_channels = ", channels,
              " and H = W = image_size = ", size, ", got ",
              images.defined() ? images.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(images.is_floating_point(), owner, ": ", arg, " must be floating point, got ",
              images.scalar_type());
}

}  // namespace

// ---- ConvEncoder ----

ConvEncoderImpl::ConvEncoderImpl(const ConvEncoderOptions& options_) : options(options_) {
  reset();
}

int64_t ConvEncoderImpl::output_dim() const {
  const int64_t side = encoded_side(options);
  return options.channels() * side * side;
}

void ConvEncoderImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.in_channels() > 0, "ConvEncoder: in_channels must be > 0, got ", o.in_channels());
  TORCH_CHECK(o.channels() > 0, "ConvEncoder: channels must be > 0, got ", o.channels());
  TORCH_CHECK(o.num_blocks() > 0, "ConvEncoder: num_blocks must be > 0, got ", o.num_blocks());
  TORCH_CHECK(o.image_size() > 0 && encoded_side(o) >= 1, "ConvEncoder: image_size (",
              o.image_size(), ") must stay >= 1 after num_blocks = ", o.num_blocks(),
              " halvings, i.e. be >= 2^num_blocks");
  TORCH_CHECK(o.norm() == "group" || o.norm() == "batch" || o.norm() == "none",
              "ConvEncoder: norm must be 'group', 'batch' or 'none', got '", o.norm(), "'");
  if (o.norm() == "group") {
    TORCH_CHECK(o.norm_groups() > 0 && o.channels() % o.norm_groups() == 0,
                "ConvEncoder: norm_groups must be a positive divisor of channels (", o.channels(),
                "), got ", o.norm_groups());
  }
  blocks = register_module("blocks", torch::nn::Sequential());
  for (int64_t i = 0; i < o.num_blocks(); ++i) {
    const int64_t in = i == 0 ? o.in_channels() : o.channels();
    blocks->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, o.channels(), 3).padding(1)));
    if (o.norm() == "group") {
      blocks->push_back(torch::nn::GroupNorm(o.norm_groups(), o.channels()));
    } else if (o.norm() == "batch") {
      blocks->push_back(torch::nn::BatchNorm2d(o.channels()));
    }
    blocks->push_back(torch::nn::ReLU());
    blocks->push_back(torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(2)));
  }
}

torch::Tensor ConvEncoderImpl::forward(const torch::Tensor& images) {
  check_images("ConvEncoder", "images", images, 4, options.in_channels(), options.image_size());
  return blocks->forward(images).flatten(1);
}

// ---- SupportAttentionBlock ----

SupportAttentionBlockImpl::SupportAttentionBlockImpl(const TransformerBlockOptions& options_)
    : options(options_) {
  reset();
}

void SupportAttentionBlockImpl::reset() {
  const auto& o = options;
  check_block_options("SupportAttentionBlock", o);
  const int64_t d = o.d_model(), hidden = o.ffn_width();
  cross_attn = register_module("cross_attn", kvq::nn::MultiHeadKVQ(o.multi_head_options()));
  const auto ln = torch::nn::LayerNormOptions({d}).eps(o.layer_norm_eps());
  norm1 = register_module("norm1", torch::nn::LayerNorm(ln));
  norm2 = register_module("norm2", torch::nn::LayerNorm(ln));
  linear1 = register_module("linear1",
                            torch::nn::Linear(torch::nn::LinearOptions(d, hidden).bias(o.bias())));
  linear2 = register_module("linear2",
                            torch::nn::Linear(torch::nn::LinearOptions(hidden, d).bias(o.bias())));
  dropout = register_module("dropout", torch::nn::Dropout(o.dropout()));
}

torch::Tensor SupportAttentionBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& keys,
                                                 const torch::Tensor& values) {
  const int64_t d = options.d_model();
  TORCH_CHECK(x.dim() == 3 && x.size(2) == d,
              "SupportAttentionBlock: x must have shape (B, M, d_model) with d_model = ", d,
              ", got ", x.sizes());
  for (const auto& [name, t] :
       {std::pair<const char*, const torch::Tensor&>{"keys", keys}, {"values", values}}) {
    TORCH_CHECK(
        t.dim() == 3 && t.size(0) == x.size(0) && t.size(1) == keys.size(1) && t.size(2) == d,
        "SupportAttentionBlock: ", name, " must have shape (B, S, d_model) with B = ", x.size(0),
        ", d_model = ", d, " and one S for keys and values, got keys ", keys.sizes(), ", values ",
        values.sizes());
  }
  auto ffn = [&](const torch::Tensor& h) {
    auto a = linear1(h);
    a = options.activation() == "gelu" ? torch::gelu(a) : torch::relu(a);
    return linear2(dropout(a));
  };
  if (options.norm_first()) {
    auto h = x + dropout(cross_attn->forward(norm1(x), keys, values));
    return h + dropout(ffn(norm2(h)));
  }
  auto h = norm1(x + dropout(cross_attn->forward(x, keys, values)));
  return norm2(h + dropout(ffn(h)));
}

// ---- FewShotClassifier ----

ConvEncoderOptions FewShotClassifierOptions::encoder_options() const {
  return ConvEncoderOptions()
      .in_channels(in_channels())
      .image_size(image_size())
      .channels(encoder_channels())
      .num_blocks(encoder_blocks())
      .norm(encoder_norm())
      .norm_groups(norm_groups());
}

FewShotClassifierImpl::FewShotClassifierImpl(const FewShotClassifierOptions& options_)
    : options(options_) {
  reset();
}

void FewShotClassifierImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.num_ways() > 0, "FewShotClassifier: num_ways must be > 0, got ", o.num_ways());
  const auto layers = layer_blocks("FewShotClassifier", o.block(), o.mechanisms(), o.num_layers());

  TORCH_CHECK(o.readout() == "head" || o.readout() == "labels",
              "FewShotClassifier: readout must be 'head' or 'labels', got '", o.readout(), "'");
  const bool labels = o.readout() == "labels";
  TORCH_CHECK(!labels || (std::isfinite(o.readout_scale_init()) && o.readout_scale_init() > 0),
              "FewShotClassifier: readout_scale_init must be > 0, got ", o.readout_scale_init());

  TORCH_CHECK(o.encoder() == "conv4" || o.encoder() == "mlp",
              "FewShotClassifier: encoder must be 'conv4' or 'mlp', got '", o.encoder(), "'");
  TORCH_CHECK(o.readout_features() == "projected" || o.readout_features() == "encoder",
              "FewShotClassifier: readout_features must be 'projected' or 'encoder', got '",
              o.readout_features(), "'");
  const bool on_encoder = labels && o.readout_features() == "encoder";
  TORCH_CHECK(!on_encoder || o.num_layers() == 1,
              "FewShotClassifier: readout_features 'encoder' needs num_layers = 1 (the blocks ",
              "work on the projected features), got ", o.num_layers());

  const int64_t d = o.block().d_model(), heads = o.block().num_heads();
  encoder = nullptr;
  mlp_encoder = nullptr;
  if (o.encoder() == "conv4") {
    encoder = register_module("encoder", ConvEncoder(o.encoder_options()));
  } else {
    TORCH_CHECK(o.encoder_blocks() > 0 && o.encoder_channels() > 0,
                "FewShotClassifier: the mlp encoder needs encoder_blocks > 0 and ",
                "encoder_channels > 0, got ", o.encoder_blocks(), " and ", o.encoder_channels());
    mlp_encoder = register_module("mlp_encoder", torch::nn::Sequential());
    int64_t in = o.in_channels() * o.image_size() * o.image_size();
    for (int64_t i = 0; i < o.encoder_blocks(); ++i) {
      if (i > 0) mlp_encoder->push_back(torch::nn::ReLU());
      mlp_encoder->push_back(torch::nn::Linear(in, o.encoder_channels()));
      in = o.encoder_channels();
    }
  }
  feature_proj = nullptr;
  feature_norm = nullptr;
  if (!on_encoder) {
    feature_proj = register_module("feature_proj", torch::nn::Linear(feature_dim(), d));
    feature_norm =
        register_module("feature_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  }
  label_embedding = register_module("label_embedding", torch::nn::Embedding(o.num_ways(), d));
  blocks = register_module("blocks", torch::nn::ModuleList());
  const size_t num_blocks = labels ? layers.size() - 1 : layers.size();
  for (size_t i = 0; i < num_blocks; ++i) blocks->push_back(SupportAttentionBlock(layers[i]));
  final_norm = nullptr;
  if (o.block().norm_first() && num_blocks > 0) {
    final_norm =
        register_module("final_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  }
  head = nullptr;
  readout_q = readout_k = nullptr;
  readout_alpha_raw = readout_log_scale = torch::Tensor();
  readout_mechanism_.clear();
  if (!labels) {
    head = register_module("head", torch::nn::Linear(d, o.num_ways()));
    return;
  }
  const int64_t width = on_encoder ? feature_dim() : d;
  TORCH_CHECK(width % heads == 0, "FewShotClassifier: ",
              on_encoder ? "the encoder's feature width" : "d_model",
              " must be a multiple of num_heads, got ", width, " and num_heads = ", heads);
  const auto& attention = layers.back().attention();
  const auto& info = find_mechanism(attention.mechanism());
  const Projection projection = nn::resolved_projection(attention);
  TORCH_CHECK(projection != Projection::KVPos,
              "FewShotClassifier: the kv-pos projection does not apply to the 'labels' readout ",
              "(mechanism '", attention.mechanism(), "'); use qkv or kv");
  readout_mechanism_ = attention.mechanism();
  auto identity = [&](const char* name) {
    auto layer = register_module(name, torch::nn::Linear(torch::nn::LinearOptions(d, d).bias(false)));
    torch::NoGradGuard no_grad;
    layer->weight.copy_(torch::eye(d));
    return layer;
  };
  if (!on_encoder) {
    if (projection == Projection::QKV) readout_q = identity("readout_q");
    readout_k = identity("readout_k");
  }
  {
    torch::NoGradGuard no_grad;
    torch::nn::init::orthogonal_(label_embedding->weight);
  }
  if (info.traits.uses_alpha) {
    auto raw = torch::full({heads},
                           nn::alpha_raw_for(attention.alpha_init(), attention.alpha_floor()));
    readout_alpha_raw = attention.learn_alpha() ? register_parameter("readout_alpha_raw", raw)
                                                : register_buffer("readout_alpha_raw", raw);
  }
  readout_log_scale = register_parameter(
      "readout_log_scale", torch::full({}, std::log(o.readout_scale_init())));
}

torch::Tensor FewShotClassifierImpl::readout_alpha() const {
  if (!readout_alpha_raw.defined()) return {};
  return nn::alpha_from_raw(readout_alpha_raw, options.block().alpha_floor());
}

torch::Tensor FewShotClassifierImpl::label_readout(const torch::Tensor& x,
                                                   const torch::Tensor& support,
                                                   const torch::Tensor& support_labels) {
  const auto& info = find_mechanism(readout_mechanism_);
  const int64_t B = x.size(0), M = x.size(1), S = support.size(1);
  const auto heads = options.block().multi_head_options();
  const int64_t H = heads.num_heads(), dh = x.size(2) / H;
  auto split = [&](const torch::Tensor& t, int64_t len) {
    return t.reshape({B, len, H, dh}).transpose(1, 2);  // (B, H, len, d_h)
  };
  const bool projected = !readout_k.is_empty();
  const auto k = split(projected ? readout_k(support) : support, S);
  const auto q = split(!projected ? x : readout_q.is_empty() ? readout_k(x) : readout_q(x), M);
  const auto E = label_embedding->weight;  // (N, d)
  const auto v = label_embedding(support_labels).unsqueeze(1).expand({B, H, S, E.size(1)});
  functional::AttentionFuncOptions fo;
  fo.scale(heads.scale()).chunk_size(heads.chunk_size());
  if (info.traits.has_softmax) fo.dropout(heads.dropout().value_or(0.0)).training(is_training());
  const auto o = info.fn(q, k, v, readout_alpha(), fo).mean(1);  // (B, M, d)
  return readout_log_scale.exp() * torch::matmul(o, E.t());
}

torch::Tensor FewShotClassifierImpl::encode(const torch::Tensor& images) {
  const int64_t c = options.in_channels(), s = options.image_size();
  TORCH_CHECK(images.defined() && (images.dim() == 4 || images.dim() == 5),
              "FewShotClassifier: images must have shape (M, C, H, W) or (B, S, C, H, W), got ",
              images.defined() ? images.sizes() : c10::IntArrayRef{});
  if (images.dim() == 5) {
    check_images("FewShotClassifier", "images", images, 5, c, s);
    return run_encoder(images.flatten(0, 1)).reshape({images.size(0), images.size(1), -1});
  }
  check_images("FewShotClassifier", "images", images, 4, c, s);
  return run_encoder(images);
}

torch::Tensor FewShotClassifierImpl::run_encoder(const torch::Tensor& images) {
  return encoder.is_empty() ? mlp_encoder->forward(images.flatten(1)) : encoder(images);
}

int64_t FewShotClassifierImpl::feature_dim() const {
  return encoder.is_empty() ? options.encoder_channels() : encoder->output_dim();
}

torch::Tensor FewShotClassifierImpl::forward_features(const torch::Tensor& support_features,
                                                      const torch::Tensor& support_labels,
                                                      const torch::Tensor& query_features) {
  const int64_t F = feature_dim();
  TORCH_CHECK(
      support_features.defined() && support_features.dim() == 3 && support_features.size(2) == F,
      "FewShotClassifier: support_features must have shape (B, S, F) with F = ", F, ", got ",
      support_features.defined() ? support_features.sizes() : c10::IntArrayRef{});
  const int64_t B = support_features.size(0), S = support_features.size(1);
  TORCH_CHECK(query_features.defined() && query_features.dim() == 3 &&
                  query_features.size(0) == B && query_features.size(2) == F,
              "FewShotClassifier: query_features must have shape (B, M, F) with B = ", B,
              " and F = ", F, ", got ",
              query_features.defined() ? query_features.sizes() : c10::IntArrayRef{});
  check_tokens("FewShotClassifier", "support_labels", support_labels, options.num_ways());
  TORCH_CHECK(support_labels.size(0) == B && support_labels.size(1) == S,
              "FewShotClassifier: support_labels must have shape (B, S) = (", B, ", ", S, "), got ",
              support_labels.sizes());

  if (feature_proj.is_empty()) {  // readout_features "encoder"
    return label_readout(torch::layer_norm(query_features, {F}),
                         torch::layer_norm(support_features, {F}), support_labels);
  }
  const auto support = feature_norm(feature_proj(support_features));
  auto x = feature_norm(feature_proj(query_features));
  if (!blocks->is_empty()) {
    const auto values = support + label_embedding(support_labels);
    for (size_t i = 0; i < blocks->size(); ++i) {
      x = blocks->ptr<SupportAttentionBlockImpl>(i)->forward(x, support, values);
    }
    if (options.block().norm_first()) x = final_norm(x);
  }
  if (head.is_empty()) return label_readout(x, support, support_labels);
  return head(x);
}

torch::Tensor FewShotClassifierImpl::forward(const torch::Tensor& support_images,
                                             const torch::Tensor& support_labels,
                                             const torch::Tensor& query_images) {
  const int64_t c = options.in_channels(), s = options.image_size();
  check_images("FewShotClassifier", "support_images", support_images, 5, c, s);
  check_images("FewShotClassifier", "query_images", query_images, 5, c, s);
  const int64_t B = support_images.size(0), S = support_images.size(1);
  const int64_t M = query_images.size(1);
  TORCH_CHECK(query_images.size(0) == B, "FewShotClassifier: query_images must have the batch ",
              "size of support_images (", B, "), got ", query_images.sizes());
  TORCH_CHECK(support_labels.defined() && support_labels.dim() == 2 &&
                  support_labels.size(0) == B && support_labels.size(1) == S,
              "FewShotClassifier: support_labels must have shape (B, S) = (", B, ", ", S, "), got ",
              support_labels.defined() ? support_labels.sizes() : c10::IntArrayRef{});
  const auto features =
      run_encoder(torch::cat({support_images.flatten(0, 1), query_images.flatten(0, 1)}, 0));
  const auto support_features = features.narrow(0, 0, B * S).reshape({B, S, -1});
  const auto query_features = features.narrow(0, B * S, B * M).reshape({B, M, -1});
  return forward_features(support_features, support_labels, query_features);
}

}  // namespace models
}  // namespace kvq
