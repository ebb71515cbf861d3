// The Key-Value Transformer's synthetic-task model: shapes, its documented composition,
// bidirectional attention, padding, option checks.
#include <gtest/gtest.h>

#include "kvq/kvq.h"
#include "kvq/models/sequence_tagger.h"
#include "test_utils.h"

namespace {

namespace M = kvq::models;

double max_abs(const torch::Tensor& x) { return x.abs().max().item<double>(); }

TEST(SequenceTagger, ShapesAndPaperArchitecture) {
  torch::manual_seed(0);
  M::SequenceTagger model(M::SequenceTaggerOptions(10, 10).num_layers(3));
  EXPECT_EQ(model(torch::randint(0, 10, {5, 9}, torch::kInt64)).sizes(),
            (std::vector<int64_t>{5, 9, 10}));
  EXPECT_EQ(model->embed->weight.sizes(), (std::vector<int64_t>{64, 10}));  // Linear(V, d)
  ASSERT_EQ(model->blocks->size(), 3u);
  auto block = model->blocks->ptr<M::TransformerBlockImpl>(0);
  EXPECT_EQ(block->options.num_heads(), 2);
  EXPECT_FALSE(block->options.norm_first());            // Post-LN
  EXPECT_EQ(block->linear1->weight.size(0), 128);       // FFN 2d
  EXPECT_EQ(block->options.activation(), "relu");
  EXPECT_EQ(block->options.dropout(), 0.1);
  EXPECT_EQ(model->head->size(), 5u);                   // Linear-LN-ReLU-Dropout-Linear
  EXPECT_EQ(M::SequenceTagger(M::SequenceTaggerOptions(10, 3))(
                torch::zeros({1, 4}, torch::kInt64)).size(2),
            3);
}

// The forward pass is one-hot -> Linear -> + PE -> blocks -> head, written out here.
TEST(SequenceTagger, ForwardIsTheDocumentedComposition) {
  torch::manual_seed(1);
  M::SequenceTagger model(M::SequenceTaggerOptions(6, 4).block(
      M::TransformerBlockOptions(8, 2).ffn_dim(16).mechanism("kv")));
  model->to(torch::kFloat64);
  model->eval();
  auto tokens = torch::randint(0, 6, {2, 5}, torch::kInt64);
  auto x = torch::nn::functional::one_hot(tokens, 6).to(torch::kFloat64).matmul(
               model->embed->weight.t()) + model->embed->bias;
  x = x + M::sinusoidal_positional_encoding(5, 8, torch::kFloat64);
  for (size_t i = 0; i < model->blocks->size(); ++i) {
    x = model->blocks->ptr<M::TransformerBlockImpl>(i)->forward(x);
  }
  EXPECT_LE(max_abs(model(tokens) - model->head->forward(x)), 1e-12);
}

// norm_first: Pre-LN blocks, then a final LayerNorm before the head.
TEST(SequenceTagger, PreLnVariantIsTheDocumentedComposition) {
  torch::manual_seed(2);
  M::SequenceTagger model(
      M::SequenceTaggerOptions(6, 4).block(
          M::TransformerBlockOptions(8, 2).ffn_dim(16).norm_first(true)));
  model->to(torch::kFloat64);
  model->eval();
  ASSERT_FALSE(model->final_norm.is_empty());
  EXPECT_TRUE(model->blocks->ptr<M::TransformerBlockImpl>(0)->options.norm_first());
  auto tokens = torch::randint(0, 6, {2, 5}, torch::kInt64);
  auto x = torch::nn::functional::one_hot(tokens, 6).to(torch::kFloat64).matmul(
               model->embed->weight.t()) + model->embed->bias;
  x = x + M::sinusoidal_positional_encoding(5, 8, torch::kFloat64);
  for (size_t i = 0; i < model->blocks->size(); ++i) {
    x = model->blocks->ptr<M::TransformerBlockImpl>(i)->forward(x);
  }
  EXPECT_LE(max_abs(model(tokens) - model->head->forward(model->final_norm(x))), 1e-12);
  EXPECT_TRUE(M::SequenceTagger(M::SequenceTaggerOptions(6, 4))->final_norm.is_empty());
}

// Attention is bidirectional: the last token changes the first position's logits. Padding is
// honoured: padded tokens do not change the unpadded positions.
TEST(SequenceTagger, BidirectionalAndPaddingForEveryMechanism) {
  for (const auto& name : kvq::mechanism_names()) {
    SCOPED_TRACE(name);
    torch::manual_seed(2);
    M::SequenceTagger model(
        M::SequenceTaggerOptions(10, 10).block(
            M::TransformerBlockOptions(16, 2).ffn_dim(32).mechanism(name)));
    model->to(torch::kFloat64);
    model->eval();
    auto tokens = torch::randint(0, 10, {2, 8}, torch::kInt64);
    auto logits = model(tokens);
    const double scale = max_abs(logits);
    auto other = tokens.clone();
    other.index_put_({torch::indexing::Slice(), 7}, (tokens.select(1, 7) + 1) % 10);
    EXPECT_GT(max_abs(model(other).select(1, 0) - logits.select(1, 0)), 1e-6 * scale);

    auto mask = torch::zeros({2, 8}, torch::kBool);
    mask.index_put_({torch::indexing::Slice(), torch::indexing::Slice(6)}, true);
    auto padded = model(tokens, mask);
    auto changed = model(other, mask);  // differs from tokens only at the padded position 7
    EXPECT_LE(max_abs(changed.narrow(1, 0, 6) - padded.narrow(1, 0, 6)), 1e-10 * scale);
  }
}

TEST(SequenceTagger, BadOptionsAndInputsNameTheArgument) {
  using kvq_test::expect_error_naming;
  expect_error_naming([] { M::SequenceTagger(M::SequenceTaggerOptions(0, 10)); }, {"vocab_size"},
                      "empty vocabulary");
  expect_error_naming([] { M::SequenceTagger(M::SequenceTaggerOptions(10, 0)); }, {"num_classes"},
                      "no classes");
  expect_error_naming(
      [] {
        M::SequenceTagger(
            M::SequenceTaggerOptions(10, 10).block(M::TransformerBlockOptions(30, 4)));
      },
      {"d_model", "num_heads"}, "d_model not a multiple");
  expect_error_naming([] { M::SequenceTagger(M::SequenceTaggerOptions(10, 10).num_layers(0)); },
                      {"num_layers"}, "no layers");
  expect_error_naming(
      [] {
        M::SequenceTagger(
            M::SequenceTaggerOptions(10, 10).block(
                M::TransformerBlockOptions(64, 2).mechanism("intention").projection("kv-pos")));
      },
      {"kv-pos"}, "kv-pos without a softmax");
  M::SequenceTagger model(M::SequenceTaggerOptions(10, 10));
  expect_error_naming([&] { model(torch::full({1, 3}, 10, torch::kInt64)); }, {"tokens"},
                      "token out of range");
  expect_error_naming([&] { model(torch::zeros({3}, torch::kInt64)); }, {"tokens"}, "1-D tokens");
}

}  // namespace
