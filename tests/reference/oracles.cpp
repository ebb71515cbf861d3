#include "reference/oracles.h"

#include <cmath>

namespace kvq_ref {
namespace {

torch::Tensor f64(const torch::Tensor& x) { return x.to(torch::kFloat64); }

torch::Tensor index_tensor(const std::vector<int64_t>& ix) {
  return torch::tensor(c10::ArrayRef<int64_t>(ix), torch::TensorOptions().dtype(torch::kLong));
}

// alpha, gain, pos_bias: () shared by all heads, or (H).
torch::Tensor per_head(const torch::Tensor& x, int64_t h) { return x.dim() == 0 ? x : x[h]; }

double resolve_scale(double scale, int64_t d) {
  return scale > 0 ? scale : 1.0 / std::sqrt(static_cast<double>(d));
}

torch::Tensor eye(int64_t d) { return torch::eye(d, torch::kFloat64); }

// rows[b][h] is (m, dv) -> (B, H, m, dv).
torch::Tensor stack_bh(const std::vector<std::vector<torch::Tensor>>& rows) {
  std::vector<torch::Tensor> per_batch;
  for (const auto& heads : rows) per_batch.push_back(torch::stack(heads));
  return torch::stack(per_batch);
}

// The ridge system of the keys a row sees: alpha I + K_vis^T K_vis.
torch::Tensor ridge_gram(const torch::Tensor& k_vis, const torch::Tensor& alpha_h, int64_t d) {
  return alpha_h * eye(d) + torch::matmul(k_vis.t(), k_vis);
}

}  // namespace

std::vector<int64_t> visible_keys(const torch::Tensor& key_padding_mask, int64_t b, int64_t t,
                                  int64_t n, bool causal) {
  std::vector<int64_t> out;
  torch::Tensor mask;
  if (key_padding_mask.defined()) mask = key_padding_mask.to(torch::kBool).contiguous();
  for (int64_t s = 0; s < n; ++s) {
    if (causal && s > t) continue;
    if (mask.defined() && mask.accessor<bool, 2>()[b][s]) continue;
    out.push_back(s);
  }
  return out;
}

torch::Tensor masked_softmax_apply(const torch::Tensor& scores_in, const torch::Tensor& v_in,
                                   bool causal, const torch::Tensor& key_padding_mask) {
  const auto scores = f64(scores_in);
  const auto v = f64(v_in);
  const int64_t B = scores.size(0), H = scores.size(1), m = scores.size(2), n = scores.size(3);
  const int64_t dv = v.size(3);
  std::vector<std::vector<torch::Tensor>> out(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const auto S = scores[b][h];
      const auto V = v[b][h];
      std::vector<torch::Tensor> rows;
      for (int64_t t = 0; t < m; ++t) {
        const auto vis = visible_keys(key_padding_mask, b, t, n, causal);
        if (vis.empty()) {
          rows.push_back(torch::zeros({dv}, torch::kFloat64));
          continue;
        }
        const auto ix = index_tensor(vis);
        const auto s = S[t].index_select(0, ix);
        auto w = torch::exp(s - s.max());
        w = w / w.sum();
        rows.push_back(torch::matmul(w, V.index_select(0, ix)));
      }
      out[b].push_back(torch::stack(rows));
    }
  }
  return stack_bh(out);
}

torch::Tensor softmax_attention(const torch::Tensor& q_in, const torch::Tensor& k_in,
                                const torch::Tensor& v, bool causal,
                                const torch::Tensor& key_padding_mask, double scale,
                                const torch::Tensor& gain, const torch::Tensor& bias) {
  const auto q = f64(q_in);
  const auto k = f64(k_in);
  const int64_t B = q.size(0), H = q.size(1), m = q.size(2), d = q.size(3), n = k.size(2);
  const double sc = resolve_scale(scale, d);
  const auto bias_full = bias.defined() ? f64(bias).expand({B, H, m, n}) : torch::Tensor();
  std::vector<std::vector<torch::Tensor>> scores(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      auto S = torch::matmul(q[b][h], k[b][h].t()) * sc;
      if (gain.defined()) S = S * per_head(f64(gain), h);
      if (bias.defined()) S = S + bias_full[b][h];
      scores[b].push_back(S);
    }
  }
  return masked_softmax_apply(stack_bh(scores), v, causal, key_padding_mask);
}

torch::Tensor elu_plus_one(const torch::Tensor& x) {
  return torch::where(x > 0, x + 1.0, torch::exp(x));
}

torch::Tensor linear_attention(const torch::Tensor& q_in, const torch::Tensor& k_in,
                               const torch::Tensor& v_in, bool causal,
                               const torch::Tensor& key_padding_mask, double eps) {
  const auto q = f64(q_in);
  const auto k = f64(k_in);
  const auto v = f64(v_in);
  const int64_t B = q.size(0), H = q.size(1), m = q.size(2), n = k.size(2), dv = v.size(3);
  std::vector<std::vector<torch::Tensor>> out(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const auto phi_q = elu_plus_one(q[b][h]);
      const auto phi_k = elu_plus_one(k[b][h]);
      const auto V = v[b][h];
      std::vector<torch::Tensor> rows;
      for (int64_t t = 0; t < m; ++t) {
        const auto vis = visible_keys(key_padding_mask, b, t, n, causal);
        if (vis.empty()) {
          rows.push_back(torch::zeros({dv}, torch::kFloat64));
          continue;
        }
        const auto ix = index_tensor(vis);
        const auto a = torch::matmul(phi_k.index_select(0, ix), phi_q[t]);  // (n_vis)
        const auto num = torch::matmul(a, V.index_select(0, ix));           // (dv)
        rows.push_back(num / (a.sum() + eps));
      }
      out[b].push_back(torch::stack(rows));
    }
  }
  return stack_bh(out);
}

torch::Tensor linear_identity_attention(const torch::Tensor& q_in, const torch::Tensor& k_in,
                                        const torch::Tensor& v_in, bool causal,
                                        const torch::Tensor& key_padding_mask) {
  const auto q = f64(q_in);
  const auto k = f64(k_in);
  const auto v = f64(v_in);
  const int64_t B = q.size(0), H = q.size(1), m = q.size(2), n = k.size(2), dv = v.size(3);
  std::vector<std::vector<torch::Tensor>> out(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      std::vector<torch::Tensor> rows;
      for (int64_t t = 0; t < m; ++t) {
        const auto vis = visible_keys(key_padding_mask, b, t, n, causal);
        if (vis.empty()) {
          rows.push_back(torch::zeros({dv}, torch::kFloat64));
          continue;
        }
        const auto ix = index_tensor(vis);
        const auto a = torch::matmul(k[b][h].index_select(0, ix), q[b][h][t]);
        rows.push_back(torch::matmul(a, v[b][h].index_select(0, ix)));
      }
      out[b].push_back(torch::stack(rows));
    }
  }
  return stack_bh(out);
}

torch::Tensor intention(const torch::Tensor& q_in, const torch::Tensor& k_in,
                        const torch::Tensor& v_in, const torch::Tensor& alpha_in, bool causal,
                        const torch::Tensor& key_padding_mask) {
  const auto q = f64(q_in);
  const auto k = f64(k_in);
  const auto v = f64(v_in);
  const auto alpha = f64(alpha_in);
  const int64_t B = q.size(0), H = q.size(1), m = q.size(2), d = q.size(3), n = k.size(2);
  std::vector<std::vector<torch::Tensor>> out(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const auto K = k[b][h];
      const auto V = v[b][h];
      const auto a_h = per_head(alpha, h);
      if (!causal) {
        const auto ix = index_tensor(visible_keys(key_padding_mask, b, 0, n, false));
        const auto Kv = K.index_select(0, ix);
        const auto Vv = V.index_select(0, ix);
        const auto W = torch::linalg_solve(ridge_gram(Kv, a_h, d), torch::matmul(Kv.t(), Vv));
        out[b].push_back(torch::matmul(q[b][h], W));
        continue;
      }
      std::vector<torch::Tensor> rows;
      for (int64_t t = 0; t < m; ++t) {
        const auto ix = index_tensor(visible_keys(key_padding_mask, b, t, n, true));
        const auto Kv = K.index_select(0, ix);
        const auto Vv = V.index_select(0, ix);
        const auto A_t = ridge_gram(Kv, a_h, d);
        const auto B_t = torch::matmul(Kv.t(), Vv);
        rows.push_back(torch::matmul(q[b][h][t], torch::linalg_solve(A_t, B_t)));
      }
      out[b].push_back(torch::stack(rows));
    }
  }
  return stack_bh(out);
}

torch::Tensor intention_lstsq(const torch::Tensor& q_in, const torch::Tensor& k_in,
                              const torch::Tensor& v_in, const torch::Tensor& alpha_in,
                              const torch::Tensor& key_padding_mask) {
  const auto q = f64(q_in);
  const auto k = f64(k_in);
  const auto v = f64(v_in);
  const auto alpha = f64(alpha_in);
  const int64_t B = q.size(0), H = q.size(1), d = q.size(3), n = k.size(2), dv = v.size(3);
  std::vector<std::vector<torch::Tensor>> out(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const auto ix = index_tensor(visible_keys(key_padding_mask, b, 0, n, false));
      const auto Kv = k[b][h].index_select(0, ix);
      const auto Vv = v[b][h].index_select(0, ix);
      // min |K W - V|^2 + alpha |W|^2  ==  min |[K; sqrt(alpha) I] W - [V; 0]|^2
      const auto lhs = torch::cat({Kv, torch::sqrt(per_head(alpha, h)) * eye(d)}, 0);
      const auto rhs = torch::cat({Vv, torch::zeros({d, dv}, torch::kFloat64)}, 0);
      const auto W = std::get<0>(torch::linalg_lstsq(lhs, rhs, c10::nullopt, "gelsd"));
      out[b].push_back(torch::matmul(q[b][h], W));
    }
  }
  return stack_bh(out);
}

torch::Tensor least_squares_queries(const torch::Tensor& q_in, const torch::Tensor& k_in,
                                    const torch::Tensor& alpha_in, bool causal,
                                    const torch::Tensor& key_padding_mask) {
  const auto q = f64(q_in);
  const auto k = f64(k_in);
  const auto alpha = f64(alpha_in);
  const int64_t B = q.size(0), H = q.size(1), m = q.size(2), d = q.size(3), n = k.size(2);
  std::vector<std::vector<torch::Tensor>> out(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      std::vector<torch::Tensor> rows;
      for (int64_t t = 0; t < m; ++t) {
        const auto ix = index_tensor(visible_keys(key_padding_mask, b, t, n, causal));
        const auto A = ridge_gram(k[b][h].index_select(0, ix), per_head(alpha, h), d);
        rows.push_back(torch::linalg_solve(A, q[b][h][t].unsqueeze(1)).squeeze(1));
      }
      out[b].push_back(torch::stack(rows));
    }
  }
  return stack_bh(out);
}

namespace {

using Extended = long double;
using ExtendedMatrix = std::vector<std::vector<Extended>>;

// x = A^{-1} b for the symmetric positive definite A, by Cholesky in long double.
std::vector<Extended> extended_spd_solve(const ExtendedMatrix& A, std::vector<Extended> b) {
  const size_t d = b.size();
  ExtendedMatrix L(d, std::vector<Extended>(d, 0));
  for (size_t j = 0; j < d; ++j) {
    Extended diag = A[j][j];
    for (size_t p = 0; p < j; ++p) diag -= L[j][p] * L[j][p];
    L[j][j] = std::sqrt(diag);
    for (size_t i = j + 1; i < d; ++i) {
      Extended x = A[i][j];
      for (size_t p = 0; p < j; ++p) x -= L[i][p] * L[j][p];
      L[i][j] = x / L[j][j];
    }
  }
  for (size_t i = 0; i < d; ++i) {  // L y = b
    for (size_t p = 0; p < i; ++p) b[i] -= L[i][p] * b[p];
    b[i] /= L[i][i];
  }
  for (size_t i = d; i-- > 0;) {  // L^T x = y
    for (size_t p = i + 1; p < d; ++p) b[i] -= L[p][i] * b[p];
    b[i] /= L[i][i];
  }
  return b;
}

}  // namespace

torch::Tensor causal_least_squares_grad_alpha(const torch::Tensor& q_in, const torch::Tensor& k_in,
                                              const torch::Tensor& v_in,
                                              const torch::Tensor& alpha_in,
                                              const torch::Tensor& key_padding_mask,
                                              const torch::Tensor& grad_in) {
  const auto q = f64(q_in).contiguous(), k = f64(k_in).contiguous(), g = f64(grad_in).contiguous();
  const auto v = v_in.defined() ? f64(v_in).contiguous() : v_in;
  const auto alpha = f64(alpha_in);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3);
  const int64_t dv = v.defined() ? v.size(3) : 0, gw = g.size(3);
  auto grad = torch::zeros({H}, torch::kFloat64);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const double* Q = q[b][h].data_ptr<double>();
      const double* K = k[b][h].data_ptr<double>();
      const double* V = v.defined() ? v[b][h].data_ptr<double>() : nullptr;
      const double* G = g[b][h].data_ptr<double>();
      ExtendedMatrix A(d, std::vector<Extended>(d, 0)), Bt(d, std::vector<Extended>(dv, 0));
      for (int64_t i = 0; i < d; ++i) A[i][i] = per_head(alpha, h).item<double>();
      Extended sum = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (!key_padding_mask.defined() || !key_padding_mask[b][t].item<bool>()) {
          for (int64_t i = 0; i < d; ++i) {
            for (int64_t j = 0; j < d; ++j) A[i][j] += Extended(K[t * d + i]) * K[t * d + j];
            for (int64_t j = 0; j < dv; ++j) Bt[i][j] += Extended(K[t * d + i]) * V[t * dv + j];
          }
        }
        std::vector<Extended> qt(Q + t * d, Q + (t + 1) * d), x(d, 0);
        for (int64_t i = 0; i < d; ++i) {
          if (dv == 0) x[i] = G[t * gw + i];
          for (int64_t j = 0; j < dv; ++j) x[i] += Bt[i][j] * G[t * gw + j];
        }
        const auto u = extended_spd_solve(A, qt), dq = extended_spd_solve(A, x);
        for (int64_t i = 0; i < d; ++i) sum -= u[i] * dq[i];
      }
      grad[h] += double(sum);
    }
  }
  return alpha.dim() == 1 ? grad : grad.sum();
}

torch::Tensor softmax_intention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& alpha, bool causal,
                                const torch::Tensor& key_padding_mask, double scale) {
  const auto q_tilde = least_squares_queries(q, k, alpha, causal, key_padding_mask);
  return softmax_attention(q_tilde, k, v, causal, key_padding_mask,
                           resolve_scale(scale, q.size(3)));
}

torch::Tensor kernel_intention(const torch::Tensor& q_in, const torch::Tensor& k_in,
                               const torch::Tensor& v_in, const torch::Tensor& alpha_in,
                               bool causal, const torch::Tensor& key_padding_mask, double scale) {
  const auto q = f64(q_in);
  const auto k = f64(k_in);
  const auto v = f64(v_in);
  const auto alpha = f64(alpha_in);
  const int64_t B = q.size(0), H = q.size(1), m = q.size(2), d = q.size(3), n = k.size(2);
  const int64_t dv = v.size(3);
  const double sc = resolve_scale(scale, d);
  std::vector<std::vector<torch::Tensor>> out(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      std::vector<torch::Tensor> rows;
      for (int64_t t = 0; t < m; ++t) {
        const auto vis = visible_keys(key_padding_mask, b, t, n, causal);
        if (vis.empty()) {
          rows.push_back(torch::zeros({dv}, torch::kFloat64));
          continue;
        }
        const auto ix = index_tensor(vis);
        const auto Kv = k[b][h].index_select(0, ix);
        const auto Vv = v[b][h].index_select(0, ix);
        const auto gram = torch::exp(torch::matmul(Kv, Kv.t()) * sc) +
                          per_head(alpha, h) * eye(static_cast<int64_t>(vis.size()));
        const auto kq = torch::exp(torch::matmul(Kv, q[b][h][t]) * sc);  // (n_vis)
        rows.push_back(torch::matmul(kq, torch::linalg_solve(gram, Vv)));
      }
      out[b].push_back(torch::stack(rows));
    }
  }
  return stack_bh(out);
}

torch::Tensor positional_encoding_2d(int64_t rows, int64_t cols, int64_t channels) {
  const int64_t ch = 2 * static_cast<int64_t>(std::ceil(static_cast<double>(channels) / 4.0));
  auto e = [ch](int64_t pos) {
    std::vector<double> out(ch);
    for (int64_t k = 0; k < ch / 2; ++k) {
      const double f = std::pow(10000.0, -2.0 * static_cast<double>(k) / static_cast<double>(ch));
      out[2 * k] = std::sin(static_cast<double>(pos) * f);
      out[2 * k + 1] = std::cos(static_cast<double>(pos) * f);
    }
    return out;
  };
  auto table = torch::zeros({rows, cols, channels}, torch::kFloat64);
  auto acc = table.accessor<double, 3>();
  for (int64_t i = 0; i < rows; ++i) {
    const auto ei = e(i);
    for (int64_t j = 0; j < cols; ++j) {
      const auto ej = e(j);
      for (int64_t c = 0; c < channels; ++c) acc[i][j][c] = c < ch ? ei[c] : ej[c - ch];
    }
  }
  return table;
}

torch::Tensor kv_pos_attention(const torch::Tensor& k_in, const torch::Tensor& v,
                               const torch::Tensor& pos_weight_in, const torch::Tensor& pos_bias_in,
                               bool causal, const torch::Tensor& key_padding_mask, double scale) {
  const auto k = f64(k_in);
  const auto pos_weight = f64(pos_weight_in);
  const auto pos_bias = f64(pos_bias_in);
  const int64_t B = k.size(0), H = k.size(1), n = k.size(2), d = k.size(3);
  const int64_t p = pos_weight.size(-1);
  const double sc = resolve_scale(scale, d);
  const auto P = positional_encoding_2d(n, n, p);  // (n, n, p)
  std::vector<std::vector<torch::Tensor>> scores(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const auto S = torch::matmul(k[b][h], k[b][h].t()) * sc;  // (n, n), symmetric
      const auto broadcast = S.unsqueeze(-1) + P;               // (n, n, p)
      const auto w = pos_weight.dim() == 2 ? pos_weight[h] : pos_weight;
      scores[b].push_back((broadcast * w).sum(-1) + per_head(pos_bias, h));  // Linear(p, 1)
    }
  }
  return masked_softmax_apply(stack_bh(scores), v, causal, key_padding_mask);
}

}  // namespace kvq_ref
