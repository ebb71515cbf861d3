// Incremental decoding (kvq/functional/decoding.h) for every registered mechanism: a prefill of a
// prefix plus one step per token equals the batched causal forward in float64, with padded prefix
// keys and per-head alpha, across the buffers' growth; a state of the wrong kind or size is refused
// with a message that names it.
#include "test_utils.h"

namespace kvq_test {
namespace {

using kvq::MechanismInfo;
using kvq::Projection;

struct Decoded {
  torch::Tensor batched, decoded;  // (B, H, T, dv) each
};

// The batched causal forward of all T tokens, and a prefill of the first `prefix` tokens plus one
// step per later token. The inner mechanism's inputs as MultiHeadKVQ gives them: q = k for kv and
// kv-pos, whose options carry the score terms of the key positions 0 .. cols - 1.

Decoded run_both(const MechanismInfo& info, const Inputs& in, int64_t prefix,
                 const torch::Tensor& mask, int64_t chunk) {
  const bool tied = info.projection != Projection::QKV;
  const auto& q = tied ? in.k : in.q;
  const int64_t T = in.k.size(2);
  auto options = make_options(true, mask, chunk);
  torch::Tensor gain, key_bias;  // kv-pos: (H), (H, 1, T)
  if (info.projection == Projection::KVPos) {
    std::tie(gain, key_bias) = F::kv_pos_key_terms(in.pos_weight, in.pos_bias, T);
  }
  auto with_keys = [&](F::AttentionFuncOptions o, int64_t cols) {
    if (gain.defined()) o.score_gain(gain).score_bias(key_bias.narrow(-1, 0, cols));
    return o;
  };
  const auto alpha = info.traits.uses_alpha ? in.alpha : torch::Tensor();
  Decoded out;
  out.batched = info.fn(q, in.k, in.v, alpha, with_keys(options, T));

  auto rows = [](const torch::Tensor& x, int64_t first, int64_t count) {
    return x.narrow(2, first, count);
  };
  auto prefill_options = with_keys(
      make_options(true, mask.defined() ? mask.narrow(1, 0, prefix) : torch::Tensor(), chunk),
      prefix);
  torch::NoGradGuard no_grad;
  auto [head, state] = info.prefill(rows(q, 0, prefix), rows(in.k, 0, prefix),
                                    rows(in.v, 0, prefix), alpha, prefill_options);
  std::vector<torch::Tensor> parts = {head};
  for (int64_t t = prefix; t < T; ++t) {
    parts.push_back(info.step(state, rows(q, t, 1), rows(in.k, t, 1), rows(in.v, t, 1), alpha,
                              with_keys(make_options(false, {}, chunk), t + 1)));
    EXPECT_EQ(state.length, t + 1);
  }
  out.decoded = torch::cat(parts, 2);
  return out;
}

// Padding only among the first `prefix` keys (stepped tokens are never padding).
torch::Tensor prefix_mask(int64_t B, int64_t T, int64_t prefix) {
  auto mask = make_mask(MaskKind::Scattered, B, T);
  mask.narrow(1, prefix, T - prefix).fill_(false);
  return mask;
}

// Each row's own decoding, and the generic KV-cache decoding (kvq::cached_decoding) over its inner
// mechanism, which a row without a state of its own uses.
TEST(Decoding, PrefillPlusStepsEqualTheBatchedCausalForwardForEveryMechanism) {
  for (const auto& own : kvq::mechanisms()) {
    const MechanismInfo cached = [&] {
      MechanismInfo row = own;
      std::tie(row.prefill, row.step) = kvq::cached_decoding(own.fn);
      return row;
    }();
    for (const auto* info : {&own, &cached}) {
      // Prefixes: empty, one token, part of the sequence; T = 37 crosses the buffers' first
      // growth (16 and 32 rows).
      for (int64_t prefix : {0, 1, 6}) {
        for (bool padded : {false, true}) {
          if (padded && prefix < 4) continue;
          Case c;
          c.B = 2, c.H = 3, c.m = c.n = 37, c.d = 5, c.dv = 4, c.alpha_per_head = true;
          const auto in = make_inputs(c, 100 + prefix);
          const auto mask = padded ? prefix_mask(c.B, c.n, prefix) : torch::Tensor();
          const auto out = run_both(*info, in, prefix, mask, /*chunk=*/4);
          const double err = max_rel_err(out.decoded, out.batched);
          const std::string label = info->name + (info == &cached ? " (cached)" : "") +
                                    " prefix=" + std::to_string(prefix) +
                                    (padded ? " +mask" : "");
          report("decoding " + label, "relerr", err);
          EXPECT_EQ(out.decoded.sizes(), out.batched.sizes()) << label;
          EXPECT_LE(err, kTolSolve64) << label;
        }
      }
    }
  }
}

// Intention's state after steps is the state a prefill of all tokens builds: L L^T = A_t and
// B_t = K^T V.
TEST(Decoding, IntentionStateAfterStepsIsThePrefillState) {
  Case c;
  c.B = 1, c.H = 2, c.m = c.n = 20, c.d = 6, c.dv = 3, c.alpha_per_head = true;
  const auto in = make_inputs(c, 7);
  torch::NoGradGuard no_grad;
  auto [out, state] = F::intention_prefill(in.q.narrow(2, 0, 3), in.k.narrow(2, 0, 3),
                                           in.v.narrow(2, 0, 3), in.alpha);
  for (int64_t t = 3; t < c.n; ++t) {
    F::intention_step(state, in.q.narrow(2, t, 1), in.k.narrow(2, t, 1), in.v.narrow(2, t, 1));
  }
  auto [all, whole] = F::intention_prefill(in.q, in.k, in.v, in.alpha);
  const auto gram = [](const torch::Tensor& l) { return torch::matmul(l, l.transpose(-2, -1)); };
  EXPECT_LE(max_rel_err(gram(state.factor), gram(whole.factor)), kTolMatmul64);
  EXPECT_LE(max_rel_err(state.kv_sum, whole.kv_sum), kTolMatmul64);
  EXPECT_EQ(state.length, c.n);
}

TEST(Decoding, Float32StepsStayCloseToTheFloat64Forward) {
  for (const auto& info : kvq::mechanisms()) {
    Case c;
    c.B = 2, c.H = 2, c.m = c.n = 40, c.d = 8, c.dv = 8, c.alpha_per_head = true;
    const auto in = make_inputs(c, 11);
    const auto ref = run_both(info, in, 5, {}, 0).batched;
    const auto got = run_both(info, in.to(torch::kFloat32), 5, {}, 0).decoded;
    EXPECT_EQ(got.scalar_type(), torch::kFloat32) << info.name;
    report("decoding fp32 " + info.name, "nrmse", nrmse(got, ref));
    EXPECT_LE(nrmse(got, ref), kTolNrmse32) << info.name;
  }
}

TEST(Decoding, StatesOfTheWrongKindOrSizeAreRefused) {
  Case c;
  c.B = 2, c.H = 3, c.m = c.n = 5, c.d = 4, c.dv = 2;
  const auto in = make_inputs(c, 3);
  torch::NoGradGuard no_grad;
  auto one = [](const torch::Tensor& x) { return x.narrow(2, 0, 1); };
  // Not structured bindings: C++17 lambdas cannot capture them (GCC allows it, clang does not).
  F::DecodeState state = F::intention_prefill(in.q, in.k, in.v, in.alpha).second;
  expect_error_naming([&] { F::softmax_step(state, one(in.q), one(in.k), one(in.v)); },
                      {"softmax_prefill"}, "an intention state in a softmax step");
  F::DecodeState empty;
  expect_error_naming([&] { F::intention_step(empty, one(in.q), one(in.k), one(in.v)); },
                      {"intention_prefill"}, "an empty state");
  auto other_batch = [&](const torch::Tensor& x) { return one(x).narrow(0, 0, 1); };
  expect_error_naming(
      [&] { F::intention_step(state, other_batch(in.q), other_batch(in.k), other_batch(in.v)); },
      {"q"}, "a state for batch size 2, a token of batch size 1");
  auto other_heads = [&](const torch::Tensor& x) { return one(x).narrow(1, 0, 2); };
  expect_error_naming(
      [&] { F::intention_step(state, other_heads(in.q), other_heads(in.k), other_heads(in.v)); },
      {"q"}, "a state for 3 heads");
  expect_error_naming(
      [&] {
        F::intention_step(state, in.q.narrow(2, 0, 2), in.k.narrow(2, 0, 2), in.v.narrow(2, 0, 2));
      },
      {"q"}, "two tokens in one step");
  expect_error_naming([&] { F::intention_step(state, one(in.q), one(in.k), one(in.q)); }, {"v"},
                      "v of the wrong width");
  // A step that fails leaves the state as it was.
  EXPECT_EQ(state.length, 5);
  F::DecodeState cache = F::softmax_prefill(in.q, in.k, in.v).second;
  expect_error_naming(
      [&] {
        F::softmax_step(
            cache, one(in.q), one(in.k), one(in.v),
            F::AttentionFuncOptions().score_bias(torch::zeros({3, 1, 4}, torch::kFloat64)));
      },
      {"score_bias"}, "a score bias for too few keys");
  EXPECT_EQ(cache.length, 5);
  EXPECT_EQ(cache.cached_keys().size(2), 5);
}

}  // namespace
}  // namespace kvq_test
