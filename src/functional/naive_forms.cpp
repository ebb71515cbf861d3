#include "kvq/functional/naive_forms.h"

#include <limits>

#include "kvq/functional/positional_encoding_2d.h"

namespace kvq {
namespace functional {
namespace {

using torch::Tensor;

// (T, T) bool, true above the diagonal: the keys a causal query must not see.
Tensor future_mask(int64_t length, const torch::Device& device) {
  return torch::ones({length, length}, torch::TensorOptions().dtype(torch::kBool).device(device))
      .triu(1);
}

Tensor heads_view(const Tensor& per_head) { return per_head.view({1, -1, 1, 1}); }

// Peak-memory model of the naive forms, in bytes. The unit tensors are one score matrix per
// batch/head (B H T^2) and one d x d (or d x dv) matrix per batch/head/token (B H T d dv); the
// multiples count the tensors alive at the peak of forward + autograd backward (saved activations
// plus the largest backward temporaries), calibrated against the peak RSS of forward + backward
// at B = 4, H = 8, d = dv = 64, T = 128..1024 with LibTorch 1.13 on CPU (within -1% .. +30%).
double score_bytes(const NaiveShape& s) {
  return double(s.batch) * s.heads * s.length * s.length * s.element_size;
}
double token_state_bytes(const NaiveShape& s, int64_t cols) {
  return double(s.batch) * s.heads * s.length * s.dim * cols * s.element_size;
}

}  // namespace

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

std::vector<NaiveForm> naive_linear_forms(bool normalised) {
  return {{"cumsum",
           [normalised](const NaiveInputs& in) {
             return naive_linear_attention(in.q, in.k, in.v, in.causal, normalised, in.eps);
           },
           [](const NaiveShape& s, bool causal) {
             return causal ? 4.5 * token_state_bytes(s, s.value_dim) : 0.0;
           }}};
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
