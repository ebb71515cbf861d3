// A tiny model of each family memorises one fixed small batch with every registered mechanism:
// the cross-entropy on that batch must fall below kLossRatio times its initial value within
// kMaxSteps Adam steps. Each case prints "[overfit] family mechanism initial=.. final=.. steps=..".
//
// Models: width 16, 2 heads, one layer (seq2seq: one encoder and one decoder layer), no dropout,
// float32, one CPU thread. Batches: the sequence tagger reverses 8 random sequences of length 8;
// the language model learns 4 random sequences of 13 tokens over 5 symbols whose first tokens
// differ (every prefix determines its next token, so the achievable loss is 0, while token and
// position alone do not); the seq2seq model reverses 4 source sequences of 3 to 6 tokens with
// padding; the ViT learns 4-way labels of 8 random 8x8 images (patch 4, 5 tokens: the cls token
// sees the image only through attention). Every task needs attention to fit. The initial losses
// are about ln(classes) (1.4 to 2.8 nats), so the bound (about 0.03 to 0.06 nats) is a near-perfect
// fit: 98% of the way from chance to zero.
#include <gtest/gtest.h>

#include <cmath>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>

#include "kvq/kvq.h"
#include "kvq/models/language_model.h"
#include "kvq/models/seq2seq.h"
#include "kvq/models/sequence_tagger.h"
#include "kvq/models/vit.h"
#include "test_files.h"

namespace {

namespace M = kvq::models;

constexpr double kLossRatio = 0.02;
constexpr int kMaxSteps = 400;
constexpr double kLearningRate = 1e-2;

struct OverfitResult {
  double initial = 0, final = 0;
  int steps = 0;
};

// Adam on `loss_fn` until the loss falls below kLossRatio * initial or kMaxSteps steps are taken.
// `final` is the loss at the parameters training stopped at.
template <typename LossFn>
OverfitResult fit(torch::nn::Module& model, LossFn loss_fn) {
  torch::optim::Adam opt(model.parameters(), torch::optim::AdamOptions(kLearningRate));
  OverfitResult r;
  for (int step = 0;; ++step) {
    auto loss = loss_fn();
    const double value = loss.template item<double>();
    if (step == 0) r.initial = value;
    r.final = value;
    r.steps = step;
    if (value < kLossRatio * r.initial || step == kMaxSteps || !std::isfinite(value)) break;
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  return r;
}

// Pre-LN blocks of width 16 (2 heads, feed-forward 4 * 16) running `mechanism`, without dropout.
M::TransformerBlockOptions pre_ln_block(const std::string& mechanism) {
  return M::TransformerBlockOptions(16, 2).dropout(0.0).norm_first(true).mechanism(mechanism);
}

OverfitResult overfit_tagger(const std::string& mechanism) {
  M::SequenceTagger model(
      M::SequenceTaggerOptions(8, 8)
          .block(M::TransformerBlockOptions(16, 2).ffn_dim(32).dropout(0.0).mechanism(mechanism))
          .num_layers(1));
  auto x = torch::randint(0, 8, {8, 8}, torch::kInt64);
  auto y = x.flip(1);
  return fit(*model, [&] {
    return torch::nn::functional::cross_entropy(model(x).reshape({-1, 8}), y.reshape({-1}));
  });
}

OverfitResult overfit_language_model(const std::string& mechanism) {
  const int64_t vocab = 5;
  M::LanguageModel model(M::LanguageModelOptions(vocab)
                             .context_length(12)
                             .block(pre_ln_block(mechanism))
                             .num_layers(1));
  auto seq = torch::randint(0, vocab, {4, 13}, torch::kInt64);
  seq.select(1, 0).copy_(torch::randperm(vocab, torch::kInt64).narrow(0, 0, 4));
  auto input = seq.narrow(1, 0, 12), target = seq.narrow(1, 1, 12);
  return fit(*model, [&] {
    return torch::nn::functional::cross_entropy(model(input).reshape({-1, vocab}),
                                                target.reshape({-1}));
  });
}

OverfitResult overfit_seq2seq(const std::string& mechanism) {
  // Tokens 1..9; 0 = padding (ignored in the loss), 10 = bos, 11 = eos.
  const int64_t pad = 0, bos = 10, eos = 11, vocab = 12;
  M::Seq2Seq model(M::Seq2SeqOptions(vocab, vocab)
                       .block(pre_ln_block(mechanism))
                       .num_encoder_layers(1)
                       .num_decoder_layers(1));
  const std::vector<int64_t> lengths = {6, 3, 5, 4};
  const int64_t B = 4, S = 6, T = S + 2;
  auto src = torch::full({B, S}, pad, torch::kInt64);
  auto tgt = torch::full({B, T}, pad, torch::kInt64);
  for (int64_t b = 0; b < B; ++b) {
    auto tokens = torch::randint(1, 10, {lengths[b]}, torch::kInt64);
    src[b].narrow(0, 0, lengths[b]).copy_(tokens);
    tgt[b][0] = bos;
    tgt[b].narrow(0, 1, lengths[b]).copy_(tokens.flip(0));
    tgt[b][lengths[b] + 1] = eos;
  }
  auto src_mask = src.eq(pad);
  auto dec_in = tgt.narrow(1, 0, T - 1), dec_out = tgt.narrow(1, 1, T - 1);
  auto tgt_mask = dec_in.eq(pad);
  return fit(*model, [&] {
    auto logits = model(src, dec_in, src_mask, tgt_mask);
    return torch::nn::functional::cross_entropy(
        logits.reshape({-1, vocab}), dec_out.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(pad));
  });
}

OverfitResult overfit_vit(const std::string& mechanism) {
  M::ViT model(M::ViTOptions(8, 4, 4)
                   .block(pre_ln_block(mechanism).ffn_dim(16).activation("gelu"))
                   .num_layers(1));
  auto images = torch::randn({8, 1, 8, 8});
  auto labels = torch::arange(8, torch::kInt64).remainder(4);
  return fit(*model, [&] { return torch::nn::functional::cross_entropy(model(images), labels); });
}

struct OverfitCase {
  std::string family, mechanism;
};

void PrintTo(const OverfitCase& c, std::ostream* os) { *os << c.family << " " << c.mechanism; }

class Overfit : public ::testing::TestWithParam<OverfitCase> {};

TEST_P(Overfit, LossFallsBelowTwoPercentOfItsInitialValue) {
  at::set_num_threads(1);
  torch::manual_seed(0);
  const auto& c = GetParam();
  OverfitResult r;
  if (c.family == "tagger") r = overfit_tagger(c.mechanism);
  if (c.family == "lm") r = overfit_language_model(c.mechanism);
  if (c.family == "seq2seq") r = overfit_seq2seq(c.mechanism);
  if (c.family == "vit") r = overfit_vit(c.mechanism);
  std::ostringstream line;
  line << "[overfit] " << c.family << " " << c.mechanism << std::fixed << std::setprecision(4)
       << " initial=" << r.initial << " final=" << r.final << " ratio=" << r.final / r.initial
       << " steps=" << r.steps;
  std::cout << line.str() << std::endl;
  ASSERT_GT(r.initial, 1.0) << "the initial loss should be near ln(classes)";
  EXPECT_LT(r.final, kLossRatio * r.initial) << line.str();
}

std::vector<OverfitCase> all_cases() {
  std::vector<OverfitCase> cases;
  for (const char* family : {"tagger", "lm", "seq2seq", "vit"}) {
    for (const auto& mechanism : kvq::mechanism_names()) cases.push_back({family, mechanism});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(EveryFamilyAndMechanism, Overfit, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<OverfitCase>& info) {
                           return kvq_test_files::test_name(info.param.family + "_" +
                                                            info.param.mechanism);
                         });

}  // namespace
