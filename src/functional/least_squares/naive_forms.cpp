// The naive forms of the least-squares family: batched Cholesky per token (causal) and dense
// kernel solves.
#include "kvq/functional/naive_forms.h"

#include "functional/naive_common.h"

namespace kvq {
namespace functional {

using torch::Tensor;
using namespace detail;

Tensor naive_least_squares_queries(const Tensor& q, const Tensor& k, const Tensor& alpha,
                                   bool causal) {
  const int64_t d = k.size(-1);
  auto eye = torch::eye(d, k.options());
  if (!causal) {
    auto gram = torch::matmul(k.transpose(-2, -1), k) + heads_view(alpha) * eye;  // (B, H, d, d)
    auto factor = torch::linalg_cholesky(gram);
    return torch::cholesky_solve(q.transpose(-2, -1), factor).transpose(-2, -1);
  }
  auto grams = torch::cumsum(k.unsqueeze(-1) * k.unsqueeze(-2), 2) +
               alpha.view({1, -1, 1, 1, 1}) * eye;  // (B, H, T, d, d)
  auto factors = torch::linalg_cholesky(grams);
  return torch::cholesky_solve(q.unsqueeze(-1), factors).squeeze(-1);
}

Tensor naive_intention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& alpha,
                       bool causal) {
  if (!causal) {
    const int64_t d = k.size(-1);
    auto gram =
        torch::matmul(k.transpose(-2, -1), k) + heads_view(alpha) * torch::eye(d, k.options());
    auto factor = torch::linalg_cholesky(gram);
    auto weights = torch::cholesky_solve(torch::matmul(k.transpose(-2, -1), v), factor);
    return torch::matmul(q, weights);
  }
  auto solved = naive_least_squares_queries(q, k, alpha, /*causal=*/true);  // (B, H, T, d)
  auto states = torch::cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), 2);        // (B, H, T, d, dv)
  return torch::matmul(solved.unsqueeze(-2), states).squeeze(-2);
}

Tensor naive_softmax_intention(const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& alpha, bool causal, double scale) {
  auto solved = naive_least_squares_queries(q, k, alpha, causal);
  return naive_softmax_attention(solved, k, v, causal, scale);
}

Tensor naive_kernel_intention(const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& alpha, bool causal, double scale) {
  auto kappa_kk = torch::exp(torch::matmul(k, k.transpose(-2, -1)) * scale);  // (B, H, T, T)
  auto kappa_qk = torch::exp(torch::matmul(q, k.transpose(-2, -1)) * scale);  // (B, H, T, T)
  const int64_t length = k.size(-2);
  if (!causal) {
    auto system = kappa_kk + heads_view(alpha) * torch::eye(length, k.options());
    return torch::matmul(kappa_qk, torch::linalg_solve(system, v));
  }
  std::vector<Tensor> rows;
  rows.reserve(length);
  for (int64_t t = 0; t < length; ++t) {
    const int64_t n = t + 1;
    auto system =
        kappa_kk.slice(-2, 0, n).slice(-1, 0, n) + heads_view(alpha) * torch::eye(n, k.options());
    auto coeffs = torch::linalg_solve(system, kappa_qk.select(-2, t).slice(-1, 0, n).unsqueeze(-1));
    rows.push_back(torch::matmul(coeffs.transpose(-2, -1), v.slice(-2, 0, n)));  // (B, H, 1, dv)
  }
  return torch::cat(rows, -2);
}

std::vector<NaiveForm> naive_intention_forms() {
  return {{"cholesky",
           [](const NaiveInputs& in) {
             return naive_intention(in.q, in.k, in.v, in.alpha, in.causal);
           },
           [](const NaiveShape& s, bool causal) {
             return causal ? 5 * token_state_bytes(s, s.dim) +
                                 1.5 * token_state_bytes(s, s.value_dim)
                           : 0.0;
           }}};
}

std::vector<NaiveForm> naive_softmax_intention_forms() {
  return {{"cholesky",
           [](const NaiveInputs& in) {
             return naive_softmax_intention(in.q, in.k, in.v, in.alpha, in.causal, in.scale);
           },
           [](const NaiveShape& s, bool causal) {
             return (causal ? 6 * token_state_bytes(s, s.dim) : 0.0) + 4 * score_bytes(s);
           }}};
}

std::vector<NaiveForm> naive_kernel_intention_forms() {
  NaiveForm form{"solve",
                 [](const NaiveInputs& in) {
                   return naive_kernel_intention(in.q, in.k, in.v, in.alpha, in.causal, in.scale);
                 },
                 [](const NaiveShape& s, bool causal) {
                   // Causal: every prefix system and its LU factor stay saved for backward.
                   const double prefixes = 2.5 / 3 * s.length * score_bytes(s);
                   return (causal ? prefixes : 0.0) + 8 * score_bytes(s);
                 }};
  form.max_causal_length = 256;
  return {form};
}

}  // namespace functional
}  // namespace kvq
