#include "kvq/functional/intention.h"

#include "functional/checks.h"
#include "functional/least_squares.h"
#include "functional/softmax_mixer.h"

namespace kvq {
namespace functional {
namespace detail {

torch::Tensor cholesky_checked(const char* op, const char* what, const torch::Tensor& a) {
  if (!a.device().is_cpu()) return cholesky_or_nan(a);  // reading info would synchronise
  auto [factor, info] = torch::linalg_cholesky_ex(a);
  TORCH_CHECK(!info.ne(0).any().item<bool>(), op, ": ", what,
              " is not numerically positive definite in ", a.scalar_type(),
              "; increase alpha relative to the scale of the keys, or compute in float64");
  return factor;
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
    grad_alpha = ctx->saved_data["alpha_per_head"].toBool() ? grad_alpha.sum(0) : grad_alpha.sum();
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

torch::Tensor intention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& alpha, const AttentionFuncOptions& options) {
  const auto dims = check_qkv("intention", q, k, v, options);
  check_alpha("intention", alpha, dims.heads);
  const auto in = prepare(q, k, v, alpha, options);
  auto out = options.causal() ? causal_intention_output("intention", in.q, in.k, in.v, in.alpha,
                                                        chunk_length(options, in.q.size(-1)))
                              : IntentionFunction::apply(in.q, in.k, in.v, in.alpha);
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
