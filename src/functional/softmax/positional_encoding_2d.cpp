#include "kvq/functional/positional_encoding_2d.h"

#include <algorithm>
#include <cmath>

namespace kvq {
namespace functional {
namespace {

// e(i) for positions 0..count-1: (count, ch) with interleaved sin/cos of i * f_k.
torch::Tensor sinusoid_table(int64_t count, int64_t ch, torch::TensorOptions options) {
  auto opts64 = options.dtype(torch::kFloat64);
  auto inv_freq = torch::pow(10000.0, -torch::arange(0, ch, 2, opts64) / static_cast<double>(ch));
  auto angles = torch::outer(torch::arange(count, opts64), inv_freq);  // (count, ch/2)
  return torch::stack({angles.sin(), angles.cos()}, -1).view({count, ch});
}

}  // namespace

torch::Tensor positional_encoding_2d(int64_t rows, int64_t cols, int64_t channels,
                                     torch::TensorOptions options) {
  TORCH_CHECK(rows >= 0 && cols >= 0, "positional_encoding_2d: rows and cols must be >= 0, got ",
              rows, " and ", cols);
  TORCH_CHECK(channels > 0, "positional_encoding_2d: channels must be positive, got ", channels);
  const int64_t ch = 2 * ((channels + 3) / 4);
  auto row_part = sinusoid_table(rows, ch, options).view({rows, 1, ch}).expand({rows, cols, ch});
  auto col_part = sinusoid_table(cols, ch, options).view({1, cols, ch}).expand({rows, cols, ch});
  return torch::cat({row_part, col_part}, -1).narrow(-1, 0, channels).to(options.dtype()).contiguous();
}

namespace {

// pos_weight split into the channels that multiply e(i) (query position) and e(j) (key
// position): P[i, j] = concat(e(i), e(j))[:p].
struct PosChannels {
  torch::Tensor w;  // (H or 1, p)
  int64_t ch, row_channels, col_channels;
};

PosChannels split_pos_weight(const char* op, const torch::Tensor& pos_weight) {
  TORCH_CHECK(pos_weight.dim() == 1 || pos_weight.dim() == 2, op,
              ": pos_weight must be (p) or (H, p), got ", pos_weight.sizes());
  const int64_t channels = pos_weight.size(-1);
  const int64_t ch = 2 * ((channels + 3) / 4);
  const int64_t row_channels = std::min(channels, ch);
  return {pos_weight.dim() == 1 ? pos_weight.unsqueeze(0) : pos_weight, ch, row_channels,
          channels - row_channels};
}

// sum_c w_c e_c(position) over `count` positions of the channels [first, first + channels):
// (H or 1, count).
torch::Tensor position_term(const PosChannels& pc, int64_t first, int64_t channels,
                            int64_t count) {
  const auto& w = pc.w;
  auto table = sinusoid_table(count, pc.ch, w.options()).to(w.scalar_type());
  return torch::matmul(w.narrow(1, first, channels), table.narrow(1, 0, channels).t());
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> kv_pos_score_terms(const torch::Tensor& pos_weight,
                                                           const torch::Tensor& pos_bias,
                                                           int64_t rows, int64_t cols) {
  // P is separable: P_ij . w = e(i) . w[:ch] + e(j) . w[ch:], so the (rows, cols, p) table is
  // never formed.
  const auto pc = split_pos_weight("kv_pos_score_terms", pos_weight);
  auto bias = position_term(pc, 0, pc.row_channels, rows).unsqueeze(-1) +
              pos_bias.reshape({-1, 1, 1});  // (H, rows, 1)
  if (pc.col_channels > 0) {
    bias = bias + position_term(pc, pc.row_channels, pc.col_channels, cols).unsqueeze(-2);
  } else {
    bias = bias.expand({-1, rows, cols});
  }
  bias = bias.contiguous();
  return {pos_weight.sum(-1), pos_weight.dim() == 1 ? bias.squeeze(0) : bias};
}

std::pair<torch::Tensor, torch::Tensor> kv_pos_key_terms(const torch::Tensor& pos_weight,
                                                         const torch::Tensor& pos_bias,
                                                         int64_t cols) {
  const auto pc = split_pos_weight("kv_pos_key_terms", pos_weight);
  auto bias = pos_bias.reshape({-1, 1, 1}).expand({pc.w.size(0), 1, cols});  // (H, 1, cols)
  if (pc.col_channels > 0) {
    bias = bias + position_term(pc, pc.row_channels, pc.col_channels, cols).unsqueeze(-2);
  }
  bias = bias.contiguous();
  return {pos_weight.sum(-1), pos_weight.dim() == 1 ? bias.squeeze(0) : bias};
}

AttentionFuncOptions with_kv_pos_terms(AttentionFuncOptions options,
                                       const torch::Tensor& pos_weight,
                                       const torch::Tensor& pos_bias, int64_t cols,
                                       torch::ScalarType dtype) {
  TORCH_CHECK(pos_weight.defined() && pos_bias.defined() &&
                  pos_weight.device() == pos_bias.device(),
              "kv-pos: pos_weight and pos_bias must be defined and on one device, got ",
              pos_weight.defined() ? pos_weight.device().str() : "undefined", " and ",
              pos_bias.defined() ? pos_bias.device().str() : "undefined");
  const auto terms = kv_pos_key_terms(pos_weight.to(dtype), pos_bias.to(dtype), cols);
  options.score_gain(terms.first).score_bias(terms.second);
  return options;
}

}  // namespace functional
}  // namespace kvq
