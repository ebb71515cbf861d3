#include "kvq/functional/kernel_intention.h"

#include <algorithm>
#include <limits>

#include "functional/checks.h"
#include "functional/least_squares/kernel_ridge.h"
#include "functional/least_squares/least_squares.h"

namespace kvq {
namespace functional {
namespace detail {

KernelSystem kernel_system(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const torch::Tensor& alpha, const AttentionFuncOptions& options) {
  const auto dtype = solve_dtype(q.scalar_type());
  const double scale = default_scale(options, q.size(3));
  auto qs = q.to(dtype) * scale, kd = k.to(dtype);
  KernelSystem s;
  s.kappa_qk = torch::exp(torch::matmul(qs, kd.transpose(-2, -1)));             // (B, H, m, n)
  auto kappa_kk = torch::exp(torch::matmul(kd * scale, kd.transpose(-2, -1)));  // (B, H, n, n)
  s.values = v.to(dtype);
  const auto& mask = options.key_padding_mask();
  if (mask.defined()) {
    auto pad_cols = mask.view({k.size(0), 1, 1, k.size(2)});
    s.kappa_qk = s.kappa_qk.masked_fill(pad_cols, 0);
    kappa_kk = kappa_kk.masked_fill(pad_cols.logical_or(pad_cols.transpose(-2, -1)), 0);
    s.values = zero_padded_keys(s.values, mask);
  }
  s.system = kappa_kk + alpha_for_heads(alpha.to(q.device(), dtype)) *
                            torch::eye(k.size(2), kappa_kk.options());
  return s;
}

CausalKernelParts causal_kernel_intention(const KernelSystem& s) {
  CausalKernelParts parts;
  parts.factor = cholesky_checked("kernel_intention", "kappa(K, K) + alpha I", s.system);
  auto u = torch::linalg_solve_triangular(parts.factor, s.kappa_qk.transpose(-2, -1),
                                          /*upper=*/false);
  parts.z = torch::linalg_solve_triangular(parts.factor, s.values, /*upper=*/false);
  parts.out = torch::matmul(u.transpose(-2, -1).tril(), parts.z);
  return parts;
}

}  // namespace detail

torch::Tensor kernel_intention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& alpha,
                               const AttentionFuncOptions& options) {
  const auto dims = detail::check_qkv("kernel_intention", q, k, v, options);
  detail::check_alpha("kernel_intention", alpha, dims.heads);
  // LAPACK's 32-bit integers address one n x n system as a[i + j * n]: past 2^31 - 1 entries
  // the index wraps. (Long before that the O(n^3) solve is impractical.)
  TORCH_CHECK(dims.n <= std::numeric_limits<int>::max() / std::max<int64_t>(dims.n, 1),
              "kernel_intention: n = ", dims.n, " keys make ", dims.n, " x ", dims.n,
              " kernel systems, more entries than LAPACK's 32-bit indices address (2^31 - 1); "
              "kernel intention is O(n^3), use intention (O(n d^2)) for long sequences");
  const auto s = detail::kernel_system(q, k, v, alpha, options);
  torch::Tensor out;
  if (options.causal()) {
    out = detail::causal_kernel_intention(s).out;
  } else {
    // An LU solve: on CPU its backward is several times cheaper than autograd through Cholesky.
    // A singular system is reported as the Cholesky path reports it (CPU only: reading the
    // status elsewhere would synchronise; there a failure gives NaN or Inf).
    auto [solution, info] = torch::linalg_solve_ex(s.system, s.values);
    if (s.system.device().is_cpu() && info.ne(0).any().item<bool>()) {
      detail::fail_not_positive_definite("kernel_intention", "kappa(K, K) + alpha I",
                                         s.system.scalar_type());
    }
    out = torch::matmul(s.kappa_qk, solution);
  }
  return out.to(q.scalar_type());
}

}  // namespace functional
}  // namespace kvq
