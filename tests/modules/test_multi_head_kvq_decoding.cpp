// MultiHeadKVQ's decoding API: prefill + step equals forward_self(causal) for every registered
// mechanism and every projection it takes (qkv, kv, kv-pos with a map per head or per layer), with
// learned per-head alpha and
// padded prefix tokens, in float64; project_memory + forward_memory equals cross-attention; caches
// that do not fit are refused with a message that names the problem.
#include <gtest/gtest.h>

#include "kvq/kvq.h"
#include "test_utils.h"

namespace {

using kvq::nn::MultiHeadKVQ;
using kvq::nn::MultiHeadKVQOptions;
using kvq_test::max_rel_err;

// The projections `info` combines with: kv-pos only with a softmax, "kv-pos/layer" being kv-pos
// with pos_map "layer".
std::vector<std::string> projections_of(const kvq::MechanismInfo& info) {
  std::vector<std::string> out = {"qkv", "kv"};
  if (info.traits.has_softmax) out.insert(out.end(), {"kv-pos", "kv-pos/layer"});
  return out;
}

// A float64 module in eval mode with non-zero biases and a different alpha per head.
MultiHeadKVQ make_module(const std::string& mechanism, const std::string& projection,
                         bool batch_first = true) {
  const bool shared_map = projection == "kv-pos/layer";
  MultiHeadKVQ m(MultiHeadKVQOptions(12, 3)
                     .mechanism(mechanism)
                     .projection(shared_map ? "kv-pos" : projection)
                     .pos_map(shared_map ? "layer" : "head")
                     .chunk_size(kvq::find_mechanism(mechanism).traits.chunked ? 4 : 0)
                     .batch_first(batch_first));
  m->to(torch::kFloat64);
  m->eval();
  torch::NoGradGuard no_grad;
  for (auto& p : m->named_parameters()) {
    if (p.key().find("bias") != std::string::npos) p.value().normal_(0.0, 0.5);
  }
  if (m->alpha_raw.defined()) m->alpha_raw.copy_(torch::tensor({-1.0, 0.0, 1.5}));
  return m;
}

// Rows of forward_self(x, mask, causal=true) from a prefill of the first `prefix` tokens and one
// step per later token, (B, T, E).
torch::Tensor decode(MultiHeadKVQ& m, const torch::Tensor& x, int64_t prefix,
                     const torch::Tensor& mask = {}) {
  torch::NoGradGuard no_grad;
  const int64_t time_dim = m->options.batch_first() ? 1 : 0;
  auto [head, cache] =
      m->prefill(x.narrow(time_dim, 0, prefix), mask.defined() ? mask.narrow(1, 0, prefix) : mask);
  std::vector<torch::Tensor> rows = {head};
  for (int64_t t = prefix; t < x.size(time_dim); ++t) {
    rows.push_back(m->step(x.narrow(time_dim, t, 1), cache));
  }
  EXPECT_EQ(cache.length(), x.size(time_dim));
  return torch::cat(rows, time_dim);
}

TEST(MultiHeadKVQDecoding, PrefillPlusStepsEqualCausalForwardForEveryMechanismAndProjection) {
  for (const auto& info : kvq::mechanisms()) {
    for (const auto& projection : projections_of(info)) {
      const std::string label = info.name + " / " + projection;
      SCOPED_TRACE(label);
      torch::manual_seed(5);
      auto m = make_module(info.name, projection);
      const auto x = torch::randn({2, 19, 12}, torch::kFloat64);
      const auto want = m->forward_self(x, {}, /*causal=*/true);
      double worst = 0;
      for (int64_t prefix : {0, 1, 7}) {
        worst = std::max(worst, max_rel_err(decode(m, x, prefix), want));
      }
      // Padded prefix tokens (the stepped ones never are).
      auto mask = torch::zeros({2, 19}, torch::kBool);
      mask.index_put_({1, torch::indexing::Slice(2, 5)}, true);
      mask.index_put_({0, 3}, true);
      worst = std::max(worst, max_rel_err(decode(m, x, 7, mask), m->forward_self(x, mask, true)));
      kvq_test::report("MultiHeadKVQ decoding " + label, "relerr", worst);
      EXPECT_LE(worst, kvq_test::kTolSolve64);
    }
  }
}

TEST(MultiHeadKVQDecoding, SequenceFirstLayout) {
  torch::manual_seed(6);
  for (const char* mechanism : {"kv-pos", "intention"}) {
    auto m = make_module(mechanism, "", /*batch_first=*/false);
    const auto x = torch::randn({9, 2, 12}, torch::kFloat64);  // (T, B, E)
    EXPECT_LE(max_rel_err(decode(m, x, 3), m->forward_self(x, {}, true)), kvq_test::kTolSolve64)
        << mechanism;
  }
}

TEST(MultiHeadKVQDecoding, ProjectedMemoryEqualsCrossAttention) {
  for (const auto& info : kvq::mechanisms()) {
    for (const auto& projection : projections_of(info)) {
      SCOPED_TRACE(info.name + " / " + projection);
      torch::manual_seed(7);
      auto m = make_module(info.name, projection);
      const auto memory = torch::randn({2, 8, 12}, torch::kFloat64);
      const auto query = torch::randn({2, 3, 12}, torch::kFloat64);
      auto mask = torch::zeros({2, 8}, torch::kBool);
      mask.index_put_({1, torch::indexing::Slice(5)}, true);
      const auto cache = m->project_memory(memory, mask);
      EXPECT_LE(max_rel_err(m->forward_memory(query, cache), m(query, memory, memory, mask)),
                kvq_test::kTolMatmul64);
    }
  }
}

TEST(MultiHeadKVQDecoding, CachesThatDoNotFitAreRefused) {
  using kvq_test::expect_error_naming;
  torch::manual_seed(8);
  auto m = make_module("intention", "");
  const auto x = torch::randn({2, 4, 12}, torch::kFloat64);
  torch::NoGradGuard no_grad;
  auto cache = m->prefill(x).second;  // not a structured binding: lambdas capture it below
  kvq::nn::AttentionCache empty;
  expect_error_naming([&] { m->step(x.narrow(1, 0, 1), empty); }, {"prefill"}, "an empty cache");
  expect_error_naming([&] { m->step(x.narrow(1, 0, 2), cache); }, {"x_t"}, "two tokens");
  expect_error_naming([&] { m->step(x.narrow(0, 0, 1).narrow(1, 0, 1), cache); }, {"x_t"},
                      "another batch size");
  MultiHeadKVQ four_heads(MultiHeadKVQOptions(12, 4).mechanism("intention"));
  four_heads->to(torch::kFloat64);
  expect_error_naming([&] { four_heads->step(x.narrow(1, 0, 1), cache); }, {"heads"},
                      "a cache of another module");
  auto softmax = make_module("softmax", "");
  expect_error_naming([&] { softmax->step(x.narrow(1, 0, 1), cache); }, {"softmax_prefill"},
                      "an intention cache in a softmax module");
  EXPECT_EQ(cache.length(), 4);
}

}  // namespace
