#include "kvq/functional/linear_attention.h"

#include "functional/checks.h"
#include "functional/chunked_causal.h"

namespace kvq {
namespace functional {
namespace {

using namespace detail;

// O = Q (K^T V), or its causal prefix form. Padded keys must already be zero.
torch::Tensor linear_product(const torch::Tensor& q, const torch::Tensor& k,
                             const torch::Tensor& v, const AttentionFuncOptions& options) {
  if (options.causal()) return causal_linear_product(q, k, v, chunk_length(options, q.size(-1)));
  return torch::matmul(q, torch::matmul(k.transpose(-2, -1), v));
}

}  // namespace

torch::Tensor linear_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const AttentionFuncOptions& options) {
  detail::check_qkv("linear_attention", q, k, v, options);
  TORCH_CHECK(options.eps() >= 0, "linear_attention: eps must be >= 0, got ", options.eps());
  auto phi_q = torch::elu(q) + 1;
  const auto& mask = options.key_padding_mask();
  auto phi_k = detail::zero_padded_keys(torch::elu(k) + 1, mask);
  // One pass gives numerator and denominator: append a column of ones to V. Padded values are
  // zeroed too: 0 * NaN would leak a NaN there into every output.
  auto v_ones =
      torch::cat({detail::zero_padded_keys(v, mask), torch::ones_like(v.narrow(-1, 0, 1))}, -1);
  auto both = linear_product(phi_q, phi_k, v_ones, options);
  const int64_t dv = v.size(-1);
  return both.narrow(-1, 0, dv) / (both.narrow(-1, dv, 1) + options.eps());
}

torch::Tensor linear_identity_attention(const torch::Tensor& q, const torch::Tensor& k,
                                        const torch::Tensor& v,
                                        const AttentionFuncOptions& options) {
  detail::check_qkv("linear_identity_attention", q, k, v, options);
  const auto& mask = options.key_padding_mask();
  return linear_product(q, detail::zero_padded_keys(k, mask), detail::zero_padded_keys(v, mask),
                        options);
}

}  // namespace functional
}  // namespace kvq
