// TransformerBlock, TransformerDecoderBlock, the sinusoidal table and the option checks shared by
// the models.
#include <gtest/gtest.h>

#include <cmath>

#include "kvq/kvq.h"
#include "kvq/models/layers.h"
#include "test_utils.h"

namespace {

using kvq::models::TransformerBlock;
using kvq::models::TransformerBlockOptions;
using kvq::models::TransformerDecoderBlock;

double max_abs(const torch::Tensor& x) { return x.abs().max().item<double>(); }

// Copies every parameter and buffer of `src` into `dst` (same architecture).
void copy_state(torch::nn::Module& src, torch::nn::Module& dst) {
  torch::NoGradGuard no_grad;
  auto from = src.named_parameters(), to = dst.named_parameters();
  ASSERT_EQ(from.size(), to.size());
  for (const auto& p : from) to[p.key()].copy_(p.value());
}

TEST(SinusoidalPositionalEncoding, MatchesVaswaniFormula) {
  for (int64_t dim : {6, 5}) {
    const int64_t length = 9;
    auto pe = kvq::models::sinusoidal_positional_encoding(length, dim, torch::kFloat64);
    ASSERT_EQ(pe.sizes(), (std::vector<int64_t>{length, dim}));
    auto acc = pe.accessor<double, 2>();
    for (int64_t t = 0; t < length; ++t) {
      for (int64_t j = 0; j < dim; ++j) {
        const double angle = t / std::pow(10000.0, static_cast<double>(j - j % 2) / dim);
        const double want = j % 2 == 0 ? std::sin(angle) : std::cos(angle);
        EXPECT_NEAR(acc[t][j], want, 1e-12) << "t=" << t << " j=" << j << " dim=" << dim;
      }
    }
  }
  EXPECT_EQ(kvq::models::sinusoidal_positional_encoding(4, 8).scalar_type(), torch::kFloat32);
}

// Both norm placements reproduce their formulas, written out with the block's own submodules:
//   Post-LN: h = LN1(x + SA(x)); y = LN2(h + FFN(h))
//   Pre-LN:  h = x + SA(LN1(x)); y = h + FFN(LN2(h))
// and, with identical weights, they give different outputs.
TEST(TransformerBlock, PreLnAndPostLnFollowTheirFormulasAndDiffer) {
  torch::manual_seed(1);
  const int64_t d = 16;
  auto make = [&](bool norm_first) {
    TransformerBlock block(TransformerBlockOptions(d, 4).ffn_dim(24).norm_first(norm_first));
    block->to(torch::kFloat64);
    block->eval();
    return block;
  };
  auto pre = make(true), post = make(false);
  copy_state(*pre, *post);
  {
    // Non-trivial LayerNorm affine parameters, so that the two placements cannot coincide by the
    // identity initialisation.
    torch::NoGradGuard no_grad;
    for (auto* b : {&pre, &post}) {
      (*b)->norm1->weight.fill_(1.5);
      (*b)->norm2->bias.fill_(0.25);
    }
  }
  auto x = torch::randn({3, 7, d}, torch::kFloat64);
  auto mask = torch::zeros({3, 7}, torch::kBool);
  mask.index_put_({1, torch::indexing::Slice(5)}, true);

  auto want_pre_h = x + pre->self_attn->forward_self(pre->norm1(x), mask, true);
  auto want_pre = want_pre_h + pre->feed_forward(pre->norm2(want_pre_h));
  auto got_pre = pre->forward(x, mask, true);
  EXPECT_LE(max_abs(got_pre - want_pre), 1e-12);

  auto want_post_h = post->norm1(x + post->self_attn->forward_self(x, mask, true));
  auto want_post = post->norm2(want_post_h + post->feed_forward(want_post_h));
  auto got_post = post->forward(x, mask, true);
  EXPECT_LE(max_abs(got_post - want_post), 1e-12);

  EXPECT_GT(max_abs(got_pre - got_post), 0.1);
  // Post-LN ends in LN2 (weight 1, bias 0.25): every token has mean 0.25 and unit variance.
  // Pre-LN ends in a residual sum: it does not.
  EXPECT_LE(max_abs(got_post.mean(-1) - 0.25), 1e-10);
  EXPECT_GT(max_abs(got_pre.mean(-1) - 0.25), 0.05);
}

TEST(TransformerBlock, FeedForwardWidthAndActivation) {
  TransformerBlock relu(TransformerBlockOptions(8, 2));
  EXPECT_EQ(relu->linear1->weight.size(0), 32);  // 0 = 4 * d_model
  TransformerBlock gelu(TransformerBlockOptions(8, 2).ffn_dim(12).activation("gelu").dropout(0));
  EXPECT_EQ(gelu->linear1->weight.sizes(), (std::vector<int64_t>{12, 8}));
  auto x = torch::randn({2, 3, 8});
  auto want = gelu->linear2(torch::gelu(gelu->linear1(x)));
  EXPECT_LE(max_abs(gelu->feed_forward(x) - want), 1e-6);
  auto relu_want = relu->linear2(torch::relu(relu->linear1(x)));
  relu->eval();
  EXPECT_LE(max_abs(relu->feed_forward(x) - relu_want), 1e-6);
}

TEST(TransformerBlock, PassesMechanismProjectionAndAlphaToAttention) {
  auto options = TransformerBlockOptions(8, 2)
                     .mechanism("softmax-intention")
                     .projection("kv")
                     .alpha_init(0.5)
                     .scale(0.125)
                     .dropout(0.2);
  options.attention().dropout(0.05);
  TransformerBlock block(options);
  const auto& a = block->self_attn->options;
  EXPECT_EQ(a.mechanism(), "softmax-intention");
  EXPECT_EQ(a.projection(), "kv");
  EXPECT_TRUE(block->self_attn->q_proj.is_empty());  // tied projection: no W_q
  EXPECT_NEAR(block->self_attn->alpha().mean().item<double>(), 0.5, 1e-6);
  ASSERT_TRUE(a.scale().has_value());
  EXPECT_EQ(*a.scale(), 0.125);
  EXPECT_EQ(a.dropout(), 0.05);
  EXPECT_EQ(block->dropout->options.p(), 0.2);
  // Unset, the attention dropout is the block's dropout (as torch::nn::TransformerEncoderLayer).
  EXPECT_EQ(TransformerBlock(TransformerBlockOptions(8, 2).dropout(0.3))
                ->self_attn->options.dropout(),
            0.3);
}

TEST(TransformerBlock, EveryMechanismRunsBothNormsForwardAndBackward) {
  for (const auto& name : kvq::mechanism_names()) {
    for (bool norm_first : {false, true}) {
      SCOPED_TRACE(name + (norm_first ? " Pre-LN" : " Post-LN"));
      TransformerBlock block(
          TransformerBlockOptions(8, 2).mechanism(name).norm_first(norm_first).dropout(0.1));
      auto x = torch::randn({2, 6, 8}, torch::requires_grad());
      auto y = block->forward(x, {}, true);
      ASSERT_EQ(y.sizes(), x.sizes());
      y.pow(2).sum().backward();
      ASSERT_TRUE(torch::isfinite(x.grad()).all().item<bool>());
    }
  }
}

// Decoder block: its formulas (Pre-LN), and padded memory positions never reach the output.
TEST(TransformerDecoderBlock, PreLnFormulaAndMemoryPadding) {
  torch::manual_seed(2);
  const int64_t d = 12;
  TransformerDecoderBlock block(TransformerBlockOptions(d, 3).norm_first(true));
  block->to(torch::kFloat64);
  block->eval();
  auto x = torch::randn({2, 5, d}, torch::kFloat64);
  auto mem = torch::randn({2, 8, d}, torch::kFloat64);
  auto mem_mask = torch::zeros({2, 8}, torch::kBool);
  mem_mask.index_put_({0, torch::indexing::Slice(6)}, true);

  auto h = x + block->self_attn->forward_self(block->norm1(x), {}, true);
  h = h + block->cross_attn->forward(block->norm2(h), mem, mem, mem_mask);
  auto want = h + block->feed_forward(block->norm3(h));
  auto got = block->forward(x, mem, {}, mem_mask, true);
  EXPECT_LE(max_abs(got - want), 1e-12);

  auto mem2 = mem.clone();
  mem2.index_put_({0, torch::indexing::Slice(6)}, torch::randn({2, d}, torch::kFloat64));
  EXPECT_LE(max_abs(block->forward(x, mem2, {}, mem_mask, true) - got), 1e-12);
  mem2.index_put_({0, 0}, torch::randn({d}, torch::kFloat64));  // an unpadded position
  EXPECT_GT(max_abs(block->forward(x, mem2, {}, mem_mask, true) - got), 1e-6);
}

TEST(TransformerDecoderBlock, PostLnFormula) {
  torch::manual_seed(3);
  const int64_t d = 8;
  TransformerDecoderBlock block(TransformerBlockOptions(d, 2).mechanism("kv"));
  block->to(torch::kFloat64);
  block->eval();
  auto x = torch::randn({2, 4, d}, torch::kFloat64), mem = torch::randn({2, 6, d}, torch::kFloat64);
  auto h = block->norm1(x + block->self_attn->forward_self(x, {}, true));
  h = block->norm2(h + block->cross_attn->forward(h, mem, mem));
  auto want = block->norm3(h + block->feed_forward(h));
  EXPECT_LE(max_abs(block->forward(x, mem) - want), 1e-12);
}

TEST(TransformerBlockOptions, BadOptionsNameTheOption) {
  using kvq_test::expect_error_naming;
  expect_error_naming([] { TransformerBlock(TransformerBlockOptions(10, 3)); },
                      {"d_model", "num_heads"}, "d_model not a multiple of num_heads");
  expect_error_naming(
      [] { TransformerBlock(TransformerBlockOptions(8, 2).activation("tanh")); }, {"activation"},
      "bad activation");
  expect_error_naming([] { TransformerBlock(TransformerBlockOptions(8, 2).dropout(1.0)); },
                      {"dropout"}, "dropout 1");
  expect_error_naming(
      [] {
        auto options = TransformerBlockOptions(8, 2);
        options.attention().dropout(-0.1);
        TransformerBlock{options};
      },
      {"dropout", "[0, 1)"}, "negative attention dropout");
  expect_error_naming([] { TransformerBlock(TransformerBlockOptions(8, 2).ffn_dim(-1)); },
                      {"ffn_dim"}, "negative ffn_dim");
  expect_error_naming(
      [] { TransformerDecoderBlock(TransformerBlockOptions(8, 2).mechanism("flash")); },
      {"mechanism"}, "unknown mechanism");
  expect_error_naming(
      [] { kvq::models::layer_mechanisms("M", kvq::nn::AttentionOptions(), {"kv", "kv"}, 3); }, {"mechanisms"},
      "per-layer list of the wrong length");
  expect_error_naming(
      [] { kvq::models::layer_mechanisms("M", kvq::nn::AttentionOptions(), {"kv", "nope"}, 2); }, {"mechanisms"},
      "unknown name in the per-layer list");
  EXPECT_EQ(kvq::models::layer_mechanisms("M", kvq::nn::AttentionOptions().mechanism("linear"), {}, 3),
            (std::vector<std::string>{"linear", "linear", "linear"}));

  TransformerBlock block(TransformerBlockOptions(8, 2));
  expect_error_naming([&] { block->forward(torch::randn({2, 3, 6})); }, {"x"}, "wrong width");
}

}  // namespace
