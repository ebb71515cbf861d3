// Encoder-decoder model: shapes, source padding cannot leak, decoder causality, greedy decoding.
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <vector>

#include "kvq/kvq.h"
#include "kvq/models/seq2seq.h"
#include "test_utils.h"

namespace {

namespace M = kvq::models;
using torch::indexing::Slice;

// Tokens: 0 = padding, 1..9 words, 10 = bos, 11 = eos.
constexpr int64_t kPad = 0, kBos = 10, kEos = 11, kVocab = 12;

// Pre-LN blocks of width 16 (2 heads, feed-forward 4 * 16), dropout 0.1.
M::TransformerBlockOptions tiny_block() {
  return M::TransformerBlockOptions(16, 2).dropout(0.1).norm_first(true);
}

M::Seq2SeqOptions tiny() {
  return M::Seq2SeqOptions(kVocab, kVocab)
      .block(tiny_block())
      .num_encoder_layers(2)
      .num_decoder_layers(2);
}

double max_abs(const torch::Tensor& x) { return x.abs().max().item<double>(); }

// (3, 7) source: row 0 unpadded, row 1 padded from 4, row 2 from 2.
std::pair<torch::Tensor, torch::Tensor> padded_source() {
  auto src = torch::randint(1, 10, {3, 7}, torch::kInt64);
  auto mask = torch::zeros({3, 7}, torch::kBool);
  mask.index_put_({1, Slice(4)}, true);
  mask.index_put_({2, Slice(2)}, true);
  return {src.masked_fill(mask, kPad), mask};
}

TEST(Seq2Seq, ShapesAndStructure) {
  torch::manual_seed(0);
  M::Seq2Seq model(tiny().num_decoder_layers(3));
  auto [src, mask] = padded_source();
  auto tgt = torch::randint(1, 12, {3, 5}, torch::kInt64);
  EXPECT_EQ(model(src, tgt, mask).sizes(), (std::vector<int64_t>{3, 5, kVocab}));
  EXPECT_EQ(model->encode(src, mask).sizes(), (std::vector<int64_t>{3, 7, 16}));
  EXPECT_EQ(model->encoder_blocks->size(), 2u);
  EXPECT_EQ(model->decoder_blocks->size(), 3u);
  EXPECT_TRUE(model->decoder_blocks->ptr<M::TransformerDecoderBlockImpl>(0)->options.norm_first());
}

// Changing the padded source tokens leaves every logit unchanged (every mechanism, eval, float64);
// changing an unpadded one does not.
TEST(Seq2Seq, PaddedSourceTokensDoNotChangeTheOutputForEveryMechanism) {
  for (const auto& name : kvq::mechanism_names()) {
    SCOPED_TRACE(name);
    torch::manual_seed(1);
    M::Seq2Seq model(tiny().block(tiny_block().mechanism(name)));
    model->to(torch::kFloat64);
    model->eval();
    auto [src, mask] = padded_source();
    auto tgt = torch::randint(1, 12, {3, 6}, torch::kInt64);
    auto logits = model(src, tgt, mask);
    const double scale = max_abs(logits);

    auto other = src.clone();
    other.masked_scatter_(mask, torch::randint(1, 10, {mask.sum().item<int64_t>()}, torch::kInt64));
    ASSERT_FALSE(torch::equal(other, src));
    EXPECT_LE(max_abs(model(other, tgt, mask) - logits), 1e-10 * scale);

    other = src.clone();
    other.index_put_({1, 1}, (src.index({1, 1}) % 9) + 1);  // a real token of row 1
    auto moved = model(other, tgt, mask);
    EXPECT_GT(max_abs(moved.select(0, 1) - logits.select(0, 1)), 1e-6 * scale);
    EXPECT_LE(max_abs(moved.select(0, 0) - logits.select(0, 0)), 1e-10 * scale);  // rows apart
  }
}

TEST(Seq2Seq, DecoderOutputsAtTIgnoreLaterTargetTokensForEveryMechanism) {
  for (const auto& name : kvq::mechanism_names()) {
    SCOPED_TRACE(name);
    torch::manual_seed(2);
    M::Seq2Seq model(tiny().block(tiny_block().mechanism(name)));
    model->to(torch::kFloat64);
    model->eval();
    auto [src, mask] = padded_source();
    auto tgt = torch::randint(1, 12, {3, 8}, torch::kInt64);
    auto logits = model(src, tgt, mask);
    const int64_t t = 3;
    auto other = tgt.clone();
    other.narrow(1, t + 1, 8 - t - 1).copy_(torch::randint(1, 12, {3, 8 - t - 1}, torch::kInt64));
    auto changed = model(src, other, mask);
    const double scale = max_abs(logits);
    EXPECT_LE(max_abs(changed.narrow(1, 0, t + 1) - logits.narrow(1, 0, t + 1)), 1e-10 * scale);
    EXPECT_GT(max_abs(changed.narrow(1, t + 1, 8 - t - 1) - logits.narrow(1, t + 1, 8 - t - 1)),
              1e-6 * scale);
  }
}

// An output layer that always prefers `token`.
void force_token(M::Seq2Seq& model, int64_t token) {
  torch::NoGradGuard no_grad;
  model->output->weight.zero_();
  model->output->bias.zero_();
  model->output->bias[token] = 10.0;
}

TEST(Seq2Seq, GreedyDecodeStopsAtEos) {
  torch::manual_seed(3);
  M::Seq2Seq model(tiny());
  model->eval();
  auto [src, mask] = padded_source();

  force_token(model, kEos);
  auto out = model->greedy_decode(src, mask, kBos, kEos, 9);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{3, 2}));
  EXPECT_TRUE(out.select(1, 0).eq(kBos).all().item<bool>());
  EXPECT_TRUE(out.select(1, 1).eq(kEos).all().item<bool>());

  force_token(model, 4);  // never eos: runs to max_len
  out = model->greedy_decode(src, mask, kBos, kEos, 9);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{3, 9}));
  EXPECT_TRUE(out.narrow(1, 1, 8).eq(4).all().item<bool>());
  EXPECT_EQ(model->greedy_decode(src, mask, kBos, kEos, 1).sizes(), (std::vector<int64_t>{3, 1}));
}

// Against a plain argmax loop that ignores eos: rows are decoded independently, so greedy_decode
// must equal that loop up to each row's first eos, hold eos after it, and stop once every row has
// one. eos is chosen among the tokens the loop produces so that some row stops before the output
// ends (the eos fill is exercised).
TEST(Seq2Seq, GreedyDecodeMatchesAnArgmaxLoopWithPerRowStops) {
  torch::manual_seed(4);
  M::Seq2Seq model(tiny().block(tiny_block().mechanism("softmax-intention")));
  model->to(torch::kFloat64);
  model->eval();
  auto [src, mask] = padded_source();
  const int64_t max_len = 8;
  torch::Tensor loop;
  {
    torch::NoGradGuard no_grad;
    auto memory = model->encode(src, mask);
    loop = torch::full({3, 1}, kBos, torch::kInt64);
    while (loop.size(1) < max_len) {
      auto next = model->decode(loop, memory, mask).select(1, -1).argmax(-1, true);
      loop = torch::cat({loop, next}, 1);
    }
  }
  // The expected output for a given eos, and whether some row stops before its end.
  auto expected = [&](int64_t eos, bool* early_stop) {
    auto want = loop.clone();
    std::vector<int64_t> stops;
    for (int64_t b = 0; b < 3; ++b) {
      int64_t stop = max_len;
      for (int64_t t = 1; t < max_len && stop == max_len; ++t) {
        if (loop[b][t].item<int64_t>() == eos) stop = t;
      }
      if (stop < max_len) want[b].narrow(0, stop, max_len - stop).fill_(eos);
      stops.push_back(stop);
    }
    const int64_t last = *std::max_element(stops.begin(), stops.end());
    const int64_t length = last < max_len ? last + 1 : max_len;
    *early_stop = *std::min_element(stops.begin(), stops.end()) + 1 < length;
    return want.narrow(1, 0, length);
  };
  int64_t eos = -1;
  for (int64_t v = 0; v < kVocab && eos < 0; ++v) {
    bool early = false;
    expected(v, &early);
    if (early) eos = v;
  }
  ASSERT_GE(eos, 0) << "no token of the argmax loop stops one row early:\n" << loop;
  bool early = false;
  auto want = expected(eos, &early);
  auto got = model->greedy_decode(src, mask, kBos, eos, max_len);
  EXPECT_TRUE(torch::equal(got, want)) << "eos " << eos << "\n" << got << "\n" << want;
}

// A model trained to reverse a small batch (cross-entropy < 0.01) decodes every row exactly and
// stops at each row's own eos (rows of different lengths).
TEST(Seq2Seq, TrainedModelDecodesRowsOfDifferentLengths) {
  at::set_num_threads(1);
  torch::manual_seed(5);
  M::Seq2Seq model(
      tiny().block(tiny_block().dropout(0.0)).num_encoder_layers(1).num_decoder_layers(1));
  const std::vector<int64_t> lengths = {5, 2, 4};
  const int64_t S = 5, T = S + 2;
  auto src = torch::full({3, S}, kPad, torch::kInt64);
  auto tgt = torch::full({3, T}, kPad, torch::kInt64);
  for (int64_t b = 0; b < 3; ++b) {
    auto tokens = torch::randint(1, 10, {lengths[b]}, torch::kInt64);
    src[b].narrow(0, 0, lengths[b]).copy_(tokens);
    tgt[b][0] = kBos;
    tgt[b].narrow(0, 1, lengths[b]).copy_(tokens.flip(0));
    tgt[b][lengths[b] + 1] = kEos;
  }
  auto mask = src.eq(kPad);
  auto dec_in = tgt.narrow(1, 0, T - 1), dec_out = tgt.narrow(1, 1, T - 1);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-2));
  double loss_value = 0;
  int step = 0;
  for (; step < 400; ++step) {
    auto loss = torch::nn::functional::cross_entropy(
        model(src, dec_in, mask, dec_in.eq(kPad)).reshape({-1, kVocab}), dec_out.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kPad));
    loss_value = loss.item<double>();
    if (loss_value < 1e-2) break;
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  ASSERT_LT(loss_value, 1e-2) << "after " << step << " steps";
  std::cout << "[seq2seq-decode] loss " << loss_value << " after " << step << " steps" << std::endl;
  model->eval();
  auto got = model->greedy_decode(src, mask, kBos, kEos, 10);
  // Longest target: bos + 5 tokens + eos; shorter rows hold eos after their own.
  auto want = tgt.masked_fill(tgt.eq(kPad), kEos);
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(torch::equal(got, want)) << got << "\n" << want;
}

// decode_prefill of the first target tokens and one decode_step per later token give decode's
// logits, for every mechanism (float64, eval, padded source).
TEST(Seq2Seq, DecodePrefillAndStepsEqualDecodeForEveryMechanism) {
  for (const auto& name : kvq::mechanism_names()) {
    SCOPED_TRACE(name);
    torch::manual_seed(6);
    M::Seq2Seq model(tiny().block(tiny_block().mechanism(name)));
    model->to(torch::kFloat64);
    model->eval();
    auto [src, mask] = padded_source();
    auto tgt = torch::randint(1, 12, {3, 8}, torch::kInt64);
    torch::NoGradGuard no_grad;
    auto memory = model->encode(src, mask);
    auto want = model->decode(tgt, memory, mask);
    M::Seq2SeqCache cache;
    std::vector<torch::Tensor> rows = {
        model->decode_prefill(tgt.narrow(1, 0, 2), memory, mask, cache)};
    for (int64_t t = 2; t < 8; ++t) rows.push_back(model->decode_step(tgt.narrow(1, t, 1), cache));
    EXPECT_LE(max_abs(torch::cat(rows, 1) - want), 1e-10 * max_abs(want));
    EXPECT_EQ(cache.length(), 8);
  }
}

TEST(Seq2Seq, GreedyDecodeIsTheSameWithAndWithoutTheCacheForEveryMechanism) {
  for (const auto& name : kvq::mechanism_names()) {
    SCOPED_TRACE(name);
    torch::manual_seed(7);
    M::Seq2Seq model(tiny().block(tiny_block().mechanism(name)));
    model->eval();
    auto [src, mask] = padded_source();
    auto cached = model->greedy_decode(src, mask, kBos, kEos, 12);
    auto uncached = model->greedy_decode(src, mask, kBos, kEos, 12, /*use_cache=*/false);
    EXPECT_TRUE(torch::equal(cached, uncached)) << cached << "\n" << uncached;
  }
}

TEST(Seq2Seq, BadOptionsAndInputsNameTheArgument) {
  using kvq_test::expect_error_naming;
  expect_error_naming([] { M::Seq2Seq(tiny().num_encoder_layers(0)); }, {"num_encoder_layers"},
                      "no encoder layers");
  expect_error_naming([] { M::Seq2Seq(tiny().block(tiny_block().d_model(15))); },
                      {"d_model", "num_heads"}, "d_model not a multiple");
  expect_error_naming([] { M::Seq2Seq(tiny().mechanisms({"kv", "kv", "kv"})); }, {"mechanisms"},
                      "3 names for 4 layers");
  expect_error_naming([] { M::Seq2Seq(tiny().block(tiny_block().activation("swish"))); },
                      {"activation"}, "bad activation");
  M::Seq2Seq model(tiny());
  const auto source = padded_source();  // not a structured binding: lambdas capture it below
  const auto& src = source.first;
  const auto& mask = source.second;
  expect_error_naming([&] { model->greedy_decode(src, mask, kVocab, kEos, 5); }, {"bos"},
                      "bos out of range");
  expect_error_naming([&] { model->greedy_decode(src, mask, kBos, -1, 5); }, {"eos"},
                      "eos out of range");
  expect_error_naming([&] { model->greedy_decode(src, mask, kBos, kEos, 0); }, {"max_len"},
                      "max_len 0");
  expect_error_naming([&] { model(src, torch::full({3, 2}, kVocab, torch::kInt64), mask); },
                      {"tgt"}, "target token out of range");
  expect_error_naming([&] { model(src.to(torch::kFloat32), src, mask); }, {"src"}, "float source");
}

}  // namespace
