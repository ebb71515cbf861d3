#include "kvq/modules/multi_head_kvq.h"

#include <cmath>
#include <sstream>

#include "kvq/functional/positional_encoding_2d.h"

namespace kvq {
namespace nn {
namespace {

std::string softmax_mechanisms() {
  std::ostringstream out;
  bool first = true;
  for (const auto& info : mechanisms()) {
    if (!info.has_softmax) continue;
    out << (first ? "" : ", ") << info.name;
    first = false;
  }
  return out.str();
}

}  // namespace

MultiHeadKVQImpl::MultiHeadKVQImpl(const MultiHeadKVQOptions& options_) : options(options_) {
  reset();
}

void MultiHeadKVQImpl::reset() {
  const int64_t embed = options.embed_dim(), heads = options.num_heads();
  TORCH_CHECK(embed > 0 && heads > 0 && embed % heads == 0,
              "MultiHeadKVQ: embed_dim must be a positive multiple of num_heads, got embed_dim = ",
              embed, ", num_heads = ", heads);
  TORCH_CHECK(options.dropout() >= 0.0 && options.dropout() < 1.0,
              "MultiHeadKVQ: dropout must be in [0, 1), got ", options.dropout());
  mechanism_ = &find_mechanism(options.mechanism());
  projection_ = options.projection().empty() ? mechanism_->projection
                                             : parse_projection(options.projection());
  TORCH_CHECK(projection_ != Projection::KVPos || mechanism_->has_softmax,
              "MultiHeadKVQ: projection 'kv-pos' adds a term to softmax scores, and mechanism '",
              mechanism_->name, "' has none; mechanisms with a softmax: ", softmax_mechanisms());

  auto linear = [&](const char* name) {
    return register_module(name, torch::nn::Linear(
                                     torch::nn::LinearOptions(embed, embed).bias(options.bias())));
  };
  // Input projections as torch::nn::MultiheadAttention: Xavier-uniform weights, zero biases.
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

  if (mechanism_->uses_alpha) {
    const double excess = options.alpha_init() - options.alpha_floor();
    TORCH_CHECK(options.alpha_floor() > 0 && excess > 0,
                "MultiHeadKVQ: need alpha_init > alpha_floor > 0, got alpha_init = ",
                options.alpha_init(), ", alpha_floor = ", options.alpha_floor());
    // Inverse softplus of the excess over the floor.
    auto raw = torch::full({heads}, excess + std::log(-std::expm1(-excess)));
    alpha_raw = options.learn_alpha() ? register_parameter("alpha_raw", raw)
                                      : register_buffer("alpha_raw", raw);
  }
  if (projection_ == Projection::KVPos) {
    TORCH_CHECK(options.pos_channels() > 0, "MultiHeadKVQ: pos_channels must be positive, got ",
                options.pos_channels());
    // Linear(p, 1) per head with PyTorch's default initialisation, as in the paper's code.
    const double bound = 1.0 / std::sqrt(static_cast<double>(options.pos_channels()));
    pos_weight = register_parameter(
        "pos_weight", torch::empty({heads, options.pos_channels()}).uniform_(-bound, bound));
    pos_bias = register_parameter("pos_bias", torch::empty({heads}).uniform_(-bound, bound));
  }
}

torch::Tensor MultiHeadKVQImpl::alpha() const {
  if (!alpha_raw.defined()) return {};
  return torch::softplus(alpha_raw) + options.alpha_floor();
}

torch::Tensor MultiHeadKVQImpl::forward(const torch::Tensor& query, const torch::Tensor& key,
                                        const torch::Tensor& value,
                                        const torch::Tensor& key_padding_mask, bool causal) {
  const int64_t embed = options.embed_dim(), heads = options.num_heads();
  const char* layout = options.batch_first() ? "(B, T, E)" : "(T, B, E)";
  for (const auto& [name, x] : {std::pair<const char*, const torch::Tensor&>{"query", query},
                                {"key", key},
                                {"value", value}}) {
    TORCH_CHECK(x.defined() && x.dim() == 3 && x.size(2) == embed, "MultiHeadKVQ: ", name,
                " must have shape ", layout, " with E = ", embed, ", got ",
                x.defined() ? x.sizes() : c10::IntArrayRef{});
  }
  auto to_batch_first = [&](const torch::Tensor& x) {
    return options.batch_first() ? x : x.transpose(0, 1);
  };
  auto xq = to_batch_first(query), xk = to_batch_first(key), xv = to_batch_first(value);
  const int64_t batch = xq.size(0), m = xq.size(1), n = xk.size(1);
  TORCH_CHECK(xk.size(0) == batch && xv.size(0) == batch && xv.size(1) == n,
              "MultiHeadKVQ: key and value must have the batch size of query and one length, "
              "got query ", query.sizes(), ", key ", key.sizes(), ", value ", value.sizes());

  auto split_heads = [&](const torch::Tensor& x) {  // (B, T, E) -> (B, H, T, E / H)
    return x.view({batch, x.size(1), heads, embed / heads}).transpose(1, 2);
  };
  auto k = split_heads(k_proj(xk));
  torch::Tensor q;
  if (projection_ == Projection::QKV) {
    q = split_heads(q_proj(xq));
  } else {
    // Tied projection. In self-attention q is k itself, so K K^T is exactly symmetric.
    q = query.is_same(key) ? k : split_heads(k_proj(xq));
  }
  auto v = split_heads(v_proj(xv));

  functional::AttentionFuncOptions fo;
  fo.causal(causal).key_padding_mask(key_padding_mask).scale(options.scale())
      .chunk_size(options.chunk_size());
  if (mechanism_->has_softmax) fo.dropout(options.dropout()).training(is_training());
  if (projection_ == Projection::KVPos) {
    fo = functional::with_kv_pos_terms(fo, pos_weight, pos_bias, n, q.scalar_type());
  }
  auto heads_out = mechanism_->fn(q, k, v, alpha(), fo);  // (B, H, m, d)
  auto out = out_proj(heads_out.transpose(1, 2).reshape({batch, m, embed}));
  return options.batch_first() ? out : out.transpose(0, 1);
}

torch::Tensor MultiHeadKVQImpl::forward_self(const torch::Tensor& x,
                                             const torch::Tensor& key_padding_mask, bool causal) {
  return forward(x, x, x, key_padding_mask, causal);
}

void MultiHeadKVQImpl::pretty_print(std::ostream& stream) const {
  stream << "kvq::nn::MultiHeadKVQ(embed_dim=" << options.embed_dim()
         << ", num_heads=" << options.num_heads() << ", mechanism=" << mechanism_->name
         << ", projection=" << projection_name(projection_) << ")";
}

}  // namespace nn
}  // namespace kvq
