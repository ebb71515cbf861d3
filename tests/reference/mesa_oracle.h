#pragma once
// A slow, obvious float64 reference of the Mesa layer (von Oswald et al. 2025), written from the
// math of docs/mechanisms.md ("Mesa"), independently of src/: one (batch, head) pair and one token
// at a time, dense d x d states and a dense torch::linalg_solve per token. Autograd flows through
// it when the inputs are float64 leaves.
#include <torch/torch.h>

namespace kvq_ref {

struct MesaReference {
  torch::Tensor out;       // (B, H, T, dv)
  torch::Tensor final_kk;  // (B, H, d, d)
  torch::Tensor final_kv;  // (B, H, d, dv)
};

// S_kk,t = exp(g_t) S_kk,t-1 + beta_t k_t k_t^T, S_kv,t = exp(g_t) S_kv,t-1 + beta_t k_t v_t^T,
// o_t = S_kv,t^T (S_kk,t + diag(lambda_h))^{-1} q_t. A padded token (key_padding_mask true)
// leaves both states as they are; its output row uses them. q, k (B, H, T, d), v (B, H, T, dv),
// g, beta (B, H, T), lambda (), (H) or (H, d); initial_kk (B, H, d, d) / initial_kv (B, H, d, dv)
// undefined for zero states.
MesaReference mesa(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                   const torch::Tensor& g, const torch::Tensor& beta, const torch::Tensor& lambda,
                   const torch::Tensor& initial_kk = {}, const torch::Tensor& initial_kv = {},
                   const torch::Tensor& key_padding_mask = {});

}  // namespace kvq_ref
