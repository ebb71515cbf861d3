#include "functional/chunked_causal.h"

#include "functional/kernel_views.h"
#include "kernels/cpu/causal_linear_kernel.h"

namespace kvq {
namespace functional {
namespace detail {
namespace {

namespace cpu = kernels::cpu;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename T>
cpu::CausalLinearParams<T> linear_params(const torch::Tensor& q, const torch::Tensor& k,
                                         const torch::Tensor& v, const torch::Tensor& states,
                                         int64_t chunk) {
  cpu::CausalLinearParams<T> p;
  p.batch = q.size(0), p.heads = q.size(1), p.length = q.size(2), p.d = q.size(3);
  p.dv = v.size(3), p.chunk = chunk;
  p.q = heads_view<const T>(q);
  p.k = heads_view<const T>(k);
  p.v = heads_view<const T>(v);
  p.states = states.data_ptr<T>();
  return p;
}

// The fused CPU kernel with its analytic backward (the reverse chunk scan).
class CausalLinearFunction : public torch::autograd::Function<CausalLinearFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q_in,
                               const torch::Tensor& k_in, const torch::Tensor& v_in,
                               int64_t chunk) {
    const auto q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3), dv = v.size(3);
    auto out = cached_empty({B, H, T, dv}, q.options());
    auto states = cached_empty({B, H, (T + chunk - 1) / chunk, d, dv}, q.options());
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "causal_linear_forward", [&] {
      cpu::causal_linear_forward(linear_params<scalar_t>(q, k, v, states, chunk),
                                 heads_view<scalar_t>(out));
    });
    ctx->save_for_backward({q, k, v, states});
    ctx->saved_data["chunk"] = chunk;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &states = saved[3];
    const auto grad_out = rows_contiguous(grads[0]);
    auto grad_q = cached_empty(q.sizes(), q.options());
    auto grad_k = cached_empty(k.sizes(), k.options());
    auto grad_v = cached_empty(v.sizes(), v.options());
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "causal_linear_backward", [&] {
      cpu::causal_linear_backward(linear_params<scalar_t>(q, k, v, states, chunk),
                                  heads_view<const scalar_t>(grad_out),
                                  heads_view<scalar_t>(grad_q), heads_view<scalar_t>(grad_k),
                                  heads_view<scalar_t>(grad_v));
    });
    return {grad_q, grad_k, grad_v, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor split_chunks(const torch::Tensor& x, int64_t chunk) {
  const int64_t length = x.size(2);
  const int64_t num_chunks = (length + chunk - 1) / chunk;
  auto padded = x;
  if (num_chunks * chunk != length) {
    padded = torch::constant_pad_nd(x, {0, 0, 0, num_chunks * chunk - length});
  }
  return padded.view({x.size(0), x.size(1), num_chunks, chunk, x.size(3)});
}

torch::Tensor merge_chunks(const torch::Tensor& x, int64_t length) {
  auto flat = x.reshape({x.size(0), x.size(1), x.size(2) * x.size(3), x.size(4)});
  return flat.size(2) == length ? flat : flat.narrow(2, 0, length);
}

torch::Tensor exclusive_chunk_cumsum(const torch::Tensor& states) {
  return states.cumsum(2) - states;
}

torch::Tensor causal_linear_product(const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& v, int64_t chunk) {
  const int64_t length = q.size(2);
  chunk = std::max<int64_t>(1, std::min(chunk, length));
  if (cpu_kernel_dtypes({q, k, v}) && length > 0) {
    return CausalLinearFunction::apply(q, k, v, chunk);
  }
  auto qc = split_chunks(q, chunk);
  auto kc = split_chunks(k, chunk);
  auto vc = split_chunks(v, chunk);
  auto states = exclusive_chunk_cumsum(torch::matmul(kc.transpose(-2, -1), vc));
  auto within = torch::matmul(torch::matmul(qc, kc.transpose(-2, -1)).tril(), vc);
  return merge_chunks(torch::matmul(qc, states) + within, length);
}

}  // namespace detail
}  // namespace functional
}  // namespace kvq
