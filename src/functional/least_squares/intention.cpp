#include "kvq/functional/intention.h"

#include "functional/checks.h"
#include "functional/kernel_views.h"
#include "functional/least_squares/least_squares.h"
#include "functional/softmax/softmax_mixer.h"

namespace kvq {
namespace functional {
namespace detail {

torch::Tensor cholesky_checked(const char* op, const char* what, const torch::Tensor& a) {
  if (!a.device().is_cpu()) return cholesky_or_nan(a);  // reading info would synchronise
  auto [factor, info] = torch::linalg_cholesky_ex(a);
  if (info.ne(0).any().item<bool>()) fail_not_positive_definite(op, what, a.scalar_type());
  return factor;
}

void fail_not_positive_definite(const char* op, const std::string& matrix,
                                torch::ScalarType dtype) {
  TORCH_CHECK(false, op, ": ", matrix, " is not numerically positive definite in ", dtype,
              "; increase alpha relative to the scale of the keys, or compute in float64");
}

torch::Tensor sum_to_alpha_shape(const torch::Tensor& per_head_grad, bool alpha_per_head) {
  return alpha_per_head ? per_head_grad.sum(0) : per_head_grad.sum();
}

torch::Tensor regularised_gram(const torch::Tensor& k, const torch::Tensor& alpha) {
  auto gram = torch::matmul(k.transpose(-2, -1), k);
  auto eye = torch::eye(k.size(-1), k.options());
  return gram + alpha_for_heads(alpha) * eye;
}

}  // namespace detail

namespace {

using namespace detail;

// Non-causal intention with the closed-form backward of docs/mechanisms.md:
//   A = K^T K + alpha I = L L^T, W = A^{-1} K^T V, O = Q W
//   G = A^{-1} Q^T dO, dQ = dO W^T, dV = K G, dK = V G^T - K (G W^T + W G^T),
//   dalpha = -sum(G * W) (reduced to alpha's shape).
class IntentionFunction : public torch::autograd::Function<IntentionFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q,
                               const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& alpha) {
    auto factor = cholesky_checked("intention", "K^T K + alpha I", regularised_gram(k, alpha));
    auto w = torch::cholesky_solve(torch::matmul(k.transpose(-2, -1), v), factor);
    ctx->save_for_backward({q, k, v, factor, w});
    ctx->saved_data["alpha_per_head"] = alpha.dim() == 1;
    return torch::matmul(q, w);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &factor = saved[3], &w = saved[4];
    const auto& grad_out = grads[0];
    auto g = torch::cholesky_solve(torch::matmul(q.transpose(-2, -1), grad_out), factor);
    auto wt = w.transpose(-2, -1), gt = g.transpose(-2, -1);
    auto grad_q = torch::matmul(grad_out, wt);
    auto grad_v = torch::matmul(k, g);
    auto grad_k = torch::matmul(v, gt) - torch::matmul(k, torch::matmul(g, wt) + torch::matmul(w, gt));
    auto grad_alpha = -(g * w).sum({-2, -1});  // (B, H)
    grad_alpha = sum_to_alpha_shape(grad_alpha, ctx->saved_data["alpha_per_head"].toBool());
    return {grad_q, grad_k, grad_v, grad_alpha};
  }
};

// The same closed form as one fused CPU kernel per (batch, head)
// (src/kernels/cpu/least_squares_kernel.h): CPU float32/float64.
class FusedIntentionFunction : public torch::autograd::Function<FusedIntentionFunction> {
 public:
  template <typename T>
  static kernels::cpu::LeastSquaresParams<T> params(const torch::Tensor& q, const torch::Tensor& k,
                                                    const torch::Tensor& v,
                                                    const torch::Tensor& alpha,
                                                    const torch::Tensor& factor,
                                                    const torch::Tensor& weights) {
    kernels::cpu::LeastSquaresParams<T> p;
    p.batch = q.size(0), p.heads = q.size(1), p.m = q.size(2), p.n = k.size(2);
    p.d = q.size(3), p.dv = v.size(3);
    p.q = heads_view<const T>(q), p.k = heads_view<const T>(k), p.v = heads_view<const T>(v);
    p.alpha = alpha.data_ptr<T>(), p.alpha_stride = alpha.dim() == 1 ? 1 : 0;
    p.factor = factor.data_ptr<T>(), p.weights = weights.data_ptr<T>();
    return p;
  }

  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q_in,
                               const torch::Tensor& k_in, const torch::Tensor& v_in,
                               const torch::Tensor& alpha_in) {
    const auto q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
    const auto alpha = alpha_in.contiguous();
    const int64_t B = q.size(0), H = q.size(1), d = q.size(3), dv = v.size(3);
    auto factor = cached_empty({B, H, d, d}, q.options());
    auto weights = cached_empty({B, H, d, dv}, q.options());
    auto out = cached_empty({B, H, q.size(2), dv}, q.options());
    kernels::cpu::FactorFailure failure;
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "intention_forward", [&] {
      failure = kernels::cpu::intention_forward(
          params<scalar_t>(q, k, v, alpha, factor, weights), heads_view<scalar_t>(out));
    });
    check_factorisation("intention", failure, q.scalar_type(), /*causal=*/false);
    ctx->save_for_backward({q, k, v, alpha, factor, weights});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto &q = s[0], &k = s[1], &v = s[2], &alpha = s[3];
    const auto grad_out = rows_contiguous(grads[0]);
    auto grad_q = cached_empty(q.sizes(), q.options());
    auto grad_k = cached_empty(k.sizes(), k.options());
    auto grad_v = cached_empty(v.sizes(), v.options());
    auto grad_alpha = cached_empty({q.size(0), q.size(1)}, q.options());
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "intention_backward", [&] {
      kernels::cpu::intention_backward(params<scalar_t>(q, k, v, alpha, s[4], s[5]),
                                       heads_view<const scalar_t>(grad_out),
                                       heads_view<scalar_t>(grad_q), heads_view<scalar_t>(grad_k),
                                       heads_view<scalar_t>(grad_v),
                                       grad_alpha.data_ptr<scalar_t>());
    });
    grad_alpha = sum_to_alpha_shape(grad_alpha, alpha.dim() == 1);
    return {grad_q, grad_k, grad_v, grad_alpha};
  }
};

// Inputs in the dtype the solves run in (float32 for half precision), padded keys zeroed.
struct SolveInputs {
  torch::Tensor q, k, v, alpha;
};

SolveInputs prepare(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                    const torch::Tensor& alpha, const AttentionFuncOptions& options) {
  const auto dtype = solve_dtype(q.scalar_type());
  const auto& mask = options.key_padding_mask();
  return {q.to(dtype), zero_padded_keys(k.to(dtype), mask), zero_padded_keys(v.to(dtype), mask),
          alpha.to(q.device(), dtype)};
}

// Non-causal intention: the fused kernel on the CPU, the LibTorch closed form elsewhere.
torch::Tensor global_intention(const SolveInputs& in) {
  if (cpu_kernel_dtypes({in.q, in.k, in.v, in.alpha}) && in.q.size(3) > 0) {
    return FusedIntentionFunction::apply(in.q, in.k, in.v, in.alpha);
  }
  return intention_composed(in.q, in.k, in.v, in.alpha);
}

// Q A^{-1}, A = K^T K + alpha I (global) or A_t (causal).
torch::Tensor ls_queries(const char* op, const SolveInputs& in,
                         const AttentionFuncOptions& options) {
  if (options.causal()) {
    return causal_least_squares_queries(op, in.q, in.k, in.alpha, chunk_length(options, in.q.size(-1)));
  }
  auto factor = cholesky_checked(op, "K^T K + alpha I", regularised_gram(in.k, in.alpha));
  return torch::cholesky_solve(in.q.transpose(-2, -1), factor).transpose(-2, -1);
}

}  // namespace

torch::Tensor detail::intention_composed(const torch::Tensor& q, const torch::Tensor& k,
                                         const torch::Tensor& v, const torch::Tensor& alpha) {
  return IntentionFunction::apply(q, k, v, alpha);
}

torch::Tensor intention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& alpha, const AttentionFuncOptions& options) {
  const auto dims = check_qkv("intention", q, k, v, options);
  check_alpha("intention", alpha, dims.heads);
  const auto in = prepare(q, k, v, alpha, options);
  auto out = options.causal() ? causal_intention_output("intention", in.q, in.k, in.v, in.alpha,
                                                        chunk_length(options, in.q.size(-1)))
                              : global_intention(in);
  return out.to(q.scalar_type());
}

torch::Tensor least_squares_queries(const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& alpha,
                                    const AttentionFuncOptions& options) {
  const auto dims = check_qkv("least_squares_queries", q, k, k, options);
  check_alpha("least_squares_queries", alpha, dims.heads);
  const auto in = prepare(q, k, k, alpha, options);
  return ls_queries("least_squares_queries", in, options).to(q.scalar_type());
}

torch::Tensor softmax_intention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& alpha,
                                const AttentionFuncOptions& options) {
  const auto dims = check_qkv("softmax_intention", q, k, v, options);
  check_alpha("softmax_intention", alpha, dims.heads);
  const auto in = prepare(q, k, v, alpha, options);
  auto qt = ls_queries("softmax_intention", in, options);
  return softmax_mix(qt, in.k, in.v, options).to(q.scalar_type());
}

}  // namespace functional
}  // namespace kvq
