// The in-context regressor (Intention paper, few-shot experiment): shapes for every mechanism, the
// exact ridge construction of one intention head through the ordinary forward (and its failure
// with softmax), context padding, permutation invariance, option and input checks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "kvq/data/regression_episodes.h"
#include "kvq/models/in_context_regressor.h"
#include "kvq/registry.h"
#include "test_files.h"

namespace {

namespace D = kvq::data;
namespace M = kvq::models;
using kvq_test_files::expect_error;

double max_abs(const torch::Tensor& x) { return x.abs().max().item<double>(); }

// max |out - ref| / max |ref|, in float64.
double rel_err(const torch::Tensor& out, const torch::Tensor& ref) {
  return max_abs(out.to(torch::kFloat64) - ref.to(torch::kFloat64)) /
         max_abs(ref.to(torch::kFloat64));
}

D::RegressionEpisode linear_episode(int64_t n, uint64_t seed,
                                    torch::ScalarType dtype = torch::kFloat64) {
  return D::make_regression_episode(
      D::RegressionKind::Linear, 4, seed,
      D::RegressionEpisodeOptions().x_dim(4).num_context(n).num_targets(5).noise_std(0.1).dtype(
          dtype));
}

// The regressor's default layers (Pre-LN, feed-forward 4 d, GELU, no dropout) at width d_model.
M::TransformerBlockOptions icr_block(int64_t d_model, int64_t num_heads) {
  return M::TransformerBlockOptions(d_model, num_heads)
      .activation("gelu")
      .dropout(0.0)
      .norm_first(true);
}

M::InContextRegressor ridge_model(const M::InContextRegressorOptions& options, double alpha,
                                  torch::ScalarType dtype) {
  M::InContextRegressor model(options);
  model->to(dtype);
  M::set_ridge_weights(model, alpha);
  model->eval();
  return model;
}

TEST(InContextRegressor, ShapesAndGradientsForEveryMechanism) {
  for (const auto& name : kvq::mechanism_names()) {
    SCOPED_TRACE(name);
    torch::manual_seed(0);
    M::InContextRegressor model(
        M::InContextRegressorOptions(3, 2).block(icr_block(16, 2).mechanism(name)).num_layers(2));
    auto out = model(torch::randn({2, 5, 3}), torch::randn({2, 5, 2}), torch::randn({2, 4, 3}));
    ASSERT_EQ(out.sizes(), (std::vector<int64_t>{2, 4, 2}));
    EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
    out.pow(2).sum().backward();
    for (const auto& p : model->named_parameters()) {
      EXPECT_TRUE(p.value().grad().defined()) << p.key();
    }
  }
  M::InContextRegressor mixed(
      M::InContextRegressorOptions(1, 1).num_layers(2).mechanisms({"intention", "softmax"}));
  EXPECT_EQ(mixed->layers->ptr<M::InContextRegressorLayerImpl>(0)->mechanism, "intention");
  EXPECT_EQ(mixed->layers->ptr<M::InContextRegressorLayerImpl>(1)->mechanism, "softmax");
  // The feature map: phi(x) feeds both embeddings, so x_embed reads F features.
  M::InContextRegressor featured(
      M::InContextRegressorOptions(3, 1).block(icr_block(16, 4)).feature_dim(12));
  ASSERT_FALSE(featured->features.is_empty());
  EXPECT_EQ(featured->x_embed->weight.sizes(), (std::vector<int64_t>{16, 12}));
  EXPECT_EQ(featured->xy_embed->weight.sizes(), (std::vector<int64_t>{16, 13}));
  auto x = torch::randn({2, 5, 3}), y = torch::randn({2, 5, 1}), t = torch::randn({2, 4, 3});
  featured(x, y, t).sum().backward();
  EXPECT_TRUE(featured->features->parameters()[0].grad().defined());
  auto pure = M::InContextRegressor(M::ridge_construction_options(4, 1));
  EXPECT_TRUE(pure->features.is_empty());
  EXPECT_EQ(pure->layers->size(), 1u);
  EXPECT_TRUE(pure->final_norm.is_empty());
  auto layer = pure->layers->ptr<M::InContextRegressorLayerImpl>(0);
  EXPECT_TRUE(layer->norm1.is_empty() && layer->norm2.is_empty() && layer->linear1.is_empty());
}

// One intention head with the weights of set_ridge_weights equals ridge_posterior_mean on linear
// episodes (dx = 4), through the model's ordinary forward: d_model = dx + dy and a wider,
// zero-padded head; alpha fixed or learnable (softplus + floor); qkv or tied kv projection.
TEST(InContextRegressor, RidgeConstructionIsExactInFloat64) {
  double worst = 0;
  for (int64_t d_model : {5, 8}) {
    for (bool learn_alpha : {false, true}) {
      for (const char* projection : {"qkv", "kv"}) {
        auto options = M::ridge_construction_options(4, 1);
        options.block().d_model(d_model).learn_alpha(learn_alpha).projection(projection);
        for (int64_t n : {2, 8, 32}) {
          const auto e = linear_episode(n, 100 + n);
          for (double alpha : {1e-2, 0.1, 1.0, 10.0, 100.0}) {
            auto model = ridge_model(options, alpha, torch::kFloat64);
            auto attn = model->layers->ptr<M::InContextRegressorLayerImpl>(0)->attn;
            EXPECT_NEAR(attn->alpha().item<double>(), alpha, 1e-14 * alpha);
            const double err = rel_err(model(e.context_x, e.context_y, e.target_x),
                                       D::ridge_posterior_mean(e.context_x, e.context_y,
                                                               e.target_x, alpha));
            worst = std::max(worst, err);
            EXPECT_LE(err, 1e-10) << "d_model " << d_model << " learn_alpha " << learn_alpha
                                  << " " << projection << " N " << n << " alpha " << alpha;
          }
        }
      }
    }
  }
  std::cout << "[ridge construction] float64 max rel err " << worst << "\n";
}

// The same in float32 against the float64 ridge solution of the float32 inputs. alpha >= 0.1 with
// unit-scale inputs keeps cond(X^T X + alpha I) below ~1e3.
TEST(InContextRegressor, RidgeConstructionInFloat32) {
  double worst = 0;
  for (int64_t n : {2, 8, 32}) {
    const auto e = linear_episode(n, 200 + n, torch::kFloat32);
    for (double alpha : {0.1, 1.0, 10.0}) {
      auto model = ridge_model(M::ridge_construction_options(4, 1), alpha, torch::kFloat32);
      auto out = model(e.context_x, e.context_y, e.target_x);
      EXPECT_EQ(out.scalar_type(), torch::kFloat32);
      const double err = rel_err(out, D::ridge_posterior_mean(e.context_x.to(torch::kFloat64),
                                                              e.context_y.to(torch::kFloat64),
                                                              e.target_x.to(torch::kFloat64),
                                                              alpha));
      worst = std::max(worst, err);
      EXPECT_LE(err, 1e-4) << "N " << n << " alpha " << alpha;
    }
  }
  std::cout << "[ridge construction] float32 max rel err " << worst << "\n";
}

// Softmax attention with the same weights is a kernel smoother of y, not the ridge solution.
TEST(InContextRegressor, SoftmaxWithTheSameWeightsIsNotRidge) {
  for (const char* mechanism : {"softmax", "linear"}) {
    for (int64_t n : {2, 8, 32}) {
      const auto e = linear_episode(n, 300 + n);
      // The construction's options with the mechanism swapped; learn_alpha (false) does not
      // apply to it and is refused unless reset (layer_attention).
      auto options = M::ridge_construction_options(4, 1);
      options.block(M::layer_block(options.block(), mechanism));
      auto model = ridge_model(options, 1.0, torch::kFloat64);
      const double err = rel_err(model(e.context_x, e.context_y, e.target_x),
                                 D::ridge_posterior_mean(e.context_x, e.context_y, e.target_x, 1.0));
      std::cout << "[" << mechanism << " with ridge weights] N " << n << " rel err " << err
                << "\n";
      EXPECT_GT(err, 0.1) << mechanism << " N " << n;
    }
  }
}

// Padded context pairs (true in the mask, any values) change nothing: each row equals the model
// on its unpadded prefix. Multi-layer, with feed-forward and LayerNorm.
TEST(InContextRegressor, ContextPaddingEqualsTruncation) {
  for (const char* mechanism : {"intention", "softmax", "linear", "softmax-intention"}) {
    SCOPED_TRACE(mechanism);
    torch::manual_seed(3);
    M::InContextRegressor model(
        M::InContextRegressorOptions(2, 1).block(icr_block(16, 2).mechanism(mechanism)));
    model->to(torch::kFloat64);
    model->eval();
    auto opts = torch::TensorOptions().dtype(torch::kFloat64);
    auto cx = torch::randn({2, 7, 2}, opts), cy = torch::randn({2, 7, 1}, opts),
         tx = torch::randn({2, 3, 2}, opts);
    auto mask = torch::zeros({2, 7}, torch::kBool);
    mask[0].narrow(0, 4, 3).fill_(true);
    auto out = model(cx, cy, tx, mask);
    auto row0 = model(cx.narrow(0, 0, 1).narrow(1, 0, 4), cy.narrow(0, 0, 1).narrow(1, 0, 4),
                      tx.narrow(0, 0, 1));
    auto row1 = model(cx.narrow(0, 1, 1), cy.narrow(0, 1, 1), tx.narrow(0, 1, 1));
    EXPECT_LE(max_abs(out.narrow(0, 0, 1) - row0), 1e-12);
    EXPECT_LE(max_abs(out.narrow(0, 1, 1) - row1), 1e-12);
  }
}

// Permuting the context leaves the prediction unchanged (except under the kv-pos projection, whose
// score term depends on the key position); a target's prediction does not depend on the other
// targets.
TEST(InContextRegressor, ContextPermutationAndTargetIndependence) {
  for (const auto& name : kvq::mechanism_names()) {
    SCOPED_TRACE(name);
    torch::manual_seed(4);
    M::InContextRegressor model(
        M::InContextRegressorOptions(2, 1).block(icr_block(8, 2).mechanism(name)));
    model->to(torch::kFloat64);
    model->eval();
    auto opts = torch::TensorOptions().dtype(torch::kFloat64);
    auto cx = torch::randn({2, 6, 2}, opts), cy = torch::randn({2, 6, 1}, opts),
         tx = torch::randn({2, 5, 2}, opts);
    auto out = model(cx, cy, tx);
    auto perm = torch::tensor({3, 0, 5, 1, 4, 2}, torch::kInt64);
    if (kvq::find_mechanism(name).projection != kvq::Projection::KVPos) {
      EXPECT_LE(max_abs(model(cx.index_select(1, perm), cy.index_select(1, perm), tx) - out),
                1e-12);
    }
    EXPECT_LE(max_abs(model(cx, cy, tx.narrow(1, 2, 1)) - out.narrow(1, 2, 1)), 1e-12);
  }
}

TEST(InContextRegressor, BadInputsAndOptionsNameTheArgument) {
  M::InContextRegressor model(M::InContextRegressorOptions(3, 1).block(icr_block(8, 2)));
  auto cx = torch::zeros({2, 5, 3}), cy = torch::zeros({2, 5, 1}), tx = torch::zeros({2, 4, 3});
  expect_error([&] { model(cx, torch::zeros({2, 5, 2}), tx); },
               {"InContextRegressor", "context_y", "(B, N, dy) = (2, 5, 1)", "[2, 5, 2]"});
  expect_error([&] { model(torch::zeros({2, 5, 2}), cy, tx); },
               {"context_x", "dx = 3", "[2, 5, 2]"});
  expect_error([&] { model(torch::zeros({2, 0, 3}), torch::zeros({2, 0, 1}), tx); },
               {"context_x", "N >= 1"});
  expect_error([&] { model(cx, cy, torch::zeros({1, 4, 3})); },
               {"target_x", "(B, M, dx) = (2, M, 3)", "[1, 4, 3]"});
  expect_error([&] { model(cx, cy, tx, torch::zeros({2, 4}, torch::kBool)); },
               {"context_padding_mask", "(B, N) = (2, 5)"});

  using O = M::InContextRegressorOptions;
  expect_error([] { M::InContextRegressor(O(0, 1)); }, {"x_dim"});
  expect_error([] { M::InContextRegressor(O(1, 1).block(icr_block(6, 4))); },
               {"d_model", "num_heads"});
  expect_error([] { M::InContextRegressor(O(1, 1).block(icr_block(8, 2).norm_first(false))); },
               {"norm_first"});
  expect_error([] { M::InContextRegressor(O(1, 1).block(icr_block(8, 2).mechanism("nope"))); },
               {"mechanism 'nope'", "valid mechanisms", "intention"});
  expect_error([] { M::InContextRegressor(O(1, 1).num_layers(2).mechanisms({"softmax"})); },
               {"mechanisms", "per layer (2)"});
  expect_error([] { M::InContextRegressor(O(1, 1).block(icr_block(8, 2).activation("tanh"))); },
               {"activation"});

  auto ridge = M::ridge_construction_options(4, 1);
  expect_error([&] {
    M::InContextRegressor m(O(ridge).num_layers(2));
    M::set_ridge_weights(m, 1.0);
  }, {"set_ridge_weights", "num_layers = 1"});
  expect_error([&] {
    auto narrow = ridge;
    narrow.block().d_model(4);
    M::InContextRegressor m(narrow);
    M::set_ridge_weights(m, 1.0);
  }, {"d_model >= x_dim + y_dim = 5", "got 4"});
  expect_error([&] {
    M::InContextRegressor m(O(ridge).feed_forward(true));
    M::set_ridge_weights(m, 1.0);
  }, {"feed_forward"});
  expect_error([&] {
    M::InContextRegressor m(O(ridge).feature_dim(8));
    M::set_ridge_weights(m, 1.0);
  }, {"feature_dim = 0"});
  expect_error([] { M::InContextRegressor(O(1, 1).feature_dim(-1)); }, {"feature_dim"});
  expect_error([&] {
    M::InContextRegressor m(ridge);
    M::set_ridge_weights(m, 1e-5);
  }, {"alpha", "alpha_floor"});
}

}  // namespace
