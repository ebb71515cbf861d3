#include "kvq/functional/kernel_intention.h"

#include <algorithm>
#include <limits>

#include "functional/checks.h"
#include "functional/least_squares.h"

namespace kvq {
namespace functional {

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
  const auto dtype = detail::solve_dtype(q.scalar_type());
  const double scale = detail::default_scale(options, dims.d);
  auto qs = q.to(dtype) * scale, kd = k.to(dtype), vd = v.to(dtype);
  auto kappa_qk = torch::exp(torch::matmul(qs, kd.transpose(-2, -1)));              // (B, H, m, n)
  auto kappa_kk = torch::exp(torch::matmul(kd * scale, kd.transpose(-2, -1)));      // (B, H, n, n)
  const auto& mask = options.key_padding_mask();
  if (mask.defined()) {
    // Padded keys get kernel rows and columns of zero: their coefficients decouple (alpha on the
    // diagonal keeps the system definite) and meet a zero column of kappa(Q, K), which is exact.
    auto pad_cols = mask.view({dims.batch, 1, 1, dims.n});
    kappa_qk = kappa_qk.masked_fill(pad_cols, 0);
    kappa_kk = kappa_kk.masked_fill(pad_cols.logical_or(pad_cols.transpose(-2, -1)), 0);
    vd = detail::zero_padded_keys(vd, mask);
  }
  auto system = kappa_kk + detail::alpha_for_heads(alpha.to(q.device(), dtype)) *
                               torch::eye(dims.n, kappa_kk.options());
  torch::Tensor out;
  if (options.causal()) {
    auto factor = detail::cholesky_checked("kernel_intention", "kappa(K, K) + alpha I", system);
    // The leading t x t block of L factors the system of keys s <= t, so with U = L^{-1} kappa(K, Q)
    // and Z = L^{-1} V, o_t = sum_{s<=t} U[s, t] Z[s].
    auto u = torch::linalg_solve_triangular(factor, kappa_qk.transpose(-2, -1), /*upper=*/false);
    auto z = torch::linalg_solve_triangular(factor, vd, /*upper=*/false);
    out = torch::matmul(u.transpose(-2, -1).tril(), z);
  } else {
    // An LU solve: on CPU its backward is several times cheaper than autograd through Cholesky.
    out = torch::matmul(kappa_qk, torch::linalg_solve(system, vd));
  }
  return out.to(q.scalar_type());
}

}  // namespace functional
}  // namespace kvq
