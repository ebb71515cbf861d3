#include "reference/mesa_oracle.h"

#include <vector>

namespace kvq_ref {

MesaReference mesa(const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in,
                   const torch::Tensor& g_in, const torch::Tensor& beta_in,
                   const torch::Tensor& lambda_in, const torch::Tensor& initial_kk,
                   const torch::Tensor& initial_kv, const torch::Tensor& key_padding_mask) {
  const auto f64 = [](const torch::Tensor& x) { return x.to(torch::kFloat64); };
  const auto q = f64(q_in), k = f64(k_in), v = f64(v_in), g = f64(g_in), beta = f64(beta_in);
  const auto lambda = f64(lambda_in);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3), dv = v.size(3);
  std::vector<torch::Tensor> outs, kks, kvs;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const auto lam = lambda.dim() == 0   ? lambda * torch::ones({d}, torch::kFloat64)
                       : lambda.dim() == 1 ? lambda[h] * torch::ones({d}, torch::kFloat64)
                                           : lambda[h];
      auto Skk =
          initial_kk.defined() ? f64(initial_kk)[b][h] : torch::zeros({d, d}, torch::kFloat64);
      auto Skv =
          initial_kv.defined() ? f64(initial_kv)[b][h] : torch::zeros({d, dv}, torch::kFloat64);
      std::vector<torch::Tensor> rows;
      for (int64_t t = 0; t < T; ++t) {
        const bool padded = key_padding_mask.defined() && key_padding_mask[b][t].item<bool>();
        if (!padded) {
          const auto decay = torch::exp(g[b][h][t]);
          const auto kt = k[b][h][t], vt = v[b][h][t];
          Skk = decay * Skk + beta[b][h][t] * torch::outer(kt, kt);
          Skv = decay * Skv + beta[b][h][t] * torch::outer(kt, vt);
        }
        const auto A = Skk + torch::diag(lam);
        const auto x = torch::linalg_solve(A, q[b][h][t].unsqueeze(1)).squeeze(1);
        rows.push_back(torch::matmul(Skv.t(), x));
      }
      outs.push_back(T > 0 ? torch::stack(rows) : torch::zeros({0, dv}, torch::kFloat64));
      kks.push_back(Skk);
      kvs.push_back(Skv);
    }
  }
  const auto bh = [&](const std::vector<torch::Tensor>& xs) {
    auto s = torch::stack(xs);
    std::vector<int64_t> shape{B, H};
    for (int64_t i = 1; i < s.dim(); ++i) shape.push_back(s.size(i));
    return s.reshape(shape);
  };
  return {bh(outs), bh(kks), bh(kvs)};
}

}  // namespace kvq_ref
