// Causal least squares: the fused CPU kernel's binding (checks, unpacking, autograd) and the
// chunked LibTorch composition every other device and dtype runs.
#include "functional/chunked_causal.h"
#include "functional/kernel_views.h"
#include "functional/least_squares/least_squares.h"
#include "kernels/cpu/least_squares_kernel.h"

namespace kvq {
namespace functional {
namespace detail {
namespace {

namespace cpu = kernels::cpu;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

int64_t num_chunks(int64_t length, int64_t chunk) { return (length + chunk - 1) / chunk; }

// The saved per-chunk factors of the kernel (see least_squares_kernel.h).
struct KernelFactors {
  torch::Tensor p, r, w0, e;
};

KernelFactors allocate_factors(const torch::Tensor& q, int64_t dv, int64_t chunk) {
  const int64_t B = q.size(0), H = q.size(1), N = num_chunks(q.size(2), chunk), d = q.size(3);
  const auto o = q.options();
  KernelFactors f{cached_empty({B, H, N, d, d}, o), cached_empty({B, H, N, chunk, d}, o), {}, {}};
  if (dv > 0) {
    f.w0 = cached_empty({B, H, N, d, dv}, o);
    f.e = cached_empty({B, H, N, chunk, dv}, o);
  }
  return f;
}

template <typename T>
cpu::CausalLeastSquaresParams<T> kernel_params(const torch::Tensor& q, const torch::Tensor& k,
                                               const torch::Tensor& v, const torch::Tensor& alpha,
                                               const KernelFactors& f, int64_t chunk) {
  cpu::CausalLeastSquaresParams<T> p;
  p.batch = q.size(0), p.heads = q.size(1), p.length = q.size(2), p.d = q.size(3);
  p.dv = v.defined() ? v.size(3) : 0;
  p.chunk = chunk;
  p.q = heads_view<const T>(q);
  p.k = heads_view<const T>(k);
  if (v.defined()) p.v = heads_view<const T>(v);
  p.alpha = alpha.data_ptr<T>();
  p.alpha_stride = alpha.dim() == 1 ? 1 : 0;
  p.p = f.p.data_ptr<T>(), p.r = f.r.data_ptr<T>();
  if (f.w0.defined()) p.w0 = f.w0.data_ptr<T>(), p.e = f.e.data_ptr<T>();
  return p;
}

// The fused kernel with its analytic backward: forward and backward of both outputs, v defined
// for causal intention (values), undefined for the preconditioned queries.
torch::Tensor kernel_forward(AutogradContext* ctx, const torch::Tensor& q_in,
                             const torch::Tensor& k_in, const torch::Tensor& v_in,
                             const torch::Tensor& alpha_in, int64_t chunk, const char* op) {
  const auto q = rows_contiguous(q_in), k = rows_contiguous(k_in);
  const auto v = v_in.defined() ? rows_contiguous(v_in) : v_in;
  const auto alpha = alpha_in.contiguous();
  const int64_t dv = v.defined() ? v.size(3) : 0;
  const auto f = allocate_factors(q, dv, chunk);
  auto out = cached_empty({q.size(0), q.size(1), q.size(2), dv > 0 ? dv : q.size(3)}, q.options());
  cpu::FactorFailure failure;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "causal_least_squares_forward", [&] {
    failure = cpu::causal_least_squares_forward(kernel_params<scalar_t>(q, k, v, alpha, f, chunk),
                                                heads_view<scalar_t>(out));
  });
  check_factorisation(op, failure, q.scalar_type(), /*causal=*/true);
  ctx->save_for_backward(
      {q, k, v, alpha, f.p, f.r, f.w0, f.e, v.defined() ? torch::Tensor() : out});
  ctx->saved_data["chunk"] = chunk;
  return out;
}

// Returns the gradients of q, k, v (undefined for the queries output) and alpha.
variable_list kernel_backward(AutogradContext* ctx, const torch::Tensor& grad) {
  const auto s = ctx->get_saved_variables();
  const auto &q = s[0], &k = s[1], &v = s[2], &alpha = s[3], &u = s[8];
  const KernelFactors f{s[4], s[5], s[6], s[7]};
  const int64_t chunk = ctx->saved_data["chunk"].toInt();
  const auto grad_out = rows_contiguous(grad);
  auto grad_q = cached_empty(q.sizes(), q.options());
  auto grad_k = cached_empty(k.sizes(), k.options());
  auto grad_v = v.defined() ? cached_empty(v.sizes(), v.options()) : torch::Tensor();
  auto grad_alpha = cached_empty({q.size(0), q.size(1)}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "causal_least_squares_backward", [&] {
    using cpu::HeadsView;
    cpu::causal_least_squares_backward(
        kernel_params<scalar_t>(q, k, v, alpha, f, chunk), heads_view<const scalar_t>(grad_out),
        u.defined() ? heads_view<const scalar_t>(u) : HeadsView<const scalar_t>{},
        heads_view<scalar_t>(grad_q), heads_view<scalar_t>(grad_k),
        grad_v.defined() ? heads_view<scalar_t>(grad_v) : HeadsView<scalar_t>{},
        grad_alpha.data_ptr<scalar_t>());
  });
  grad_alpha = sum_to_alpha_shape(grad_alpha, alpha.dim() == 1);
  return {grad_q, grad_k, grad_v, grad_alpha};
}

// LibTorch's custom autograd functions (1.13 and 2.11 alike) take no undefined tensor inputs: one
// function per output.
class CausalIntentionFunction : public torch::autograd::Function<CausalIntentionFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& alpha, int64_t chunk,
                               const char* op) {
    return kernel_forward(ctx, q, k, v, alpha, chunk, op);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto g = kernel_backward(ctx, grads[0]);
    return {g[0], g[1], g[2], g[3], torch::Tensor(), torch::Tensor()};
  }
};

class CausalQueriesFunction : public torch::autograd::Function<CausalQueriesFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& alpha, int64_t chunk, const char* op) {
    return kernel_forward(ctx, q, k, torch::Tensor(), alpha, chunk, op);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto g = kernel_backward(ctx, grads[0]);
    return {g[0], g[1], g[3], torch::Tensor(), torch::Tensor()};
  }
};

bool takes_kernel(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                  const torch::Tensor& alpha) {
  const bool ok =
      v.defined() ? cpu_kernel_dtypes({q, k, v, alpha}) : cpu_kernel_dtypes({q, k, alpha});
  return ok && q.size(2) > 0 && q.size(3) > 0;
}

}  // namespace

void check_factorisation(const char* op, const kernels::cpu::FactorFailure& failure,
                         torch::ScalarType dtype, bool causal) {
  if (!failure.failed) return;
  fail_not_positive_definite(
      op,
      std::string(failure.matrix) + " (batch " + std::to_string(failure.batch) + ", head " +
          std::to_string(failure.head) +
          (causal ? ", chunk " + std::to_string(failure.chunk) : std::string()) + ")",
      dtype);
}

torch::Tensor cholesky_or_nan(const torch::Tensor& a) {
  auto [factor, info] = torch::linalg_cholesky_ex(a);
  return factor.masked_fill(info.ne(0).unsqueeze(-1).unsqueeze(-1),
                            std::numeric_limits<double>::quiet_NaN());
}

CausalChunkFactors causal_chunk_factors(const torch::Tensor& q, const torch::Tensor& k,
                                        const torch::Tensor& alpha, int64_t chunk) {
  CausalChunkFactors f;
  f.length = q.size(2);
  f.chunk = chunk;
  const int64_t d = q.size(3);
  f.qc = split_chunks(q, f.chunk);  // (B, H, N, C, d)
  f.kc = split_chunks(k, f.chunk);
  auto kct = f.kc.transpose(-2, -1);
  auto eye_d = torch::eye(d, q.options());
  auto alpha_chunks = alpha.dim() == 0 ? alpha : alpha.view({1, -1, 1, 1, 1});
  auto a0 = exclusive_chunk_cumsum(torch::matmul(kct, f.kc)) + alpha_chunks * eye_d;
  f.a0_factor = cholesky_or_nan(a0);
  f.p = torch::cholesky_solve(eye_d.expand_as(a0), f.a0_factor);
  auto kp = torch::matmul(f.kc, f.p);
  auto m = torch::matmul(kp, kct) + torch::eye(f.chunk, q.options());
  f.m_factor = cholesky_or_nan(m);
  f.r = torch::linalg_solve_triangular(f.m_factor, kp, /*upper=*/false);
  return f;
}

torch::Tensor causal_least_squares_queries_composed(const torch::Tensor& q, const torch::Tensor& k,
                                                    const torch::Tensor& alpha, int64_t chunk) {
  const auto f = causal_chunk_factors(q, k, alpha, chunk);
  auto qr = torch::matmul(f.qc, f.r.transpose(-2, -1)).tril();
  return merge_chunks(torch::matmul(f.qc, f.p) - torch::matmul(qr, f.r), f.length);
}

torch::Tensor causal_intention_composed(const torch::Tensor& q, const torch::Tensor& k,
                                        const torch::Tensor& v, const torch::Tensor& alpha,
                                        int64_t chunk) {
  const auto f = causal_chunk_factors(q, k, alpha, chunk);
  auto vc = split_chunks(v, f.chunk);
  auto b0 = exclusive_chunk_cumsum(torch::matmul(f.kc.transpose(-2, -1), vc));
  auto w0 = torch::cholesky_solve(b0, f.a0_factor);  // ridge weights at the chunk start
  auto residual = torch::linalg_solve_triangular(f.m_factor, vc - torch::matmul(f.kc, w0),
                                                 /*upper=*/false);
  auto qr = torch::matmul(f.qc, f.r.transpose(-2, -1)).tril();
  return merge_chunks(torch::matmul(f.qc, w0) + torch::matmul(qr, residual), f.length);
}

torch::Tensor causal_least_squares_queries(const char* op, const torch::Tensor& q,
                                           const torch::Tensor& k, const torch::Tensor& alpha,
                                           int64_t chunk) {
  chunk = std::max<int64_t>(1, std::min(chunk, q.size(2)));
  if (takes_kernel(q, k, {}, alpha)) {
    return CausalQueriesFunction::apply(q, k, alpha, chunk, op);
  }
  return causal_least_squares_queries_composed(q, k, alpha, chunk);
}

torch::Tensor causal_intention_output(const char* op, const torch::Tensor& q,
                                      const torch::Tensor& k, const torch::Tensor& v,
                                      const torch::Tensor& alpha, int64_t chunk) {
  chunk = std::max<int64_t>(1, std::min(chunk, q.size(2)));
  if (takes_kernel(q, k, v, alpha)) {
    return CausalIntentionFunction::apply(q, k, v, alpha, chunk, op);
  }
  return causal_intention_composed(q, k, v, alpha, chunk);
}

}  // namespace detail
}  // namespace functional
}  // namespace kvq
