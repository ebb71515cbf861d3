// The naive forms of the softmax family: dense scores, masked_fill, softmax, matmul.
#include "kvq/functional/naive_forms.h"

#include <limits>

#include "kvq/functional/positional_encoding_2d.h"
#include "functional/naive_common.h"

namespace kvq {
namespace functional {

using torch::Tensor;
using namespace detail;

Tensor naive_softmax_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                               double scale, const Tensor& gain, const Tensor& bias) {
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;
  if (gain.defined()) scores = scores * heads_view(gain);
  if (bias.defined()) scores = scores + bias;
  if (causal) {
    scores = scores.masked_fill(future_mask(q.size(-2), q.device()),
                                -std::numeric_limits<double>::infinity());
  }
  return torch::matmul(torch::softmax(scores, -1), v);
}

Tensor naive_kv_pos_broadcast(const Tensor& k, const Tensor& v, const Tensor& pos_table,
                              const Tensor& pos_weight, const Tensor& pos_bias, bool causal,
                              double scale) {
  const int64_t heads = k.size(1), channels = pos_table.size(-1);
  auto scores = torch::matmul(k, k.transpose(-2, -1)) * scale;  // (B, H, T, T)
  auto broadcast = scores.unsqueeze(-1) + pos_table;            // (B, H, T, T, p)
  auto mapped = torch::matmul(broadcast, pos_weight.view({1, heads, 1, channels, 1})).squeeze(-1) +
                heads_view(pos_bias);
  if (causal) {
    mapped = mapped.masked_fill(future_mask(k.size(-2), k.device()),
                                -std::numeric_limits<double>::infinity());
  }
  return torch::matmul(torch::softmax(mapped, -1), v);
}

std::vector<NaiveForm> naive_softmax_forms() {
  return {{"dense",
           [](const NaiveInputs& in) {
             return naive_softmax_attention(in.q, in.k, in.v, in.causal, in.scale);
           },
           [](const NaiveShape& s, bool) { return 4 * score_bytes(s); }}};
}

std::vector<NaiveForm> naive_kv_pos_forms() {
  std::vector<NaiveForm> forms = {
      {"broadcast",
       [](const NaiveInputs& in) {
         return naive_kv_pos_broadcast(in.k, in.v, in.pos_table, in.pos_weight, in.pos_bias,
                                       in.causal, in.scale);
       },
       [](const NaiveShape& s, bool) { return (2.0 * s.pos_channels + 2) * score_bytes(s); }},
      {"bias",
       [](const NaiveInputs& in) {
         auto terms =
             kv_pos_score_terms(in.pos_weight, in.pos_bias, in.k.size(-2), in.k.size(-2));
         return naive_softmax_attention(in.k, in.k, in.v, in.causal, in.scale, terms.first,
                                        terms.second);
       },
       [](const NaiveShape& s, bool) { return 5 * score_bytes(s); }},
  };
  forms.front().needs_pos_table = true;
  return forms;
}

}  // namespace functional
}  // namespace kvq
