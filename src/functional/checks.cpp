#include "functional/checks.h"

#include <cmath>
#include <sstream>

namespace kvq {
namespace functional {
namespace detail {
namespace {

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

void check_floating(const char* op, const char* name, const torch::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating tensor (float16, bfloat16, float32 or float64), got ",
              t.scalar_type());
}

}  // namespace

void check_heads_tensor(const char* op, const char* name, const char* layout,
                        const torch::Tensor& t) {
  check_floating(op, name, t);
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must have shape ", layout, ", got ", shape_of(t));
}

Dims check_qkv(const char* op, const torch::Tensor& q, const torch::Tensor& k,
               const torch::Tensor& v, const AttentionFuncOptions& options) {
  check_heads_tensor(op, "q", "(B, H, m, d)", q);
  check_heads_tensor(op, "k", "(B, H, n, d)", k);
  check_heads_tensor(op, "v", "(B, H, n, dv)", v);
  Dims dims{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  TORCH_CHECK(k.size(0) == dims.batch && v.size(0) == dims.batch, op,
              ": q, k and v must have the same batch size B, got q ", shape_of(q), ", k ",
              shape_of(k), ", v ", shape_of(v));
  TORCH_CHECK(k.size(1) == dims.heads && v.size(1) == dims.heads, op,
              ": q, k and v must have the same number of heads H, got q ", shape_of(q), ", k ",
              shape_of(k), ", v ", shape_of(v));
  TORCH_CHECK(k.size(3) == dims.d, op, ": k must have the head width d = ", dims.d,
              " of q (shape (B, H, n, d)), got k ", shape_of(k));
  TORCH_CHECK(v.size(2) == dims.n, op, ": v must have as many rows n = ", dims.n,
              " as k (shape (B, H, n, dv)), got v ", shape_of(v));
  TORCH_CHECK(dims.d > 0 && dims.dv > 0, op, ": head widths must be positive, got q ",
              shape_of(q), ", v ", shape_of(v));
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k and v must have one dtype, got ", q.scalar_type(), ", ", k.scalar_type(),
              ", ", v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), op,
              ": q, k and v must be on one device, got ", q.device(), ", ", k.device(), ", ",
              v.device());
  TORCH_CHECK(!options.causal() || dims.m == dims.n, op,
              ": causal=true needs as many queries as keys (self-attention), got m = ", dims.m,
              " queries and n = ", dims.n, " keys");
  TORCH_CHECK(options.chunk_size() >= 0, op, ": chunk_size must be >= 0 (0 = head width), got ",
              options.chunk_size());
  TORCH_CHECK(options.dropout() >= 0.0 && options.dropout() < 1.0, op,
              ": dropout must be in [0, 1), got ", options.dropout());
  TORCH_CHECK(!options.scale() || std::isfinite(*options.scale()), op,
              ": scale must be finite, got ", *options.scale());
  const auto& mask = options.key_padding_mask();
  if (mask.defined()) {
    TORCH_CHECK(mask.scalar_type() == torch::kBool, op,
                ": key_padding_mask must be a bool tensor (true = ignore the key), got dtype ",
                mask.scalar_type());
    TORCH_CHECK(mask.dim() == 2 && mask.size(0) == dims.batch && mask.size(1) == dims.n, op,
                ": key_padding_mask must have shape (B, n) = (", dims.batch, ", ", dims.n,
                "), got ", shape_of(mask));
    TORCH_CHECK(mask.device() == q.device(), op, ": key_padding_mask must be on ", q.device(),
                ", got ", mask.device());
  }
  return dims;
}

void check_alpha(const char* op, const torch::Tensor& alpha, int64_t heads) {
  check_floating(op, "alpha", alpha);
  TORCH_CHECK(alpha.dim() == 0 || (alpha.dim() == 1 && alpha.size(0) == heads), op,
              ": alpha must be a scalar tensor () or one value per head (H) = (", heads,
              "), got ", shape_of(alpha));
  // Any device with values will do (alpha is moved to the inputs' device); meta has none.
  TORCH_CHECK(!alpha.device().is_meta(), op,
              ": alpha is on the meta device; it needs values (put it on the inputs' device or "
              "the CPU)");
  // Its values are read only on the CPU: elsewhere that would synchronise with the device (a
  // non-positive alpha on a GPU gives NaN through the failed factorisation instead).
  TORCH_CHECK(!alpha.device().is_cpu() || alpha.gt(0).all().item<bool>(), op,
              ": alpha must be > 0 (it makes K^T K + alpha I positive definite), got ",
              alpha.detach().cpu());
}

torch::Tensor alpha_for_heads(const torch::Tensor& alpha) {
  return alpha.dim() == 0 ? alpha : alpha.view({1, -1, 1, 1});
}

torch::Tensor score_mask(const AttentionFuncOptions& options, int64_t m, int64_t n,
                         const torch::Device& device) {
  torch::Tensor mask;
  if (options.causal()) {
    mask = torch::ones({m, n}, torch::TensorOptions().dtype(torch::kBool).device(device))
               .triu(1)
               .view({1, 1, m, n});
  }
  const auto& padding = options.key_padding_mask();
  if (padding.defined()) {
    auto pad = padding.view({padding.size(0), 1, 1, n});
    mask = mask.defined() ? mask.logical_or(pad) : pad;
  }
  return mask;
}

torch::Tensor zero_padded_keys(const torch::Tensor& x, const torch::Tensor& key_padding_mask) {
  if (!key_padding_mask.defined()) return x;
  return x.masked_fill(key_padding_mask.view({x.size(0), 1, x.size(2), 1}), 0);
}

torch::ScalarType solve_dtype(torch::ScalarType input) {
  return input == torch::kDouble ? torch::kDouble : torch::kFloat;
}

double default_scale(const AttentionFuncOptions& options, int64_t d) {
  return options.scale().value_or(1.0 / std::sqrt(static_cast<double>(d)));
}

int64_t chunk_length(const AttentionFuncOptions& options, int64_t d) {
  return options.chunk_size() > 0 ? options.chunk_size() : d;
}

}  // namespace detail
}  // namespace functional
}  // namespace kvq
