// Decoder-only language model: shapes, causality for every mechanism, per-layer mechanisms,
// sampling, option checks.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "kvq/kvq.h"
#include "kvq/models/language_model.h"
#include "test_utils.h"

namespace {

namespace M = kvq::models;

// Pre-LN blocks of width 16 (2 heads, feed-forward 4 * 16), dropout 0.1.
M::TransformerBlockOptions tiny_block() {
  return M::TransformerBlockOptions(16, 2).dropout(0.1).norm_first(true);
}

M::LanguageModelOptions tiny(int64_t vocab = 11) {
  return M::LanguageModelOptions(vocab).context_length(12).block(tiny_block()).num_layers(2);
}

double max_abs(const torch::Tensor& x) { return x.abs().max().item<double>(); }

TEST(LanguageModel, ShapesAndPreLnStructure) {
  torch::manual_seed(0);
  M::LanguageModel lm(tiny());
  auto logits = lm(torch::randint(0, 11, {3, 7}, torch::kInt64));
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 7, 11}));
  ASSERT_EQ(lm->blocks->size(), 2u);
  const auto& block = lm->blocks->ptr<M::TransformerBlockImpl>(0)->options;
  EXPECT_TRUE(block.norm_first());
  EXPECT_EQ(lm->blocks->ptr<M::TransformerBlockImpl>(0)->linear1->weight.size(0), 64);  // 4 * 16
  EXPECT_EQ(lm->position_embedding->weight.size(0), 12);
}

// Logits at positions <= t are unchanged when the tokens after t change, for every mechanism, in
// eval mode and float64; and they do change at t + 1 (the check has something to detect).
TEST(LanguageModel, OutputsAtTIgnoreLaterTokensForEveryMechanism) {
  for (const auto& name : kvq::mechanism_names()) {
    SCOPED_TRACE(name);
    torch::manual_seed(1);
    M::LanguageModel lm(tiny().block(tiny_block().mechanism(name)));
    lm->to(torch::kFloat64);
    lm->eval();
    auto tokens = torch::randint(0, 11, {2, 12}, torch::kInt64);
    auto logits = lm(tokens);
    for (int64_t t : {0, 4, 10}) {
      auto changed = tokens.clone();
      auto tail = changed.narrow(1, t + 1, 12 - t - 1);
      tail.copy_((tail + torch::randint(1, 11, tail.sizes(), torch::kInt64)).remainder(11));
      auto other = lm(changed);
      const double scale = max_abs(logits);
      EXPECT_LE(max_abs(other.narrow(1, 0, t + 1) - logits.narrow(1, 0, t + 1)), 1e-10 * scale)
          << "t = " << t;
      EXPECT_GT(max_abs(other.select(1, t + 1) - logits.select(1, t + 1)), 1e-6 * scale)
          << "t = " << t;
    }
  }
}

TEST(LanguageModel, PerLayerMechanisms) {
  M::LanguageModel lm(tiny().mechanisms({"kv", "intention"}));
  auto first = lm->blocks->ptr<M::TransformerBlockImpl>(0);
  auto second = lm->blocks->ptr<M::TransformerBlockImpl>(1);
  EXPECT_EQ(first->self_attn->options.mechanism(), "kv");
  EXPECT_TRUE(first->self_attn->q_proj.is_empty());
  EXPECT_FALSE(first->self_attn->alpha_raw.defined());
  EXPECT_EQ(second->self_attn->options.mechanism(), "intention");
  EXPECT_TRUE(second->self_attn->alpha_raw.defined());
  EXPECT_EQ(lm(torch::randint(0, 11, {2, 5}, torch::kInt64)).sizes(),
            (std::vector<int64_t>{2, 5, 11}));

  M::LanguageModel projected(
      tiny().block(tiny_block().mechanism("softmax-intention").projection("kv")));
  EXPECT_TRUE(projected->blocks->ptr<M::TransformerBlockImpl>(1)->self_attn->q_proj.is_empty());
}

TEST(LanguageModel, GenerateIsDeterministicForASeedAndKeepsThePrompt) {
  torch::manual_seed(2);
  M::LanguageModel lm(tiny());
  lm->eval();
  auto prompt = torch::randint(0, 11, {2, 3}, torch::kInt64);
  // 20 new tokens: more than the context (12), so the context window slides.
  auto opts = M::GenerateOptions().max_new_tokens(20).temperature(2.0).seed(7);
  auto a = lm->generate(prompt, opts);
  auto b = lm->generate(prompt, opts);
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{2, 23}));
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_TRUE(torch::equal(a.narrow(1, 0, 3), prompt));
  EXPECT_GE(a.min().item<int64_t>(), 0);
  EXPECT_LT(a.max().item<int64_t>(), 11);
  // 40 draws at temperature 2 from an untrained model: two seeds agreeing on all is
  // vanishingly unlikely.
  EXPECT_FALSE(torch::equal(a, lm->generate(prompt, opts.seed(8))));

  // An explicit generator is advanced in place: the same seed again gives the same tokens.
  auto gen = at::detail::createCPUGenerator(7);
  EXPECT_TRUE(torch::equal(lm->generate(prompt, opts, gen), a));
  EXPECT_FALSE(torch::equal(lm->generate(prompt, opts, gen), a));
}

// top_k = 1 leaves only the argmax: generation is greedy, whatever the seed and temperature.
TEST(LanguageModel, TopKOneIsGreedy) {
  torch::manual_seed(3);
  M::LanguageModel lm(tiny().block(tiny_block().mechanism("linear")));
  lm->eval();
  auto tokens = torch::randint(0, 11, {2, 2}, torch::kInt64);
  auto got = lm->generate(tokens, M::GenerateOptions().max_new_tokens(6).top_k(1).seed(5)
                                      .temperature(3.0));
  torch::NoGradGuard no_grad;
  for (int step = 0; step < 6; ++step) {
    auto next = lm(tokens).select(1, -1).argmax(-1, /*keepdim=*/true);
    tokens = torch::cat({tokens, next}, 1);
  }
  EXPECT_TRUE(torch::equal(got, tokens));
}

// A prefill of a prefix and one step per later token give the forward's logits, for every
// mechanism (float64, eval); a step past the context length is refused.
TEST(LanguageModel, PrefillAndStepsGiveTheForwardLogitsForEveryMechanism) {
  for (const auto& name : kvq::mechanism_names()) {
    SCOPED_TRACE(name);
    torch::manual_seed(4);
    M::LanguageModel lm(tiny().block(tiny_block().mechanism(name)));
    lm->to(torch::kFloat64);
    lm->eval();
    auto tokens = torch::randint(0, 11, {2, 12}, torch::kInt64);
    auto want = lm(tokens);
    torch::NoGradGuard no_grad;
    M::LanguageModelCache cache;
    std::vector<torch::Tensor> rows = {lm->prefill(tokens.narrow(1, 0, 5), cache)};
    for (int64_t t = 5; t < 12; ++t) rows.push_back(lm->step(tokens.narrow(1, t, 1), cache));
    EXPECT_LE(max_abs(torch::cat(rows, 1) - want), 1e-10 * max_abs(want));
    EXPECT_EQ(cache.length(), 12);
    kvq_test::expect_error_naming([&] { lm->step(tokens.narrow(1, 0, 1), cache); },
                                  {"context_length"}, "a step past the context");
  }
}

// A tiny model trained for 60 steps on a stream where each token is followed by one of two
// tokens at random: its samples are neither noise nor one repeated token.
M::LanguageModel trained_tiny(const std::string& mechanism) {
  torch::manual_seed(9);
  M::LanguageModel lm(tiny().block(tiny_block().mechanism(mechanism).dropout(0.0)));
  auto stream = torch::empty({400}, torch::kInt64);
  auto jumps = torch::randint(0, 2, {400}, torch::kInt64) * 2 + 1;  // +1 or +3
  int64_t token = 0;
  for (int64_t i = 0; i < 400; ++i) {
    stream[i] = token;
    token = (token + jumps[i].item<int64_t>()) % 11;
  }
  const auto offsets = torch::arange(13, torch::kInt64);
  torch::optim::Adam opt(lm->parameters(), torch::optim::AdamOptions(1e-2));
  for (int step = 0; step < 60; ++step) {
    const auto starts = torch::randint(0, 400 - 13, {16, 1}, torch::kInt64);
    const auto windows = stream.index({starts + offsets});
    const auto logits = lm(windows.narrow(1, 0, 12));
    const auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, 11}),
                                                           windows.narrow(1, 1, 12).reshape({-1}));
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  lm->eval();
  return lm;
}

// Sampled and greedy generation give the same tokens with and without the caches, for every
// mechanism, past the context length (12) too, where the window slides and the caches are rebuilt.
TEST(LanguageModel, CachedGenerationGivesTheUncachedTokensForEveryMechanism) {
  for (const auto& name : kvq::mechanism_names()) {
    SCOPED_TRACE(name);
    auto lm = trained_tiny(name);
    auto prompt = torch::tensor({0, 1, 4, 7, 8, 9}, torch::kInt64).view({2, 3});
    for (int64_t top_k : {0, 1}) {
      auto opts = M::GenerateOptions().max_new_tokens(25).seed(11).top_k(top_k);
      auto cached = lm->generate(prompt, opts);
      auto uncached = lm->generate(prompt, opts.use_cache(false));
      EXPECT_TRUE(torch::equal(cached, uncached)) << "top_k " << top_k << "\n"
                                                  << cached << "\n"
                                                  << uncached;
      if (top_k == 0) {
        EXPECT_GE(std::get<0>(at::_unique(cached)).numel(), 5) << "degenerate samples\n" << cached;
      }
    }
  }
}

TEST(LanguageModel, BadOptionsAndInputsNameTheArgument) {
  using kvq_test::expect_error_naming;
  expect_error_naming([] { M::LanguageModel(tiny().block(tiny_block().d_model(10).num_heads(3))); },
                      {"d_model", "num_heads"}, "d_model not a multiple of num_heads");
  expect_error_naming([] { M::LanguageModel(tiny().block(tiny_block().norm_first(false))); },
                      {"norm_first"}, "Post-LN blocks");
  expect_error_naming([] { M::LanguageModel(tiny().num_layers(0)); }, {"num_layers"}, "no layers");
  expect_error_naming([] { M::LanguageModel(tiny().context_length(0)); }, {"context_length"},
                      "empty context");
  expect_error_naming([] { M::LanguageModel(tiny().block(tiny_block().dropout(-0.5))); },
                      {"dropout"}, "negative dropout");
  expect_error_naming([] { M::LanguageModel(tiny().mechanisms({"kv"})); }, {"mechanisms"},
                      "per-layer list of the wrong length");
  expect_error_naming([] { M::LanguageModel(tiny().block(tiny_block().mechanism("flash"))); },
                      {"mechanism"}, "unknown mechanism");
  M::LanguageModel lm(tiny());
  expect_error_naming([&] { lm(torch::zeros({1, 13}, torch::kInt64)); }, {"context_length"},
                      "longer than the context");
  expect_error_naming([&] { lm(torch::full({1, 4}, 11, torch::kInt64)); }, {"tokens"},
                      "token out of range");
  expect_error_naming([&] { lm(torch::zeros({1, 4}, torch::kInt32)); }, {"tokens"}, "int32 tokens");
  auto prompt = torch::zeros({1, 2}, torch::kInt64);
  expect_error_naming([&] { lm->generate(prompt, M::GenerateOptions().temperature(0)); },
                      {"temperature"}, "zero temperature");
  expect_error_naming([&] { lm->generate(prompt, M::GenerateOptions().top_k(12)); }, {"top_k"},
                      "top_k above the vocabulary");
}

}  // namespace
