// The naive form of the linear family: per-token cumulative states (cumsum).
#include "kvq/functional/naive_forms.h"

#include "functional/naive_common.h"

namespace kvq {
namespace functional {

using torch::Tensor;
using namespace detail;

Tensor naive_linear_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                              bool normalised, double eps) {
  auto fq = normalised ? torch::elu(q) + 1 : q;
  auto fk = normalised ? torch::elu(k) + 1 : k;
  Tensor num, den;
  if (!causal) {
    num = torch::matmul(fq, torch::matmul(fk.transpose(-2, -1), v));
    if (normalised) den = torch::matmul(fq, fk.sum(-2).unsqueeze(-1));
  } else {
    auto states = torch::cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), 2);  // (B, H, T, d, dv)
    num = torch::matmul(fq.unsqueeze(-2), states).squeeze(-2);
    if (normalised) den = (fq * torch::cumsum(fk, 2)).sum(-1, /*keepdim=*/true);
  }
  return normalised ? num / (den + eps) : num;
}

std::vector<NaiveForm> naive_linear_forms(bool normalised) {
  return {{"cumsum",
           [normalised](const NaiveInputs& in) {
             return naive_linear_attention(in.q, in.k, in.v, in.causal, normalised, in.eps);
           },
           [](const NaiveShape& s, bool causal) {
             return causal ? 4.5 * token_state_bytes(s, s.value_dim) : 0.0;
           }}};
}

}  // namespace functional
}  // namespace kvq
