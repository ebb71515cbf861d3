#include "kvq/functional/linear_attention.h"

#include "functional/checks.h"
#include "functional/chunked_causal.h"
#include "functional/kernel_views.h"
#include "kernels/cpu/linear_kernel.h"

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

// Non-causal linear attention as one fused CPU kernel call each way
// (src/kernels/cpu/linear_kernel.h), with the analytic backward
//   dnum = dO / den, dden_i = -(dO_i . O_i) / den_i, dS = phi(Q)^T dnum, dz = phi(Q)^T dden,
//   dQ = (dnum S^T + dden z^T) * elu'(Q), dK = (V dS^T + 1 dz^T) * elu'(K), dV = phi(K) dS
// (rows of padded keys zero). Saves q, k, v, O, [S z] and den; phi is recomputed.
// padding: the (B, n) key padding mask, or an empty tensor for none.
class FusedLinearFunction : public torch::autograd::Function<FusedLinearFunction> {
 public:
  template <typename T>
  static kernels::cpu::LinearAttentionParams<T> params(const torch::Tensor& q,
                                                       const torch::Tensor& k,
                                                       const torch::Tensor& v,
                                                       const torch::Tensor& padding, double eps,
                                                       const torch::Tensor& key_state,
                                                       const torch::Tensor& denominators) {
    kernels::cpu::LinearAttentionParams<T> p;
    p.batch = q.size(0), p.heads = q.size(1), p.m = q.size(2), p.n = k.size(2);
    p.d = q.size(3), p.dv = v.size(3);
    p.q = heads_view<const T>(q), p.k = heads_view<const T>(k), p.v = heads_view<const T>(v);
    if (padding.numel() > 0) {
      p.key_padding = padding.data_ptr<bool>();
      p.key_padding_batch_stride = padding.stride(0);
    }
    p.eps = static_cast<T>(eps);
    p.key_state = key_state.data_ptr<T>(), p.denominators = denominators.data_ptr<T>();
    return p;
  }

  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q_in,
                               const torch::Tensor& k_in, const torch::Tensor& v_in,
                               const torch::Tensor& padding, double eps) {
    const auto q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
    const int64_t B = q.size(0), H = q.size(1), m = q.size(2), d = q.size(3), dv = v.size(3);
    auto out = cached_empty({B, H, m, dv}, q.options());
    auto key_state = cached_empty({B, H, d, dv + 1}, q.options());
    auto denominators = cached_empty({B, H, m}, q.options());
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "linear_attention_forward", [&] {
      kernels::cpu::linear_attention_forward(
          params<scalar_t>(q, k, v, padding, eps, key_state, denominators),
          heads_view<scalar_t>(out));
    });
    ctx->save_for_backward({q, k, v, out, key_state, denominators});
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["eps"] = eps;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto &q = s[0], &k = s[1], &v = s[2], &out = s[3];
    const auto padding = ctx->saved_data["padding"].toTensor();
    const double eps = ctx->saved_data["eps"].toDouble();
    const auto grad_out = rows_contiguous(grads[0]);
    auto grad_q = cached_empty(q.sizes(), q.options());
    auto grad_k = cached_empty(k.sizes(), k.options());
    auto grad_v = cached_empty(v.sizes(), v.options());
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "linear_attention_backward", [&] {
      kernels::cpu::linear_attention_backward(
          params<scalar_t>(q, k, v, padding, eps, s[4], s[5]), heads_view<const scalar_t>(out),
          heads_view<const scalar_t>(grad_out), heads_view<scalar_t>(grad_q),
          heads_view<scalar_t>(grad_k), heads_view<scalar_t>(grad_v));
    });
    return {grad_q, grad_k, grad_v, torch::Tensor(), torch::Tensor()};
  }
};

// The fused kernel takes CPU float32/float64 inputs with at least one query, key and feature.
bool fused_linear_supports(const torch::Tensor& q, const torch::Tensor& k,
                           const torch::Tensor& v) {
  return cpu_kernel_dtypes({q, k, v}) && q.numel() > 0 && k.numel() > 0;
}

}  // namespace

torch::Tensor linear_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const AttentionFuncOptions& options) {
  detail::check_qkv("linear_attention", q, k, v, options);
  TORCH_CHECK(options.eps() >= 0, "linear_attention: eps must be >= 0, got ", options.eps());
  const auto& mask = options.key_padding_mask();
  if (!options.causal() && fused_linear_supports(q, k, v)) {
    // Custom autograd functions take no undefined tensors here: "none" is an empty tensor.
    const auto padding =
        mask.defined() ? mask.contiguous() : torch::empty({0}, q.options().dtype(torch::kBool));
    return FusedLinearFunction::apply(q, k, v, padding, options.eps());
  }
  auto phi_q = torch::elu(q) + 1;
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
