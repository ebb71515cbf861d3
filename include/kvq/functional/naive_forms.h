#pragma once
// The naive forms of the mechanisms: each written the way a user would write it with plain
// LibTorch ops and autograd (dense score matrices, per-token cumulative states, batched Cholesky /
// LU solves, no custom backward). Every registry row carries its forms (MechanismInfo::naive);
// `kvq bench` checks kvq against them and times them as the baseline of its speed ratio. They are
// not the test oracles (those are float64 and live in tests/).
//
// Layout as the library: q (B, H, T, d), k (B, H, T, d), v (B, H, T, dv), alpha (H) -> (B, H, T,
// dv).
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kvq {
namespace functional {

// Inputs of one naive call. Tensors the mechanism does not use stay undefined.
struct NaiveInputs {
  torch::Tensor q, k, v;
  torch::Tensor alpha;       // (H), ridge parameter of the intention family
  torch::Tensor pos_weight;  // (H, p), kv-pos
  torch::Tensor pos_bias;    // (H), kv-pos
  torch::Tensor pos_table;   // (T, T, p), kv-pos broadcast form: the fixed 2D table (a buffer)
  bool causal = false;
  double scale = 1.0;  // score scale of softmax and kernel mixers
  double eps = 1e-6;   // denominator guard of normalised linear attention
};

// Problem size, used to estimate the naive forms' memory.
struct NaiveShape {
  int64_t batch, heads, length, dim, value_dim, pos_channels;
  int64_t element_size;  // bytes per element
};

// A naive form of one mechanism.
struct NaiveForm {
  std::string label;  // short name shown in the benchmark table, e.g. "broadcast"
  std::function<torch::Tensor(const NaiveInputs&)> fn;
  // Estimated peak bytes of forward + autograd backward (live tensors that scale with the problem;
  // the inputs themselves are not counted). Used to skip forms that would exceed a budget.
  std::function<double(const NaiveShape&, bool causal)> peak_bytes;
  // Longest causal sequence the form is run at, 0 = no limit (for forms whose time grows faster
  // than their memory, e.g. the per-query prefix solves of causal kernel-intention).
  int64_t max_causal_length = 0;
  // Needs NaiveInputs::pos_table.
  bool needs_pos_table = false;
};

// The naive forms of each family of mechanisms, most literal first (a registry row lists them;
// the benchmark uses the first one that fits its memory budget).
// softmax and kv: dense (kv differs only in its inputs: the caller passes q = k).
std::vector<NaiveForm> naive_softmax_forms();
// kv-pos: the paper code's (B, H, T, T, p) broadcast, then the dense form with the score terms.
std::vector<NaiveForm> naive_kv_pos_forms();
// linear (normalised) and linear-identity: cumulative sums.
std::vector<NaiveForm> naive_linear_forms(bool normalised);
// intention, softmax-intention: Cholesky of the (cumulative) Grams.
std::vector<NaiveForm> naive_intention_forms();
std::vector<NaiveForm> naive_softmax_intention_forms();
// kernel-intention: dense LU solves (causal: one prefix solve per query, T <= 256).
std::vector<NaiveForm> naive_kernel_intention_forms();

// softmax / kv: S = (Q K^T) * scale [* gain + bias], masked_fill(future, -inf), softmax, times V.
// gain (H) and bias (H, T, T) are optional (the kv-pos bias form). kv passes q = k.
torch::Tensor naive_softmax_attention(const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& v, bool causal, double scale,
                                      const torch::Tensor& gain = {},
                                      const torch::Tensor& bias = {});

// kv-pos in the paper code's broadcast form: a per-head Linear(p, 1) applied to the score broadcast
// over the 2D table, S'_ij = sum_c w_c (S_ij + P_ijc) + b0, materialising (B, H, T, T, p).
// k (B, H, T, d), v (B, H, T, dv), pos_table (T, T, p), pos_weight (H, p), pos_bias (H).
torch::Tensor naive_kv_pos_broadcast(const torch::Tensor& k, const torch::Tensor& v,
                                     const torch::Tensor& pos_table,
                                     const torch::Tensor& pos_weight, const torch::Tensor& pos_bias,
                                     bool causal, double scale);

// linear (normalised, phi = elu + 1) and linear-identity (phi = id, no normaliser).
// Non-causal: phi(Q) (phi(K)^T V). Causal: S_t = cumsum_s phi(k_s) v_s^T as a (B, H, T, d, dv)
// tensor, o_t = phi(q_t)^T S_t (/ phi(q_t) . cumsum phi(k_s) + eps).
torch::Tensor naive_linear_attention(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, bool causal, bool normalised,
                                     double eps);

// Least-squares queries q~_t = A^{-1} q_t with A = K^T K + alpha I (non-causal: one Cholesky per
// head) or A_t = alpha I + cumsum_s k_s k_s^T (causal: (B, H, T, d, d) Grams, one batched
// Cholesky + cholesky_solve per token). Plain autograd through torch::linalg_cholesky.
// q, k (B, H, T, d), alpha (H) -> (B, H, T, d).
torch::Tensor naive_least_squares_queries(const torch::Tensor& q, const torch::Tensor& k,
                                          const torch::Tensor& alpha, bool causal);

// intention: non-causal Q (K^T K + alpha I)^{-1} K^T V via Cholesky + cholesky_solve;
// causal o_t = (A_t^{-1} q_t)^T cumsum_s k_s v_s^T with the cumulative Grams above.
torch::Tensor naive_intention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& alpha, bool causal);

// softmax-intention: the least-squares queries above, then (masked) softmax attention.
torch::Tensor naive_softmax_intention(const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& v, const torch::Tensor& alpha,
                                      bool causal, double scale);

// kernel-intention: kappa(Q, K) (kappa(K, K) + alpha I)^{-1} V, kappa(x, y) = exp(x . y scale),
// dense T x T kernel matrices and torch::linalg_solve (LU). Causal: one prefix solve per query,
// o_t = kappa(q_t, K_{<=t}) (kappa(K_{<=t}, K_{<=t}) + alpha I)^{-1} V_{<=t}, in a loop over t:
// O(T^4) time and O(T^3) autograd memory, so it is only run for short sequences.
torch::Tensor naive_kernel_intention(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, const torch::Tensor& alpha,
                                     bool causal, double scale);

}  // namespace functional
}  // namespace kvq
