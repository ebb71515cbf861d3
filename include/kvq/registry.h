#pragma once
// The single source of mechanism names. Adding a mechanism is one functional op, one line in
// src/registry.cpp, and the registry-wide tests pick it up.
#include <functional>
#include <string>
#include <vector>

#include "kvq/functional/decoding.h"
#include "kvq/functional/options.h"

namespace kvq {

// How the layer makes q, k, v from its inputs (docs: "The grid").
enum class Projection {
  QKV,    // separate W_q, W_k, W_v
  KV,     // W_q tied to W_k (Borji): self-attention scores K K^T are symmetric
  KVPos,  // KV plus the 2D positional score term (Borji's asymmetric variant)
};

std::string projection_name(Projection projection);
// Parses "qkv", "kv" or "kv-pos"; anything else throws, listing the valid names.
Projection parse_projection(const std::string& name);

// The inner mechanism: q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv), alpha () or (H) (undefined
// when the mechanism has none) -> (B, H, m, dv). It never sees projections.
using MechanismFn = std::function<torch::Tensor(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& alpha, const functional::AttentionFuncOptions& options)>;

// Incremental causal decoding (kvq/functional/decoding.h), the inner mechanism's shapes and
// options: a prefill of n >= 0 tokens returns the batched causal output (B, H, n, dv) and the state
// after them; a step takes one token (q, k (B, H, 1, d), v (B, H, 1, dv)), advances the state and
// returns that token's row (B, H, 1, dv). Prefill + steps equal the batched causal forward.
using MechanismPrefillFn = std::function<std::pair<torch::Tensor, functional::DecodeState>(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& alpha, const functional::AttentionFuncOptions& options)>;
using MechanismStepFn = std::function<torch::Tensor(
    functional::DecodeState& state, const torch::Tensor& q, const torch::Tensor& k,
    const torch::Tensor& v, const torch::Tensor& alpha,
    const functional::AttentionFuncOptions& options)>;

// The column a mechanism belongs to in docs/mechanisms.md ("The grid").
enum class Family {
  Softmax,       // softmax mixer over Q K^T (softmax, kv, kv-pos)
  Linear,        // linear mixer, no solve (linear, linear-identity)
  LeastSquares,  // least-squares / kernel ridge query transform (the intention mechanisms)
};
std::string family_name(Family family);

// One problem of the benchmark and of the FLOP formulas: m = n = length.
struct ProblemSize {
  int64_t batch, heads, length, dim, value_dim;
};

// Analytic forward FLOPs as kvq computes the mechanism (a multiply-add is 2 FLOPs; elementwise
// work is not counted), all batch elements and heads; chunk = the causal chunk length C.
using FlopsFn = std::function<double(const ProblemSize& size, bool causal, int64_t chunk)>;

struct MechanismInfo {
  std::string name;
  Projection projection;  // the projection this preset uses by default
  bool uses_alpha;        // takes the ridge parameter alpha > 0
  bool has_softmax;       // mixes with a row softmax: dropout and score gain/bias apply
  MechanismFn fn;
  std::string summary;
  Family family;
  std::string op;         // its torch.ops.kvq schema, e.g. "kvq::softmax"
  FlopsFn forward_flops;  // src/registry.cpp gives each formula
  MechanismPrefillFn prefill;
  MechanismStepFn step;
};

// All registered mechanisms, in a fixed order.
const std::vector<MechanismInfo>& mechanisms();
std::vector<std::string> mechanism_names();
// Throws c10::Error naming the valid names when `name` is unknown.
const MechanismInfo& find_mechanism(const std::string& name);

}  // namespace kvq
