// Decoding of the least-squares family: the Cholesky factor of alpha I + K^T K, updated per
// token by a rank-1 update (intention, softmax intention, with the KV cache for the latter), and
// the growing factor of kappa(K, K) + alpha I (kernel intention). docs/mechanisms.md,
// "Incremental decoding".
#include "functional/decoding_buffers.h"
#include "functional/least_squares/kernel_ridge.h"
#include "functional/least_squares/least_squares.h"
#include "functional/softmax/softmax_mixer.h"
#include "kvq/functional/cholesky_update.h"
#include "kvq/functional/intention.h"
#include "kvq/functional/kernel_intention.h"

namespace kvq {
namespace functional {
namespace {

using torch::Tensor;
using namespace detail;

// u = A^{-1} x for A = L L^T with L the state's factor: x (B, H, 1, d) -> (B, H, 1, d).
Tensor solve_with_factor(const Tensor& factor, const Tensor& x) {
  return torch::cholesky_solve(x.transpose(-2, -1), factor).transpose(-2, -1);
}

// L and B of the least-squares state from a prefix (padded keys zeroed: exact).
void least_squares_prefix(const char* op, DecodeState& s, const Tensor& k, const Tensor& v,
                          const Tensor& alpha, const AttentionFuncOptions& options) {
  const auto dtype = solve_dtype(k.scalar_type());
  const auto& mask = options.key_padding_mask();
  const auto kd = zero_padded_keys(k.to(dtype), mask).detach();
  s.factor = cholesky_checked(op, "alpha I + K^T K",
                              regularised_gram(kd, alpha.detach().to(k.device(), dtype)))
                 .contiguous();
  if (v.defined()) {
    s.kv_sum = torch::matmul(kd.transpose(-2, -1), zero_padded_keys(v.to(dtype), mask).detach());
  }
}

}  // namespace

std::pair<Tensor, DecodeState> intention_prefill(const Tensor& q, const Tensor& k, const Tensor& v,
                                                 const Tensor& alpha,
                                                 const AttentionFuncOptions& options) {
  const auto dims = check_prefill("intention_prefill", q, k, v, options);
  check_alpha("intention_prefill", alpha, dims.heads);
  auto s = new_state("intention", dims);
  auto out =
      dims.n == 0 ? empty_output(q, dims) : intention(q, k, v, alpha, prefill_options(options));
  least_squares_prefix("intention_prefill", s, k, v, alpha, options);
  return {out, std::move(s)};
}

Tensor intention_step(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                      const AttentionFuncOptions&) {
  check_step("intention_step", "intention", s, q, k, v);
  const auto dtype = s.factor.scalar_type();
  const auto kd = k.to(dtype);
  cholesky_rank1_update_(s.factor, kd.squeeze(2));                  // A_t = A_{t-1} + k k^T
  s.kv_sum.add_(torch::matmul(kd.transpose(-2, -1), v.to(dtype)));  // B_t = B_{t-1} + k v^T
  const auto u = solve_with_factor(s.factor, q.to(dtype));          // q^T A_t^{-1}
  s.length += 1;
  return torch::matmul(u, s.kv_sum).to(q.scalar_type());
}

std::pair<Tensor, DecodeState> softmax_intention_prefill(const Tensor& q, const Tensor& k,
                                                         const Tensor& v, const Tensor& alpha,
                                                         const AttentionFuncOptions& options) {
  const auto dims = check_prefill("softmax_intention_prefill", q, k, v, options);
  check_alpha("softmax_intention_prefill", alpha, dims.heads);
  auto s = new_state("softmax_intention", dims);
  auto out = dims.n == 0 ? empty_output(q, dims)
                         : softmax_intention(q, k, v, alpha, prefill_options(options));
  least_squares_prefix("softmax_intention_prefill", s, k, Tensor(), alpha, options);
  const auto dtype = s.factor.scalar_type();
  cache_prefix(s, k.to(dtype), v.to(dtype), options.key_padding_mask());
  return {out, std::move(s)};
}

Tensor softmax_intention_step(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                              const AttentionFuncOptions& options) {
  check_step("softmax_intention_step", "softmax_intention", s, q, k, v);
  const auto dtype = s.factor.scalar_type();
  const auto kd = k.to(dtype);
  cache_row(s, kd, v.to(dtype));
  const int64_t rows = s.length + 1;
  auto factor = s.factor.clone();  // the state changes only once the step has succeeded
  cholesky_rank1_update_(factor, kd.squeeze(2));
  const auto q_tilde = solve_with_factor(factor, q.to(dtype));  // q^T A_t^{-1}
  auto out = softmax_mix(q_tilde, leading(s.keys, {2}, rows), leading(s.values, {2}, rows),
                         step_options(options, s, rows));
  s.factor = factor;
  s.length = rows;
  return out.to(q.scalar_type());
}

// ---- Kernel intention ----

std::pair<Tensor, DecodeState> kernel_intention_prefill(const Tensor& q, const Tensor& k,
                                                        const Tensor& v, const Tensor& alpha,
                                                        const AttentionFuncOptions& options) {
  const auto dims = check_prefill("kernel_intention_prefill", q, k, v, options);
  check_alpha("kernel_intention_prefill", alpha, dims.heads);
  auto s = new_state("kernel_intention", dims);
  const auto dtype = solve_dtype(q.scalar_type());
  const int64_t capacity = capacity_for(dims.n + 1);
  CausalKernelParts parts;  // L and Z of the prefix
  if (dims.n == 0) {
    parts.out = empty_output(q, dims);
    parts.factor = k.new_zeros({dims.batch, dims.heads, 0, 0}, k.options().dtype(dtype));
    parts.z = k.new_zeros({dims.batch, dims.heads, 0, dims.dv}, k.options().dtype(dtype));
  } else {
    parts = causal_kernel_intention(kernel_system(q, k, v, alpha, prefill_options(options)));
  }
  s.factor = with_capacity(parts.factor, {2, 3}, capacity);
  s.kernel_values = with_capacity(parts.z, {2}, capacity);
  cache_prefix(s, k.to(dtype), Tensor(), options.key_padding_mask());
  return {parts.out.to(q.scalar_type()), std::move(s)};
}

Tensor kernel_intention_step(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& alpha, const AttentionFuncOptions& options) {
  check_step("kernel_intention_step", "kernel_intention", s, q, k, v);
  check_alpha("kernel_intention_step", alpha, s.heads);
  const auto dtype = s.keys.scalar_type();
  const int64_t t = s.length;
  const double scale = default_scale(options, s.dim);
  const auto kd = k.to(dtype), vd = v.to(dtype);
  cache_row(s, kd, Tensor());
  const auto mask = step_options(options, s, t + 1).key_padding_mask();  // (B, t + 1) or none
  // kappa(K, x) for the cached keys 0 .. rows-1, padded keys' entries zero: (B, H, rows, 1).
  const auto kappa_keys = [&](const Tensor& x, int64_t rows) {
    auto kappa =
        torch::exp(torch::matmul(leading(s.keys, {2}, rows), (x * scale).transpose(-2, -1)));
    if (mask.defined()) {
      kappa = kappa.masked_fill(mask.narrow(1, 0, rows).view({s.batch, 1, rows, 1}), 0);
    }
    return kappa;
  };
  // The new row of L: l = L^{-1} c, L_tt = sqrt(kappa(k_t, k_t) + alpha - l . l).
  const auto l = t == 0 ? kd.new_zeros({s.batch, s.heads, 0, 1})
                        : torch::linalg_solve_triangular(leading(s.factor, {2, 3}, t),
                                                         kappa_keys(kd, t), /*upper=*/false);
  const auto pivot = torch::exp(torch::matmul(kd * scale, kd.transpose(-2, -1))) +
                     alpha_for_heads(alpha.to(kd.device(), dtype)) -
                     l.pow(2).sum(2, /*keepdim=*/true);  // (B, H, 1, 1)
  // As cholesky_checked: an error on the CPU; elsewhere a NaN pivot, without a host
  // synchronisation.
  TORCH_CHECK(!pivot.device().is_cpu() || pivot.gt(0).all().item<bool>(),
              "kernel_intention_step: kappa(K, K) + alpha I is not numerically positive definite "
              "in ", dtype,
              "; increase alpha relative to the kernel's scale, or compute in float64");
  const auto diag = pivot.sqrt();
  const auto z = (vd - torch::matmul(l.transpose(-2, -1), leading(s.kernel_values, {2}, t))) / diag;
  auto row = s.factor.narrow(2, t, 1);
  row.narrow(3, 0, t).copy_(l.transpose(-2, -1));
  row.narrow(3, t, 1).copy_(diag);
  s.kernel_values.narrow(2, t, 1).copy_(z);
  // o_t = (L^{-1} kappa(K_{<=t}, q_t))^T Z.
  const auto u = torch::linalg_solve_triangular(leading(s.factor, {2, 3}, t + 1),
                                                kappa_keys(q.to(dtype), t + 1), /*upper=*/false);
  s.length = t + 1;
  return torch::matmul(u.transpose(-2, -1), leading(s.kernel_values, {2}, t + 1))
      .to(q.scalar_type());
}

}  // namespace functional
}  // namespace kvq
