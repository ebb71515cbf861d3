// Decoding of the linear family: the running sums S = phi(K)^T V and z = phi(K)^T 1 (linear),
// S = K^T V (linear-identity); each step is O(d dv).
#include "functional/decoding_buffers.h"
#include "kvq/functional/linear_attention.h"

namespace kvq {
namespace functional {
namespace {

torch::Tensor phi(const torch::Tensor& x) { return torch::elu(x) + 1; }

}  // namespace

using torch::Tensor;
using namespace detail;

std::pair<Tensor, DecodeState> linear_prefill(const Tensor& q, const Tensor& k, const Tensor& v,
                                              const AttentionFuncOptions& options) {
  const auto dims = check_prefill("linear_prefill", q, k, v, options);
  auto s = new_state("linear", dims);
  auto out =
      dims.n == 0 ? empty_output(q, dims) : linear_attention(q, k, v, prefill_options(options));
  const auto phi_k = zero_padded_keys(phi(k), options.key_padding_mask()).detach();
  s.kv_sum = torch::matmul(phi_k.transpose(-2, -1), v.detach());
  s.key_sum = phi_k.sum(2);
  return {out, std::move(s)};
}

Tensor linear_step(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                   const AttentionFuncOptions& options) {
  check_step("linear_step", "linear", s, q, k, v);
  TORCH_CHECK(options.eps() >= 0, "linear_step: eps must be >= 0, got ", options.eps());
  const auto dtype = s.kv_sum.scalar_type();
  const auto phi_k = phi(k.to(dtype));
  s.kv_sum.add_(torch::matmul(phi_k.transpose(-2, -1), v.to(dtype)));
  s.key_sum.add_(phi_k.squeeze(2));
  const auto phi_q = phi(q.to(dtype));
  const auto normaliser = torch::matmul(phi_q, s.key_sum.unsqueeze(-1)) + options.eps();
  s.length += 1;
  return (torch::matmul(phi_q, s.kv_sum) / normaliser).to(q.scalar_type());
}

std::pair<Tensor, DecodeState> linear_identity_prefill(const Tensor& q, const Tensor& k,
                                                       const Tensor& v,
                                                       const AttentionFuncOptions& options) {
  const auto dims = check_prefill("linear_identity_prefill", q, k, v, options);
  auto s = new_state("linear_identity", dims);
  auto out = dims.n == 0 ? empty_output(q, dims)
                         : linear_identity_attention(q, k, v, prefill_options(options));
  const auto kz = zero_padded_keys(k, options.key_padding_mask()).detach();
  s.kv_sum = torch::matmul(kz.transpose(-2, -1), v.detach());
  return {out, std::move(s)};
}

Tensor linear_identity_step(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                            const AttentionFuncOptions&) {
  check_step("linear_identity_step", "linear_identity", s, q, k, v);
  const auto dtype = s.kv_sum.scalar_type();
  s.kv_sum.add_(torch::matmul(k.to(dtype).transpose(-2, -1), v.to(dtype)));
  s.length += 1;
  return torch::matmul(q.to(dtype), s.kv_sum).to(q.scalar_type());
}

}  // namespace functional
}  // namespace kvq
