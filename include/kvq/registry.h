#pragma once
// The single source of mechanisms: one row per mechanism holds its name, family, functional
// forms, decoding, naive form, FLOP formula, op schema and which attention options apply to it.
// Adding a mechanism is one functional file, one row in src/registry.cpp and one float64 oracle
// in tests/reference/oracle_table.cpp (docs/adding_a_mechanism.md); the oracle, gradient,
// invariant, Python-op and bench suites iterate over the rows, and a coverage test fails when a
// row lacks a piece.
#include <functional>
#include <string>
#include <vector>

#include "kvq/functional/decoding.h"
#include "kvq/functional/naive_forms.h"
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

// Every tensor a mechanism's public functional form may take (kvq/functional/*.h); the ones it
// does not take stay undefined. kv and kv-pos take no q (their queries are the keys), kv-pos takes
// pos_weight (H, p) or (p) and pos_bias (H) or (), the least-squares mechanisms alpha () or (H).
struct MechanismArgs {
  torch::Tensor q, k, v, alpha, pos_weight, pos_bias;
};
// The public functional form: the whole mechanism, projection terms included (kv passes q = k,
// kv-pos adds its 2D positional score terms), as a user calls it -> (B, H, m, dv).
using MechanismCallFn =
    std::function<torch::Tensor(const MechanismArgs& args, const functional::AttentionFuncOptions&)>;

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

// Decoding for a row without a state of its own: functional::cached_prefill / cached_step over
// the row's inner mechanism `fn` (the KV cache; each step runs fn for the new query over every
// cached key).
std::pair<MechanismPrefillFn, MechanismStepFn> cached_decoding(MechanismFn fn);

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

// Which attention options (kvq/modules/attention_options.h) apply to a mechanism besides the
// projection. A row names what it sets: MechanismTraits().alpha().chunked_causal().
struct MechanismTraits {
  bool uses_alpha = false;   // alpha_init, alpha_floor, learn_alpha: takes the ridge alpha > 0
  bool has_softmax = false;  // dropout (and the kv-pos projection): mixes with a row softmax
  bool chunked = false;      // chunk_size: its causal form is chunk-parallel

  MechanismTraits alpha() const { return with(&MechanismTraits::uses_alpha); }
  MechanismTraits softmax() const { return with(&MechanismTraits::has_softmax); }
  MechanismTraits chunked_causal() const { return with(&MechanismTraits::chunked); }

 private:
  MechanismTraits with(bool MechanismTraits::*flag) const {
    MechanismTraits out = *this;
    out.*flag = true;
    return out;
  }
};

struct MechanismInfo {
  std::string name;
  Projection projection;   // the projection this preset uses by default
  MechanismTraits traits;  // the attention options that apply to it
  MechanismFn fn;          // the inner mechanism MultiHeadKVQ calls
  MechanismCallFn call;   // the public functional form
  std::string summary;
  Family family;
  std::string op;         // its torch.ops.kvq schema, e.g. "kvq::softmax"
  FlopsFn forward_flops;  // src/registry.cpp gives each formula
  MechanismPrefillFn prefill;
  MechanismStepFn step;
  // Its plain-LibTorch forms, most literal first (kvq/functional/naive_forms.h): what `kvq bench`
  // checks it against and times it against. `kvq bench` refuses a row without one.
  std::vector<functional::NaiveForm> naive;
};

// All registered mechanisms, in a fixed order.
const std::vector<MechanismInfo>& mechanisms();
std::vector<std::string> mechanism_names();
// Throws c10::Error naming the valid names when `name` is unknown.
const MechanismInfo& find_mechanism(const std::string& name);

}  // namespace kvq
