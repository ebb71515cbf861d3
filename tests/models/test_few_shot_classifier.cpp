// The few-shot classifier: encoder shapes and per-image normalisation, the documented composition,
// output shapes for every registered mechanism, option and input checks, and a tiny model that
// fits one small batch of episodes.
//
// Overfit case: 2 episodes of 3-way 2-shot 2-query 8 x 8 images; each class of an episode is a
// random pattern and its images are that pattern plus noise (0.3 N(0, 1)), so the support set
// tells which pattern has which label. Model: 2 encoder blocks of 8 channels, d_model 16, 2 heads,
// one layer, no dropout, float32, Adam 1e-2. The initial loss is about ln 3 = 1.1 nats; the bound
// 0.01 nats is a near-perfect fit, to be reached within kMaxSteps = 300 steps.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <string>

#include "kvq/data/few_shot.h"
#include "kvq/kvq.h"
#include "kvq/models/few_shot_classifier.h"
#include "test_utils.h"

namespace {

namespace M = kvq::models;
using kvq_test::expect_error_naming;

constexpr int kMaxSteps = 300;
constexpr double kLossBound = 0.01;

// Pre-LN layers of width 16 (feed-forward 32) running `mechanism`, without dropout.
M::TransformerBlockOptions tiny_block(const std::string& mechanism, int64_t num_heads = 2) {
  return M::TransformerBlockOptions(16, num_heads)
      .ffn_dim(32)
      .dropout(0.0)
      .norm_first(true)
      .mechanism(mechanism);
}

M::FewShotClassifierOptions tiny(int64_t num_ways, const std::string& mechanism) {
  return M::FewShotClassifierOptions(num_ways)
      .image_size(8)
      .encoder_blocks(2)
      .encoder_channels(8)
      .norm_groups(2)
      .block(tiny_block(mechanism))
      .num_layers(1);
}

TEST(ConvEncoder, OutputWidthFollowsTheBlocks) {
  torch::manual_seed(0);
  M::ConvEncoder conv4;  // Snell et al.'s Conv-4 on 28 x 28: 28 -> 14 -> 7 -> 3 -> 1
  EXPECT_EQ(conv4->output_dim(), 64);
  EXPECT_EQ(conv4(torch::rand({3, 1, 28, 28})).sizes(), (std::vector<int64_t>{3, 64}));
  for (const char* norm : {"group", "batch", "none"}) {
    M::ConvEncoder small(M::ConvEncoderOptions()
                             .in_channels(3)
                             .image_size(10)
                             .channels(4)
                             .num_blocks(2)
                             .norm(norm)
                             .norm_groups(2));
    EXPECT_EQ(small->output_dim(), 4 * 2 * 2) << norm;  // 10 -> 5 -> 2
    EXPECT_EQ(small(torch::rand({5, 3, 10, 10})).sizes(), (std::vector<int64_t>{5, 16})) << norm;
  }
}

// With GroupNorm an image's features do not depend on the other images of the call, in training
// and evaluation mode alike (the reason it is the default).
TEST(ConvEncoder, GroupNormFeaturesArePerImage) {
  torch::manual_seed(1);
  M::ConvEncoder encoder(
      M::ConvEncoderOptions().image_size(8).channels(8).num_blocks(2).norm_groups(4));
  encoder->to(torch::kFloat64);
  auto images = torch::rand({4, 1, 8, 8}, torch::kFloat64);
  for (bool training : {true, false}) {
    encoder->train(training);
    auto together = encoder(images);
    auto alone = encoder(images.narrow(0, 2, 1));
    EXPECT_TRUE(together.narrow(0, 2, 1).allclose(alone, 0, 1e-12)) << "training " << training;
  }
}

TEST(ConvEncoder, BadOptionsNameTheArgument) {
  expect_error_naming([] { M::ConvEncoder(M::ConvEncoderOptions().image_size(8).num_blocks(4)); },
                      {"image_size"}, "8 pixels cannot be halved 4 times");
  expect_error_naming([] { M::ConvEncoder(M::ConvEncoderOptions().norm("layer")); }, {"norm"},
                      "unknown norm");
  expect_error_naming([] { M::ConvEncoder(M::ConvEncoderOptions().channels(12).norm_groups(8)); },
                      {"norm_groups"}, "groups do not divide channels");
  expect_error_naming([] { M::ConvEncoder(M::ConvEncoderOptions().channels(0)); }, {"channels"},
                      "no channels");
  M::ConvEncoder encoder;
  expect_error_naming([&] { encoder(torch::rand({2, 1, 28, 27})); }, {"images"}, "not square");
  expect_error_naming([&] { encoder(torch::rand({2, 3, 28, 28})); }, {"images"}, "3 channels");
}

TEST(FewShotClassifier, OutputShapeForEveryMechanism) {
  const int64_t B = 2, N = 3, S = 6, Q = 5;
  for (const auto& name : kvq::mechanism_names()) {
    SCOPED_TRACE(name);
    torch::manual_seed(2);
    M::FewShotClassifier model(tiny(N, name).num_layers(2));
    auto labels =
        torch::tensor({0, 1, 2, 2, 1, 0, 1, 1, 0, 2, 2, 0}, torch::kInt64).reshape({B, S});
    auto logits = model(torch::rand({B, S, 1, 8, 8}), labels, torch::rand({B, Q, 1, 8, 8}));
    EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{B, Q, N}));
    EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
    // One support example of one class is enough to run (no N K structure is required).
    auto one = model(torch::rand({1, 1, 1, 8, 8}), torch::zeros({1, 1}, torch::kInt64),
                     torch::rand({1, 2, 1, 8, 8}));
    EXPECT_EQ(one.sizes(), (std::vector<int64_t>{1, 2, N}));
  }
}

TEST(FewShotClassifier, PerLayerMechanisms) {
  M::FewShotClassifier model(tiny(2, "softmax").num_layers(2).mechanisms({"intention", "kv"}));
  ASSERT_EQ(model->blocks->size(), 2u);
  EXPECT_EQ(model->blocks->ptr<M::SupportAttentionBlockImpl>(0)->cross_attn->options.mechanism(),
            "intention");
  EXPECT_EQ(model->blocks->ptr<M::SupportAttentionBlockImpl>(1)->cross_attn->options.mechanism(),
            "kv");
}

// forward = encode, then keys P(f), values P(f) + E[label], queries P(f_query), the blocks, the
// final LayerNorm and the head; encode takes (B, S, C, H, W) as well as (M, C, H, W).
TEST(FewShotClassifier, ForwardIsTheDocumentedComposition) {
  torch::manual_seed(3);
  M::FewShotClassifier model(tiny(3, "softmax-intention").num_layers(2));
  model->to(torch::kFloat64);
  model->eval();
  auto support = torch::rand({2, 4, 1, 8, 8}, torch::kFloat64);
  auto query = torch::rand({2, 3, 1, 8, 8}, torch::kFloat64);
  auto labels = torch::tensor({2, 0, 1, 0, 1, 1, 2, 0}, torch::kInt64).reshape({2, 4});

  auto fs = model->encode(support), fq = model->encode(query);
  ASSERT_EQ(fs.sizes(), (std::vector<int64_t>{2, 4, 32}));
  EXPECT_TRUE(fs[1].allclose(model->encode(support[1]), 0, 1e-12));
  auto P = [&](const torch::Tensor& f) { return model->feature_norm(model->feature_proj(f)); };
  auto keys = P(fs), values = P(fs) + model->label_embedding(labels), x = P(fq);
  for (size_t i = 0; i < model->blocks->size(); ++i) {
    x = model->blocks->ptr<M::SupportAttentionBlockImpl>(i)->forward(x, keys, values);
  }
  auto want = model->head(model->final_norm(x));
  auto logits = model(support, labels, query);
  EXPECT_TRUE(logits.allclose(want, 0, 1e-12));
  EXPECT_TRUE(model->forward_features(fs, labels, fq).allclose(want, 0, 1e-12));

  // The support set is a set: reordering it (labels along) leaves every logit unchanged.
  auto order = torch::tensor({3, 1, 0, 2}, torch::kInt64);
  auto reordered = model(support.index_select(1, order), labels.index_select(1, order), query);
  EXPECT_TRUE(reordered.allclose(logits, 0, 1e-10));
  // The encoder features feed the prototype baseline directly.
  EXPECT_EQ(kvq::data::prototype_logits(fs, labels, fq, 3).sizes(),
            (std::vector<int64_t>{2, 3, 3}));
}

// readout "labels": at initialisation (W_q = W_k = I, E with orthonormal rows) one layer of one
// head is exactly the classical rule the mechanism contains, scored through E E^T:
//   intention: logits = tau (X (K^T K + alpha I)^{-1} K^T Y) E E^T   (ridge on one-hot labels Y)
//   softmax:   logits = tau (softmax(X K^T / sqrt(d)) Y) E E^T       (soft nearest neighbour)
// with K = P(support features), X = P(query features). float64; E E^T = I to float32 precision
// (E is initialised in float32).
TEST(FewShotClassifier, LabelReadoutIsRidgeOrSoftNearestNeighbour) {
  for (const char* mechanism : {"intention", "softmax"}) {
    SCOPED_TRACE(mechanism);
    torch::manual_seed(5);
    M::FewShotClassifier model(
        tiny(3, mechanism).block(tiny_block(mechanism, 1)).readout("labels"));
    model->to(torch::kFloat64);
    model->eval();
    EXPECT_EQ(model->blocks->size(), 0u);
    auto support = torch::rand({2, 5, 1, 8, 8}, torch::kFloat64);
    auto query = torch::rand({2, 4, 1, 8, 8}, torch::kFloat64);
    auto labels = torch::tensor({2, 0, 1, 0, 1, 1, 2, 0, 2, 2}, torch::kInt64).reshape({2, 5});
    auto fs = model->encode(support), fq = model->encode(query);
    auto P = [&](const torch::Tensor& f) { return model->feature_norm(model->feature_proj(f)); };
    auto K = P(fs), X = P(fq);
    auto Y = torch::one_hot(labels, 3).to(torch::kFloat64);  // (B, S, N)
    const auto E = model->label_embedding->weight;
    EXPECT_TRUE(torch::matmul(E, E.t()).allclose(torch::eye(3, torch::kFloat64), 0, 1e-6));
    torch::Tensor scores;
    if (std::string(mechanism) == "intention") {
      auto A = torch::matmul(K.transpose(1, 2), K) +
               model->readout_alpha() * torch::eye(16, torch::kFloat64);
      scores = torch::matmul(torch::matmul(X, torch::linalg_inv(A)), torch::matmul(K.transpose(1, 2), Y));
    } else {
      scores = torch::matmul(torch::softmax(torch::matmul(X, K.transpose(1, 2)) / 4.0, -1), Y);
    }
    auto want = model->readout_log_scale.exp() * torch::matmul(scores, torch::matmul(E, E.t()));
    auto logits = model(support, labels, query);
    EXPECT_TRUE(logits.allclose(want, 0, 1e-10));
    EXPECT_TRUE(model->forward_features(fs, labels, fq).allclose(want, 0, 1e-10));
  }
}

// readout_features "encoder" with the mlp encoder on points (6-channel 1x1 images): no projection;
// the readout is the same rule on the encoder's features f normalised by a parameter-free
// LayerNorm; one shot, softmax's prediction is the nearest normalised support feature.
TEST(FewShotClassifier, LabelReadoutOnEncoderFeatures) {
  for (const char* mechanism : {"intention", "softmax"}) {
    SCOPED_TRACE(mechanism);
    torch::manual_seed(7);
    M::FewShotClassifier model(tiny(3, mechanism)
                                   .in_channels(6)
                                   .image_size(1)
                                   .encoder("mlp")
                                   .encoder_blocks(2)
                                   .encoder_channels(8)
                                   .block(tiny_block(mechanism, 1))
                                   .readout("labels")
                                   .readout_features("encoder"));
    model->to(torch::kFloat64);
    EXPECT_TRUE(model->feature_proj.is_empty() && model->readout_k.is_empty() &&
                model->readout_q.is_empty() && model->encoder.is_empty());
    EXPECT_EQ(model->feature_dim(), 8);
    auto support = torch::randn({2, 3, 6, 1, 1}, torch::kFloat64);
    auto query = torch::randn({2, 4, 6, 1, 1}, torch::kFloat64);
    auto labels = torch::tensor({2, 0, 1, 1, 2, 0}, torch::kInt64).reshape({2, 3});
    // The documented encoder: Linear - ReLU - Linear on the flattened points.
    auto mlp = [&](const torch::Tensor& x) {
      const auto& l1 = *model->mlp_encoder->ptr<torch::nn::LinearImpl>(0);
      const auto& l2 = *model->mlp_encoder->ptr<torch::nn::LinearImpl>(2);
      auto h = torch::relu(torch::matmul(x.flatten(2), l1.weight.t()) + l1.bias);
      return torch::matmul(h, l2.weight.t()) + l2.bias;
    };
    EXPECT_TRUE(model->encode(support).allclose(mlp(support), 0, 1e-12));
    auto ln = [](const torch::Tensor& f) {
      auto c = f - f.mean(-1, true);
      return c / (c.pow(2).mean(-1, true) + 1e-5).sqrt();
    };
    auto K = ln(mlp(support)), X = ln(mlp(query));
    auto Y = torch::one_hot(labels, 3).to(torch::kFloat64);
    const auto E = model->label_embedding->weight;
    torch::Tensor scores;
    if (std::string(mechanism) == "intention") {
      auto A = torch::matmul(K.transpose(1, 2), K) +
               model->readout_alpha() * torch::eye(8, torch::kFloat64);
      scores = torch::matmul(torch::matmul(X, torch::linalg_inv(A)),
                             torch::matmul(K.transpose(1, 2), Y));
    } else {
      scores = torch::matmul(
          torch::softmax(torch::matmul(X, K.transpose(1, 2)) / std::sqrt(8.0), -1), Y);
      auto nearest = (X.unsqueeze(2) - K.unsqueeze(1)).pow(2).sum(3).argmin(2);  // (B, M)
      auto predicted = model(support, labels, query).argmax(2);
      EXPECT_TRUE(torch::equal(predicted, labels.gather(1, nearest)));
    }
    auto want = model->readout_log_scale.exp() * torch::matmul(scores, torch::matmul(E, E.t()));
    EXPECT_TRUE(model(support, labels, query).allclose(want, 0, 1e-10));
  }
  expect_error_naming(
      [] { M::FewShotClassifier(tiny(3, "softmax").readout("labels").readout_features("raw")); },
      {"readout_features", "projected", "encoder"}, "unknown readout_features");
  expect_error_naming(
      [] {
        M::FewShotClassifier(
            tiny(3, "softmax").num_layers(2).readout("labels").readout_features("encoder"));
      },
      {"readout_features", "num_layers = 1"}, "encoder features with blocks");
  expect_error_naming([] { M::FewShotClassifier(tiny(3, "softmax").encoder("rnn")); },
                      {"encoder", "conv4", "mlp"}, "unknown encoder");
}

// readout "labels" with more layers: the first num_layers - 1 are blocks, the last the readout;
// every mechanism runs except the kv-pos projection, which the readout refuses by name.
TEST(FewShotClassifier, LabelReadoutForEveryMechanism) {
  auto labels = torch::tensor({0, 1, 2, 2, 1, 0, 1, 1, 0, 2, 2, 0}, torch::kInt64).reshape({2, 6});
  for (const auto& name : kvq::mechanism_names()) {
    SCOPED_TRACE(name);
    torch::manual_seed(2);
    auto options = tiny(3, name).num_layers(2).readout("labels");
    if (kvq::find_mechanism(name).projection == kvq::Projection::KVPos) {
      expect_error_naming([&] { M::FewShotClassifier{options}; }, {"kv-pos", "readout"},
                          "kv-pos readout");
      continue;
    }
    M::FewShotClassifier model(options);
    EXPECT_EQ(model->blocks->size(), 1u);
    auto logits = model(torch::rand({2, 6, 1, 8, 8}), labels, torch::rand({2, 5, 1, 8, 8}));
    EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, 5, 3}));
    EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  }
  expect_error_naming([] { M::FewShotClassifier(tiny(3, "softmax").readout("linear")); },
                      {"readout"}, "unknown readout");
}

TEST(FewShotClassifier, BadOptionsAndInputsNameTheArgument) {
  expect_error_naming([] { M::FewShotClassifier(tiny(0, "softmax")); }, {"num_ways"}, "0-way");
  expect_error_naming([] { M::FewShotClassifier(tiny(2, "softmax").num_layers(0)); },
                      {"num_layers"}, "no layers");
  expect_error_naming(
      [] {
        M::FewShotClassifier(
            tiny(2, "softmax").block(tiny_block("softmax").d_model(10).num_heads(4)));
      },
      {"d_model", "num_heads"}, "d_model not a multiple");
  expect_error_naming([] { M::FewShotClassifier(tiny(2, "nope")); }, {"mechanism"},
                      "unknown mechanism");
  expect_error_naming(
      [] { M::FewShotClassifier(tiny(2, "softmax").num_layers(2).mechanisms({"kv"})); },
      {"mechanisms"}, "per-layer list of the wrong length");
  expect_error_naming([] { M::FewShotClassifier(tiny(2, "softmax").norm_groups(3)); },
                      {"norm_groups"}, "groups do not divide the encoder channels");
  expect_error_naming(
      [] {
        M::FewShotClassifier(
            tiny(2, "softmax").block(tiny_block("softmax").scale(-1.0)));
      },
      {"scale"}, "negative scale");

  M::FewShotClassifier model(tiny(3, "softmax"));
  auto support = torch::rand({2, 4, 1, 8, 8}), query = torch::rand({2, 3, 1, 8, 8});
  auto labels = torch::tensor({0, 1, 2, 0, 1, 1, 2, 0}, torch::kInt64).reshape({2, 4});
  expect_error_naming([&] { model(support, labels + 1, query); }, {"support_labels"},
                      "label 3 in a 3-way model");
  expect_error_naming([&] { model(support, labels.narrow(1, 0, 3), query); }, {"support_labels"},
                      "fewer labels than support images");
  expect_error_naming([&] { model(support, labels.to(torch::kFloat32), query); },
                      {"support_labels"}, "float labels");
  expect_error_naming(
      [&] {
        model(torch::rand({2, 4, 1, 8, 9}), labels, query);
      },
      {"support_images"}, "wrong width");
  expect_error_naming(
      [&] {
        model(support, labels, torch::rand({2, 3, 8, 8}));
      },
      {"query_images"}, "no channel dimension");
  expect_error_naming(
      [&] {
        model(support, labels, torch::rand({1, 3, 1, 8, 8}));
      },
      {"query_images"}, "other batch size");
  expect_error_naming([&] { model(support.to(torch::kInt64), labels, query); }, {"support_images"},
                      "integer images");
  expect_error_naming([&] { model->encode(torch::rand({8, 8})); }, {"images"}, "2D image");
  expect_error_naming(
      [&] {
        model->forward_features(torch::rand({2, 4, 31}), labels, torch::rand({2, 3, 32}));
      },
      {"support_features"}, "feature width");
  expect_error_naming(
      [&] {
        model->forward_features(torch::rand({2, 4, 32}), labels, torch::rand({2, 3, 31}));
      },
      {"query_features"}, "feature width");
}

// Loss after training `mechanism` with `readout` on the fixed episodes; prints the initial and
// final loss.
double overfit(const std::string& mechanism, const std::string& readout = "head") {
  torch::manual_seed(4);
  const int64_t B = 2, N = 3, K = 2, Q = 2;
  auto patterns = torch::rand({B, N, 1, 8, 8});
  auto support_labels = torch::tensor({1, 0, 2, 2, 0, 1, 0, 2, 1, 1, 0, 2}).reshape({B, N * K});
  auto query_labels = torch::tensor({2, 1, 0, 0, 1, 2, 1, 0, 2, 2, 1, 0}).reshape({B, N * Q});
  auto images = [&](const torch::Tensor& labels) {
    auto clean = torch::stack(
        {patterns[0].index_select(0, labels[0]), patterns[1].index_select(0, labels[1])});
    return clean + 0.3 * torch::randn(clean.sizes());
  };
  auto support = images(support_labels), query = images(query_labels);
  M::FewShotClassifier model(tiny(N, mechanism).readout(readout));
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-2));
  double initial = 0, value = 0;
  int step = 0;
  for (;; ++step) {
    auto loss = torch::nn::functional::cross_entropy(
        model(support, support_labels, query).reshape({-1, N}), query_labels.reshape({-1}));
    value = loss.item<double>();
    if (step == 0) initial = value;
    if (value < kLossBound || step == kMaxSteps || !std::isfinite(value)) break;
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  std::cout << "[overfit] few-shot " << mechanism << " readout " << readout << " initial=" << initial << " final=" << value
            << " steps=" << step << std::endl;
  return value;
}

TEST(FewShotClassifier, OverfitsOneEpisodeBatch) {
  for (const char* readout : {"head", "labels"}) {
    for (const char* mechanism : {"softmax", "intention"}) {
      EXPECT_LT(overfit(mechanism, readout), kLossBound) << mechanism << " " << readout;
    }
  }
}

}  // namespace
