#pragma once
// Slow, obvious float64 references for every kvq mechanism, used only by the tests as oracles.
//
// Written straight from docs/mechanisms.md, independently of src/: one (batch, head) pair at a
// time, one query row at a time where the mechanism allows it, plain torch ops on small tensors.
// Nothing here calls into kvq. Every function converts its inputs to float64 (keeping autograd
// when the inputs already are float64 leaves) and returns a float64 tensor.
//
// Shapes as in kvq: q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv) -> (B, H, m, dv).
// key_padding_mask: undefined or (B, n) bool, true = that key is ignored.
// causal: query t sees keys s <= t (m == n).
// alpha: () or (H), > 0. scale <= 0 means the default 1/sqrt(d).
// A query row that sees no key at all outputs zeros (kvq's documented convention for softmax; for
// the other mechanisms it is what the formulas give for an empty key set).
#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace kvq_ref {

// Indices s of the keys query row t may see: not padded in batch element b, and s <= t if causal.
std::vector<int64_t> visible_keys(const torch::Tensor& key_padding_mask, int64_t b, int64_t t,
                                  int64_t n, bool causal);

// softmax(gain_h * Q K^T * scale + bias_h + mask) V, evaluated row by row over the visible keys.
// gain: undefined, () or (H); bias: undefined or broadcastable to (B, H, m, n) ((H, m, n) or
// (m, n) typically).
torch::Tensor softmax_attention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, bool causal,
                                const torch::Tensor& key_padding_mask, double scale = -1.0,
                                const torch::Tensor& gain = {}, const torch::Tensor& bias = {});

// Softmax over an explicit (B, H, m, n) score tensor, row by row over the visible keys, times V.
torch::Tensor masked_softmax_apply(const torch::Tensor& scores, const torch::Tensor& v, bool causal,
                                   const torch::Tensor& key_padding_mask);

// phi(x) = elu(x) + 1, written out: x + 1 for x > 0, exp(x) otherwise.
torch::Tensor elu_plus_one(const torch::Tensor& x);

// o_t = sum_s (phi(q_t).phi(k_s)) v_s / (sum_s phi(q_t).phi(k_s) + eps), s over visible keys.
torch::Tensor linear_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, bool causal,
                               const torch::Tensor& key_padding_mask, double eps = 1e-6);

// o_t = sum_s (q_t . k_s) v_s over visible keys.
torch::Tensor linear_identity_attention(const torch::Tensor& q, const torch::Tensor& k,
                                        const torch::Tensor& v, bool causal,
                                        const torch::Tensor& key_padding_mask);

// Intention. Non-causal: W = (K_vis^T K_vis + alpha I)^{-1} K_vis^T V_vis by one dense solve per
// (b, h), O = Q W. Causal: for every t a dense solve of A_t = alpha I + sum_{s<=t, vis} k_s k_s^T,
// o_t = q_t^T A_t^{-1} B_t with B_t = sum_{s<=t, vis} k_s v_s^T.
torch::Tensor intention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& alpha, bool causal,
                        const torch::Tensor& key_padding_mask);

// Non-causal intention by least squares on the augmented system
// [K_vis; sqrt(alpha) I] W = [V_vis; 0] (torch::linalg_lstsq), O = Q W.
torch::Tensor intention_lstsq(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& alpha,
                              const torch::Tensor& key_padding_mask);

// Row t: q~_t = A^{-1} q_t (A global, or A_t per token when causal), (B, H, m, d).
torch::Tensor least_squares_queries(const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& alpha, bool causal,
                                    const torch::Tensor& key_padding_mask);

// d<out, grad_out>/d alpha of causal intention (v defined, out (B, H, T, dv)) or of the causal
// least-squares queries (v undefined, out (B, H, T, d)), per token in long double (64-bit
// mantissa): -sum_t u_t . dq_t with u_t = A_t^{-1} q_t and dq_t = A_t^{-1} B_t g_t (intention) or
// A_t^{-1} g_t (queries). For small alpha this sum cancels (u_t is O(1/alpha) off the span of the
// keys): autograd through the float64 solves is then accurate only to ~cond(A_t) * 1e-16, and
// this reference is the one to compare with. Returns alpha's shape, () or (H).
torch::Tensor causal_least_squares_grad_alpha(const torch::Tensor& q, const torch::Tensor& k,
                                              const torch::Tensor& v, const torch::Tensor& alpha,
                                              const torch::Tensor& key_padding_mask,
                                              const torch::Tensor& grad_out);

// softmax(q~ K^T * scale + mask) V with q~ from least_squares_queries.
torch::Tensor softmax_intention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& alpha, bool causal,
                                const torch::Tensor& key_padding_mask, double scale = -1.0);

// Kernel ridge regression per query row t over its visible keys:
// o_t = kappa(q_t, K_vis) (kappa(K_vis, K_vis) + alpha I)^{-1} V_vis, kappa(x, y) = exp(x.y*scale).
torch::Tensor kernel_intention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& alpha, bool causal,
                               const torch::Tensor& key_padding_mask, double scale = -1.0);

// The 2D sinusoidal table of docs/mechanisms.md, element by element with std::sin / std::cos:
// ch = 2 ceil(p / 4), f_k = 10000^(-2k/ch), e(i) = [sin(i f_0), cos(i f_0), sin(i f_1), ...],
// P[i, j] = concat(e(i), e(j))[:p]. (rows, cols, p), float64.
torch::Tensor positional_encoding_2d(int64_t rows, int64_t cols, int64_t channels);

// kv-pos in the naive broadcast form: S = K K^T * scale (n, n); S3_ijc = S_ij + P_ijc (n, n, p);
// S'_ij = sum_c w_c S3_ijc + b0 (the Linear(p, 1), per head); masked softmax; times V.
// pos_weight (H, p) or (p), pos_bias (H) or ().
torch::Tensor kv_pos_attention(const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& pos_weight, const torch::Tensor& pos_bias,
                               bool causal, const torch::Tensor& key_padding_mask,
                               double scale = -1.0);

}  // namespace kvq_ref
