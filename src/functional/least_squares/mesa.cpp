// The Mesa layer: argument checks, tensors unpacked for the CPU kernel
// (src/kernels/cpu/mesa_kernel.h) and its analytic backward as an autograd function.
#include "kvq/functional/mesa.h"

#include <sstream>

#include "functional/kernel_views.h"
#include "functional/least_squares/least_squares.h"
#include "kernels/cpu/mesa_kernel.h"

namespace kvq {
namespace functional {
namespace {

namespace cpu = kernels::cpu;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kOp = "mesa";

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

// t has the given sizes; the error names the argument and its layout.
void check_shape(const char* name, const char* layout, const torch::Tensor& t,
                 std::initializer_list<int64_t> sizes) {
  TORCH_CHECK(t.defined(), kOp, ": ", name, " is undefined");
  TORCH_CHECK(t.sizes() == c10::IntArrayRef(sizes), kOp, ": ", name, " must have shape ", layout,
              " = ", c10::IntArrayRef(sizes), ", got ", shape_of(t));
}

void check_dtype_device(const char* name, const torch::Tensor& t, const torch::Tensor& q) {
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), kOp, ": ", name, " must have the dtype of q (",
              q.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), kOp, ": ", name,
              " must be on the CPU (mesa has a CPU kernel "
              "only), got ",
              t.device());
}

struct Checked {
  int64_t batch, heads, length, d, dv;
};

Checked check_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& g, const torch::Tensor& beta, const torch::Tensor& lambda,
                     const MesaOptions& options) {
  TORCH_CHECK(q.defined() && q.dim() == 4, kOp, ": q must have shape (B, H, T, d), got ",
              q.defined() ? shape_of(q) : std::string("undefined"));
  TORCH_CHECK(q.scalar_type() == torch::kFloat32 || q.scalar_type() == torch::kFloat64, kOp,
              ": q must be float32 or float64 (the exact solves are not run in half precision), "
              "got ",
              q.scalar_type());
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3);
  check_shape("k", "(B, H, T, d)", k, {B, H, T, d});
  TORCH_CHECK(v.defined() && v.dim() == 4 && v.size(0) == B && v.size(1) == H && v.size(2) == T,
              kOp, ": v must have shape (B, H, T, dv) with (B, H, T) = (", B, ", ", H, ", ", T,
              "), got ", v.defined() ? shape_of(v) : std::string("undefined"));
  const int64_t dv = v.size(3);
  TORCH_CHECK(d > 0 && dv > 0, kOp, ": head widths must be positive, got q ", shape_of(q), ", v ",
              shape_of(v));
  check_shape("g", "(B, H, T)", g, {B, H, T});
  check_shape("beta", "(B, H, T)", beta, {B, H, T});
  for (const auto& [name, t] : {std::pair<const char*, const torch::Tensor&>{"q", q},
                                {"k", k},
                                {"v", v},
                                {"g", g},
                                {"beta", beta}}) {
    check_dtype_device(name, t, q);
  }
  TORCH_CHECK(lambda.defined() && at::isFloatingType(lambda.scalar_type()), kOp,
              ": lambda must be a floating tensor");
  TORCH_CHECK(lambda.dim() == 0 || (lambda.dim() == 1 && lambda.size(0) == H) ||
                  (lambda.dim() == 2 && lambda.size(0) == H && lambda.size(1) == d),
              kOp, ": lambda must have shape (), (H) = (", H, ") or (H, d) = (", H, ", ", d,
              "), got ", shape_of(lambda));
  TORCH_CHECK(!lambda.device().is_meta() && (lambda > 0).all().item<bool>(), kOp,
              ": every entry of lambda must be > 0");
  TORCH_CHECK(options.initial_kk().defined() == options.initial_kv().defined(), kOp,
              ": give both initial states (S_kk and S_kv) or neither");
  if (options.initial_kk().defined()) {
    check_shape("initial S_kk", "(B, H, d, d)", options.initial_kk(), {B, H, d, d});
    check_shape("initial S_kv", "(B, H, d, dv)", options.initial_kv(), {B, H, d, dv});
    check_dtype_device("initial S_kk", options.initial_kk(), q);
    check_dtype_device("initial S_kv", options.initial_kv(), q);
  }
  const auto& mask = options.key_padding_mask();
  if (mask.defined()) {
    TORCH_CHECK(mask.scalar_type() == torch::kBool, kOp,
                ": key_padding_mask must be a bool tensor (true = padding), got dtype ",
                mask.scalar_type());
    check_shape("key_padding_mask", "(B, T)", mask, {B, T});
    TORCH_CHECK(mask.device().is_cpu(), kOp, ": key_padding_mask must be on the CPU");
  }
  TORCH_CHECK(options.chunk_size() >= 1, kOp, ": chunk_size must be >= 1, got ",
              options.chunk_size());
  return {B, H, T, d, dv};
}

int64_t num_chunks(int64_t length, int64_t chunk) { return (length + chunk - 1) / chunk; }

template <typename T>
cpu::MesaParams<T> kernel_params(const variable_list& in, const torch::Tensor& checkpoint_kk,
                                 const torch::Tensor& checkpoint_kv, int64_t chunk) {
  const auto &q = in[0], &k = in[1], &v = in[2], &g = in[3], &beta = in[4], &lambda = in[5];
  cpu::MesaParams<T> p;
  p.batch = q.size(0), p.heads = q.size(1), p.length = q.size(2), p.d = q.size(3);
  p.dv = v.size(3), p.chunk = chunk;
  p.q = detail::heads_view<const T>(q);
  p.k = detail::heads_view<const T>(k);
  p.v = detail::heads_view<const T>(v);
  p.g = g.data_ptr<T>(), p.beta = beta.data_ptr<T>(), p.lambda = lambda.data_ptr<T>();
  p.initial_kk = in[6].data_ptr<T>(), p.initial_kv = in[7].data_ptr<T>();
  p.checkpoint_kk = checkpoint_kk.data_ptr<T>(), p.checkpoint_kv = checkpoint_kv.data_ptr<T>();
  return p;
}

// Inputs: q, k, v, g, beta, lambda (H, d), initial S_kk (symmetric), initial S_kv; outputs: o,
// final S_kk, final S_kv.
class MesaFunction : public torch::autograd::Function<MesaFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& q_in,
                               const torch::Tensor& k_in, const torch::Tensor& v_in,
                               const torch::Tensor& g_in, const torch::Tensor& beta_in,
                               const torch::Tensor& lambda_in, const torch::Tensor& kk_in,
                               const torch::Tensor& kv_in, int64_t chunk) {
    const variable_list in{detail::rows_contiguous(q_in),
                           detail::rows_contiguous(k_in),
                           detail::rows_contiguous(v_in),
                           g_in.contiguous(),
                           beta_in.contiguous(),
                           lambda_in.contiguous(),
                           kk_in.contiguous(),
                           kv_in.contiguous()};
    const auto& q = in[0];
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3), dv = in[2].size(3),
                  N = num_chunks(T, chunk);
    const auto o = q.options();
    auto checkpoint_kk = detail::cached_empty({B, H, N, d, d}, o);
    auto checkpoint_kv = detail::cached_empty({B, H, N, d, dv}, o);
    auto out = detail::cached_empty({B, H, T, dv}, o);
    auto final_kk = detail::cached_empty({B, H, d, d}, o);
    auto final_kv = detail::cached_empty({B, H, d, dv}, o);
    cpu::FactorFailure failure;
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "mesa_forward", [&] {
      failure = cpu::mesa_forward(kernel_params<scalar_t>(in, checkpoint_kk, checkpoint_kv, chunk),
                                  detail::heads_view<scalar_t>(out), final_kk.data_ptr<scalar_t>(),
                                  final_kv.data_ptr<scalar_t>());
    });
    detail::check_factorisation(kOp, failure, q.scalar_type(), /*causal=*/true);
    ctx->save_for_backward(
        {in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], checkpoint_kk, checkpoint_kv});
    ctx->saved_data["chunk"] = chunk;
    return {out, final_kk, final_kv};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const variable_list in(s.begin(), s.begin() + 8);
    const auto &q = in[0], &k = in[1], &v = in[2];
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const auto grad_out =
        grads[0].defined()
            ? detail::rows_contiguous(grads[0])
            : torch::zeros({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options());
    const auto grad_kk = grads[1].defined() ? grads[1].contiguous() : torch::Tensor();
    const auto grad_kv = grads[2].defined() ? grads[2].contiguous() : torch::Tensor();
    const auto o = q.options();
    auto grad_q = detail::cached_empty(q.sizes(), o);
    auto grad_k = detail::cached_empty(k.sizes(), k.options());
    auto grad_v = detail::cached_empty(v.sizes(), v.options());
    auto grad_g = detail::cached_empty(in[3].sizes(), o);
    auto grad_beta = detail::cached_empty(in[4].sizes(), o);
    auto grad_lambda = detail::cached_empty({q.size(0), q.size(1), q.size(3)}, o);
    auto grad_initial_kk = detail::cached_empty(in[6].sizes(), o);
    auto grad_initial_kv = detail::cached_empty(in[7].sizes(), o);
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "mesa_backward", [&] {
      using T = scalar_t;
      cpu::mesa_backward(
          kernel_params<T>(in, s[8], s[9], chunk), detail::heads_view<const T>(grad_out),
          grad_kk.defined() ? grad_kk.data_ptr<T>() : nullptr,
          grad_kv.defined() ? grad_kv.data_ptr<T>() : nullptr, detail::heads_view<T>(grad_q),
          detail::heads_view<T>(grad_k), detail::heads_view<T>(grad_v), grad_g.data_ptr<T>(),
          grad_beta.data_ptr<T>(), grad_lambda.data_ptr<T>(), grad_initial_kk.data_ptr<T>(),
          grad_initial_kv.data_ptr<T>());
    });
    return {grad_q,          grad_k,          grad_v,         grad_g, grad_beta, grad_lambda.sum(0),
            grad_initial_kk, grad_initial_kv, torch::Tensor()};
  }
};

}  // namespace

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> mesa_with_final_state(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& g,
    const torch::Tensor& beta, const torch::Tensor& lambda, const MesaOptions& options) {
  const auto dims = check_inputs(q, k, v, g, beta, lambda, options);
  const int64_t H = dims.heads, d = dims.d;
  auto lam = lambda.to(q.scalar_type());
  lam = lam.dim() == 0   ? lam.expand({H, d})
        : lam.dim() == 1 ? lam.unsqueeze(1).expand({H, d})
                         : lam;
  auto g_run = g, beta_run = beta;
  if (options.key_padding_mask().defined()) {
    const auto padded = options.key_padding_mask().unsqueeze(1);  // (B, 1, T)
    g_run = g.masked_fill(padded, 0.0);
    beta_run = beta.masked_fill(padded, 0.0);
  }
  torch::Tensor kk, kv;
  if (options.initial_kk().defined()) {
    kk = 0.5 * (options.initial_kk() + options.initial_kk().transpose(-2, -1));
    kv = options.initial_kv();
  } else {
    kk = torch::zeros({dims.batch, H, d, d}, q.options());
    kv = torch::zeros({dims.batch, H, d, dims.dv}, q.options());
  }
  const int64_t chunk = std::max<int64_t>(1, std::min(options.chunk_size(), dims.length));
  auto r = MesaFunction::apply(q, k, v, g_run, beta_run, lam, kk, kv, chunk);
  return {r[0], r[1], r[2]};
}

torch::Tensor mesa(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                   const torch::Tensor& g, const torch::Tensor& beta, const torch::Tensor& lambda,
                   const MesaOptions& options) {
  return std::get<0>(mesa_with_final_state(q, k, v, g, beta, lambda, options));
}

}  // namespace functional
}  // namespace kvq
