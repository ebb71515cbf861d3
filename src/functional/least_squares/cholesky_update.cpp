// The binding of the rank-1 Cholesky update kernel: checks, unpacking into the kernel's parameter
// struct, and the LibTorch-op form for tensors the kernel does not take.
#include "kvq/functional/cholesky_update.h"

#include "functional/kernel_views.h"
#include "kernels/cpu/cholesky_rank1_update.h"

namespace kvq {
namespace functional {
namespace {

void check_update(const char* op, const torch::Tensor& factor, const torch::Tensor& x) {
  TORCH_CHECK(factor.defined() && x.defined(), op, ": factor and x must be defined");
  TORCH_CHECK(at::isFloatingType(factor.scalar_type()), op,
              ": factor must be a floating tensor, got ", factor.scalar_type());
  TORCH_CHECK(factor.dim() >= 2 && factor.size(-1) == factor.size(-2), op,
              ": factor must have shape (..., d, d), got ", factor.sizes());
  const auto lead = factor.sizes().slice(0, factor.dim() - 2);
  TORCH_CHECK(x.dim() == factor.dim() - 1 && x.sizes().slice(0, x.dim() - 1) == lead &&
                  x.size(-1) == factor.size(-1),
              op, ": x must have shape (..., d): the leading dimensions of factor ", factor.sizes(),
              " and d = ", factor.size(-1), ", got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == factor.scalar_type() && x.device() == factor.device(), op,
              ": factor and x must have one dtype and device, got ", factor.scalar_type(), " on ",
              factor.device(), " and ", x.scalar_type(), " on ", x.device());
  TORCH_CHECK(!(torch::GradMode::is_enabled() && (factor.requires_grad() || x.requires_grad())), op,
              ": the update has no backward; run it under torch::NoGradGuard (torch.no_grad() "
              "in Python) or detach the inputs");
}

// Kernel path, in place on a contiguous factor.
void update_with_kernel(torch::Tensor& factor, const torch::Tensor& x) {
  const int64_t d = factor.size(-1);
  const auto xc = x.contiguous();
  AT_DISPATCH_FLOATING_TYPES(factor.scalar_type(), "cholesky_rank1_update", [&] {
    kernels::cpu::CholeskyRank1Params<scalar_t> p;
    p.count = d == 0 ? 0 : factor.numel() / (d * d);
    p.d = d;
    p.factor = factor.data_ptr<scalar_t>();
    p.factor_stride = d * d;
    p.ld = d;
    p.x = xc.data_ptr<scalar_t>();
    p.x_stride = d;
    kernels::cpu::cholesky_rank1_update(p);
  });
}

}  // namespace

torch::Tensor cholesky_rank1_update_composite(const torch::Tensor& factor, const torch::Tensor& x) {
  check_update("cholesky_rank1_update", factor, x);
  auto out = factor.clone();
  auto rest = x.clone();
  const int64_t d = factor.size(-1);
  for (int64_t k = 0; k < d; ++k) {
    auto diag = out.select(-1, k).select(-1, k);  // (...)
    const auto xk = rest.select(-1, k);
    const auto r = torch::hypot(diag, xk);
    const auto c = (diag / r).unsqueeze(-1), s = (xk / r).unsqueeze(-1);
    diag.copy_(r);
    if (k + 1 == d) break;
    auto column = out.select(-1, k).narrow(-1, k + 1, d - k - 1);  // L_ik, i > k
    auto tail = rest.narrow(-1, k + 1, d - k - 1);
    const auto new_column = c * column + s * tail;
    tail.copy_(c * tail - s * column);
    column.copy_(new_column);
  }
  return out;
}

void cholesky_rank1_update_(torch::Tensor& factor, const torch::Tensor& x) {
  check_update("cholesky_rank1_update_", factor, x);
  if (!detail::cpu_kernel_dtypes({factor, x})) {
    factor.copy_(cholesky_rank1_update_composite(factor, x));
    return;
  }
  if (factor.is_contiguous()) {
    update_with_kernel(factor, x);
    return;
  }
  auto work = factor.contiguous();
  update_with_kernel(work, x);
  factor.copy_(work);
}

torch::Tensor cholesky_rank1_update(const torch::Tensor& factor, const torch::Tensor& x) {
  check_update("cholesky_rank1_update", factor, x);
  if (!detail::cpu_kernel_dtypes({factor, x})) return cholesky_rank1_update_composite(factor, x);
  auto out = factor.clone(at::MemoryFormat::Contiguous);
  update_with_kernel(out, x);
  return out;
}

}  // namespace functional
}  // namespace kvq
