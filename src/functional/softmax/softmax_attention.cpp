#include "kvq/functional/softmax_attention.h"


#include <cmath>
#include <limits>

#include "functional/checks.h"
#include "functional/softmax/softmax_mixer.h"
#include "functional/softmax/tiled_softmax.h"
#include "kvq/functional/positional_encoding_2d.h"

namespace kvq {
namespace functional {
namespace detail {

namespace {

// The dense form: materialises the (B, H, m, n) scores and weights. Used where the tiled kernel
// does not apply: tensors other than CPU float32/float64 (half precision, and devices without a
// fused path). Its dropout is torch::dropout, drawn from the tensors' device generator.
torch::Tensor dense_softmax_mix(const torch::Tensor& q_scaled, const torch::Tensor& k,
                                const torch::Tensor& v, const AttentionFuncOptions& options) {
  const int64_t m = q_scaled.size(2), n = k.size(2);
  auto scores = torch::matmul(q_scaled, k.transpose(-2, -1));
  if (options.score_bias().defined()) scores = scores + options.score_bias();

  auto mask = score_mask(options, m, n, q_scaled.device());
  torch::Tensor empty_rows;  // queries that see no key at all: their output is zero
  if (mask.defined()) {
    if (options.key_padding_mask().defined()) {
      empty_rows = mask.all(-1, /*keepdim=*/true);
      mask = mask.logical_and(empty_rows.logical_not());
    }
    scores = scores.masked_fill(mask, -std::numeric_limits<double>::infinity());
  }
  auto weights = torch::softmax(scores, -1);
  if (empty_rows.defined()) weights = weights.masked_fill(empty_rows, 0);
  if (options.dropout() > 0.0 && options.training()) {
    weights = torch::dropout(weights, options.dropout(), /*train=*/true);
  }
  return torch::matmul(weights, v);
}

// On CUDA: at::scaled_dot_product_attention (flash / memory-efficient kernels) where
// its semantics match kvq's: no score bias, and no query row left without keys unless every row
// of that batch element is (key padding without causal), which is zeroed afterwards as kvq
// documents. Returns an undefined tensor when it does not apply.
torch::Tensor fused_cuda_softmax_mix(const torch::Tensor& q_scaled, const torch::Tensor& k,
                                     const torch::Tensor& v, const AttentionFuncOptions& options) {
  const auto& padding = options.key_padding_mask();
  if (!q_scaled.is_cuda() || options.score_bias().defined() ||
      (padding.defined() && options.causal())) {
    return {};
  }
  // SDPA scales by 1/sqrt(d) itself.
  const auto q = q_scaled * std::sqrt(static_cast<double>(q_scaled.size(-1)));
  const double dropout = options.training() ? options.dropout() : 0.0;
  if (!padding.defined()) {
    return at::scaled_dot_product_attention(q, k, v, {}, dropout, options.causal());
  }
  const auto empty = padding.all(-1).view({-1, 1, 1, 1});  // (B, 1, 1, 1)
  const auto attend = padding.logical_not().view({padding.size(0), 1, 1, -1}).logical_or(empty);
  return at::scaled_dot_product_attention(q, k, v, attend, dropout, false).masked_fill(empty, 0);
}

}  // namespace

torch::Tensor softmax_mix(const torch::Tensor& q, const torch::Tensor& k,
                          const torch::Tensor& v_in, const AttentionFuncOptions& options) {
  const int64_t heads = q.size(1);
  const double scale = default_scale(options, q.size(3));
  for (const auto& [name, t] : {std::pair<const char*, const torch::Tensor&>{
                                    "score_gain (pos_weight)", options.score_gain()},
                                {"score_bias (pos_weight, pos_bias)", options.score_bias()}}) {
    TORCH_CHECK(!t.defined() || t.device() == q.device(), "softmax attention: ", name,
                " must be on the device of the inputs, ", q.device(), ", got ", t.device());
  }
  // The gain multiplies the (m, d) queries rather than the (m, n) scores: same product, one pass
  // over the score matrix fewer, and the scores need not be kept for the gain's gradient.
  auto q_scaled = q;
  if (options.score_gain().defined()) {
    const auto& gain = options.score_gain();
    TORCH_CHECK(gain.dim() == 0 || (gain.dim() == 1 && gain.size(0) == heads),
                "score_gain must be () or (H) = (", heads, "), got ", gain.sizes());
    q_scaled = q * (gain.dim() == 0 ? gain : gain.view({1, heads, 1, 1}));
  }
  // A padded key has weight 0, but 0 * NaN is NaN: its value row is zeroed so that a NaN or an
  // infinity there cannot leak into any output (its gradient is zero either way).
  const auto v = zero_padded_keys(v_in, options.key_padding_mask());
  if (tiled_softmax_supports(q_scaled, k, v)) {
    TiledSoftmaxOptions tiled;
    if (options.dropout() > 0.0 && options.training()) {
      tiled.dropout = options.dropout();
      tiled.dropout_seed = draw_dropout_seed();  // a fresh mask per call; offset 0
    }
    return tiled_softmax_attention(q_scaled, k, v, options.score_bias(),
                                   options.key_padding_mask(), scale, options.causal(), tiled);
  }
  const auto q_times_scale = q_scaled * scale;
  auto fused = fused_cuda_softmax_mix(q_times_scale, k, v, options);
  if (fused.defined()) return fused;
  return dense_softmax_mix(q_times_scale, k, v, options);
}

}  // namespace detail

torch::Tensor softmax_attention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const AttentionFuncOptions& options) {
  detail::check_qkv("softmax_attention", q, k, v, options);
  return detail::softmax_mix(q, k, v, options);
}

torch::Tensor kv_attention(const torch::Tensor& k, const torch::Tensor& v,
                           const AttentionFuncOptions& options) {
  detail::check_heads_tensor("kv_attention", "k", "(B, H, n, d)", k);
  detail::check_qkv("kv_attention", k, k, v, options);
  return detail::softmax_mix(k, k, v, options);
}

torch::Tensor kv_pos_attention(const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& pos_weight, const torch::Tensor& pos_bias,
                               const AttentionFuncOptions& options) {
  detail::check_heads_tensor("kv_pos_attention", "k", "(B, H, n, d)", k);
  detail::check_qkv("kv_pos_attention", k, k, v, options);
  TORCH_CHECK(!options.score_gain().defined() && !options.score_bias().defined(),
              "kv_pos_attention: score_gain and score_bias come from pos_weight and pos_bias; "
              "leave them unset in the options");
  const int64_t heads = k.size(1), n = k.size(2);
  TORCH_CHECK(pos_weight.defined() && (pos_weight.dim() == 1 ||
                                       (pos_weight.dim() == 2 && pos_weight.size(0) == heads)),
              "kv_pos_attention: pos_weight must have shape (p) or (H, p) with H = ", heads,
              ", got ", pos_weight.defined() ? pos_weight.sizes() : c10::IntArrayRef{});
  const bool per_head = pos_weight.dim() == 2;
  TORCH_CHECK(pos_bias.defined() &&
                  (per_head ? (pos_bias.dim() == 1 && pos_bias.size(0) == heads)
                            : pos_bias.dim() == 0),
              "kv_pos_attention: pos_bias must have shape ", per_head ? "(H)" : "()",
              " to match pos_weight ", pos_weight.sizes(), ", got ",
              pos_bias.defined() ? pos_bias.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(pos_weight.device() == k.device() && pos_bias.device() == k.device(),
              "kv_pos_attention: pos_weight and pos_bias must be on the device of k, ", k.device(),
              ", got ", pos_weight.device(), " and ", pos_bias.device());
  return detail::softmax_mix(k, k, v,
                             with_kv_pos_terms(options, pos_weight, pos_bias, n, k.scalar_type()));
}

}  // namespace functional
}  // namespace kvq
