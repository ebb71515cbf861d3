#include "functional/softmax/tiled_softmax.h"


#include <ATen/CPUGeneratorImpl.h>

#include <mutex>

#include "functional/kernel_views.h"
#include "kernels/cpu/softmax_attention_kernel.h"

namespace kvq {
namespace functional {
namespace detail {
namespace {

namespace cpu = kernels::cpu;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// bias as a (B, H, m, n) broadcast view (zero strides where it broadcasts); empty stays empty.
torch::Tensor expanded_bias(const torch::Tensor& bias, int64_t B, int64_t H, int64_t m,
                            int64_t n) {
  if (bias.numel() == 0) return bias;
  const int64_t want[4] = {B, H, m, n};
  bool fits = bias.dim() <= 4;
  for (int64_t i = 1; fits && i <= bias.dim(); ++i) {
    fits = bias.size(-i) == 1 || bias.size(-i) == want[4 - i];
  }
  TORCH_CHECK(fits, "softmax attention: score_bias must be broadcastable to (B, H, m, n) = (", B,
              ", ", H, ", ", m, ", ", n, "), got ", bias.sizes());
  auto b4 = bias;
  while (b4.dim() < 4) b4 = b4.unsqueeze(0);
  return b4.expand({B, H, m, n});
}

template <typename T>
cpu::SoftmaxAttentionParams<T> make_params(const torch::Tensor& q, const torch::Tensor& k,
                                           const torch::Tensor& v, const torch::Tensor& bias,
                                           const torch::Tensor& padding, double scale,
                                           bool causal, const TiledSoftmaxOptions& tiled) {
  cpu::SoftmaxAttentionParams<T> p;
  p.batch = q.size(0), p.heads = q.size(1), p.m = q.size(2), p.n = k.size(2);
  p.d = q.size(3), p.dv = v.size(3);
  p.q = heads_view<const T>(q);
  p.k = heads_view<const T>(k);
  p.v = heads_view<const T>(v);
  if (bias.numel() > 0) {
    p.bias = bias.data_ptr<T>();
    for (int i = 0; i < 4; ++i) p.bias_strides[i] = bias.stride(i);
  }
  if (padding.numel() > 0) {
    p.key_padding = padding.data_ptr<bool>();
    p.key_padding_batch_stride = padding.stride(0);
  }
  p.scale = static_cast<T>(scale);
  p.causal = causal;
  p.dropout = cpu::make_attention_dropout(tiled.dropout, tiled.dropout_seed, tiled.dropout_offset);
  if (tiled.query_block > 0) p.query_block = tiled.query_block;
  if (tiled.key_block > 0) p.key_block = tiled.key_block;
  return p;
}

class TiledSoftmaxFunction : public torch::autograd::Function<TiledSoftmaxFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q_in,
                               const torch::Tensor& k_in, const torch::Tensor& v_in,
                               const torch::Tensor& bias_in, const torch::Tensor& padding,
                               double scale, bool causal, const TiledSoftmaxOptions& tiled) {
    // Empty bias_in / padding: none.
    const auto q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
    const int64_t B = q.size(0), H = q.size(1), m = q.size(2), dv = v.size(3);
    const auto bias = expanded_bias(bias_in, B, H, m, k.size(2));
    auto out = cached_empty({B, H, m, dv}, q.options());
    auto lse = cached_empty({B, H, m}, q.options());
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "tiled_softmax_forward", [&] {
      cpu::SoftmaxAttentionForwardOutputs<scalar_t> o;
      o.out = heads_view<scalar_t>(out);
      o.lse = lse.data_ptr<scalar_t>();
      cpu::softmax_attention_forward(
          make_params<scalar_t>(q, k, v, bias, padding, scale, causal, tiled), o);
    });
    ctx->save_for_backward({q, k, v, bias_in, out, lse});
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["causal"] = causal;
    // The mask is not saved: the backward regenerates it from the seed and offset.
    ctx->saved_data["dropout"] = tiled.dropout;
    ctx->saved_data["dropout_seed"] = static_cast<int64_t>(tiled.dropout_seed);
    ctx->saved_data["dropout_offset"] = static_cast<int64_t>(tiled.dropout_offset);
    ctx->saved_data["query_block"] = tiled.query_block;
    ctx->saved_data["key_block"] = tiled.key_block;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[4], &lse = saved[5];
    const auto padding = ctx->saved_data["padding"].toTensor();
    const double scale = ctx->saved_data["scale"].toDouble();
    const bool causal = ctx->saved_data["causal"].toBool();
    TiledSoftmaxOptions tiled;
    tiled.dropout = ctx->saved_data["dropout"].toDouble();
    tiled.dropout_seed = static_cast<uint64_t>(ctx->saved_data["dropout_seed"].toInt());
    tiled.dropout_offset = static_cast<uint32_t>(ctx->saved_data["dropout_offset"].toInt());
    tiled.query_block = ctx->saved_data["query_block"].toInt();
    tiled.key_block = ctx->saved_data["key_block"].toInt();
    const auto grad_out = rows_contiguous(grads[0]);
    const int64_t B = q.size(0), H = q.size(1), m = q.size(2), n = k.size(2);
    const auto bias_sizes = saved[3].sizes();
    const auto bias = expanded_bias(saved[3], B, H, m, n);
    auto grad_q = cached_empty(q.sizes(), q.options());
    auto grad_k = cached_empty(k.sizes(), k.options());
    auto grad_v = cached_empty(v.sizes(), v.options());
    torch::Tensor grad_bias;
    const bool want_bias = bias.numel() > 0 && ctx->needs_input_grad(3);
    if (want_bias) {
      // dS summed over the bias's query / key dimension where it has size 1.
      const size_t dims = bias_sizes.size();
      const bool rows = dims >= 2 && bias_sizes[dims - 2] != 1;
      const bool cols = dims >= 1 && bias_sizes[dims - 1] != 1;
      grad_bias = cached_empty({B, H, rows ? m : 1, cols ? n : 1}, q.options());
    }
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "tiled_softmax_backward", [&] {
      cpu::SoftmaxAttentionBackwardParams<scalar_t> g;
      g.forward = make_params<scalar_t>(q, k, v, bias, padding, scale, causal, tiled);
      g.out = heads_view<const scalar_t>(out);
      g.grad_out = heads_view<const scalar_t>(grad_out);
      g.lse = lse.data_ptr<scalar_t>();
      g.grad_q = heads_view<scalar_t>(grad_q);
      g.grad_k = heads_view<scalar_t>(grad_k);
      g.grad_v = heads_view<scalar_t>(grad_v);
      if (want_bias) {
        g.grad_bias = grad_bias.data_ptr<scalar_t>();
        g.bias_rows = grad_bias.size(2);
        g.bias_cols = grad_bias.size(3);
      }
      cpu::softmax_attention_backward(g);
    });
    if (want_bias) grad_bias = grad_bias.sum_to_size(bias_sizes);
    return {grad_q,          grad_k,          grad_v,         grad_bias,
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// Seed and offset index the mask by 32-bit words: (j / 4, i, b * H + h, offset).
void check_dropout_sizes(const TiledSoftmaxOptions& tiled, int64_t B, int64_t H, int64_t m,
                         int64_t n) {
  TORCH_CHECK(tiled.dropout >= 0.0 && tiled.dropout < 1.0,
              "tiled softmax attention: dropout must be in [0, 1), got ", tiled.dropout);
  constexpr int64_t kWords = int64_t(1) << 32;
  TORCH_CHECK(tiled.dropout == 0.0 || (B * H < kWords && m < kWords && n / 4 < kWords),
              "tiled softmax attention: dropout needs B * H, m and n / 4 below 2^32, got B * H = ",
              B * H, ", m = ", m, ", n = ", n);
  TORCH_CHECK(tiled.query_block >= 0 && tiled.key_block >= 0,
              "tiled softmax attention: tile sizes must be positive (0 = default)");
}

}  // namespace

uint64_t draw_dropout_seed() {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get<at::CPUGeneratorImpl>()->random64();
}

torch::Tensor tiled_softmax_dropout_mask(int64_t B, int64_t H, int64_t m, int64_t n,
                                         const TiledSoftmaxOptions& tiled) {
  check_dropout_sizes(tiled, B, H, m, n);
  const auto dropout =
      cpu::make_attention_dropout(tiled.dropout, tiled.dropout_seed, tiled.dropout_offset);
  auto factors = torch::ones({B, H, m, n}, torch::kFloat64);
  if (!dropout.active()) return factors.to(torch::kBool);
  double* f = factors.data_ptr<double>();
  for (int64_t bh = 0; bh < B * H; ++bh) {
    for (int64_t i = 0; i < m; ++i) {
      cpu::dropout_factors(dropout, static_cast<uint32_t>(bh), static_cast<uint32_t>(i), 0, n,
                           f + (bh * m + i) * n);
    }
  }
  return factors.gt(0);
}

bool tiled_softmax_supports(const torch::Tensor& q, const torch::Tensor& k,
                            const torch::Tensor& v) {
  return cpu_kernel_dtypes({q, k, v});
}

torch::Tensor tiled_softmax_attention(const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& v, const torch::Tensor& bias,
                                      const torch::Tensor& key_padding_mask, double scale,
                                      bool causal, const TiledSoftmaxOptions& tiled) {
  TORCH_CHECK(tiled_softmax_supports(q, k, v),
              "tiled softmax attention: needs CPU float32 or float64 q, k, v of one dtype, got ",
              q.scalar_type(), " on ", q.device());
  TORCH_CHECK(!causal || q.size(2) == k.size(2), "tiled softmax attention: causal needs m == n");
  check_dropout_sizes(tiled, q.size(0), q.size(1), q.size(2), k.size(2));
  // Custom autograd functions take no undefined tensors here: "none" is an empty tensor.
  const auto padding = key_padding_mask.defined()
                           ? key_padding_mask.contiguous()
                           : torch::empty({0}, q.options().dtype(torch::kBool));
  const auto bias_arg = bias.defined() ? bias.to(q.scalar_type()) : torch::empty({0}, q.options());
  return TiledSoftmaxFunction::apply(q, k, v, bias_arg, padding, scale, causal, tiled);
}

}  // namespace detail
}  // namespace functional
}  // namespace kvq
