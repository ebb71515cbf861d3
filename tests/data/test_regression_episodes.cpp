// In-context regression episodes (Intention paper, few-shot experiment): each family follows its
// stated distribution, episodes are deterministic in the seed, and the exact baselines match float64
// formulas computed another way (dual form, explicit inverses).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "kvq/data/regression_episodes.h"
#include "test_files.h"

namespace {

namespace D = kvq::data;
using kvq_test_files::expect_error;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

double max_abs(const torch::Tensor& x) { return x.abs().max().item<double>(); }

// max |out - ref| / max |ref|.
double rel_err(const torch::Tensor& out, const torch::Tensor& ref) {
  return max_abs(out.to(torch::kFloat64) - ref.to(torch::kFloat64)) / max_abs(ref);
}

torch::Tensor randn(at::Generator& gen, torch::IntArrayRef size) {
  return torch::empty(size, kF64).normal_(0.0, 1.0, gen);
}

// w.x per point: x (B, P, dx), w (B, dx) -> (B, P, 1).
torch::Tensor w_dot_x(const torch::Tensor& x, const torch::Tensor& w) {
  return (x * w.unsqueeze(1)).sum(-1, /*keepdim=*/true);
}

TEST(RegressionEpisodes, KindNames) {
  EXPECT_EQ(D::regression_kind_names(), (std::vector<std::string>{"linear", "gp", "sinusoid"}));
  for (const auto& name : D::regression_kind_names()) {
    EXPECT_EQ(D::regression_kind_name(D::parse_regression_kind(name)), name);
  }
  expect_error([] { D::parse_regression_kind("cubic"); }, {"cubic", "linear, gp, sinusoid"});
}

TEST(RegressionEpisodes, ShapesDtypesAndLatents) {
  for (const auto& name : D::regression_kind_names()) {
    for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
      SCOPED_TRACE(name);
      const auto kind = D::parse_regression_kind(name);
      auto o = D::RegressionEpisodeOptions().num_context(5).num_targets(3).x_dim(4).dtype(dtype);
      const auto e = D::make_regression_episode(kind, 2, 1, o);
      const int64_t dx = kind == D::RegressionKind::Linear ? 4 : 1;
      EXPECT_EQ(e.context_x.sizes(), (std::vector<int64_t>{2, 5, dx}));
      EXPECT_EQ(e.context_y.sizes(), (std::vector<int64_t>{2, 5, 1}));
      EXPECT_EQ(e.target_x.sizes(), (std::vector<int64_t>{2, 3, dx}));
      EXPECT_EQ(e.target_y.sizes(), (std::vector<int64_t>{2, 3, 1}));
      EXPECT_EQ(e.target_f.sizes(), (std::vector<int64_t>{2, 3, 1}));
      for (const auto& t : {e.context_x, e.context_y, e.target_x, e.target_y, e.target_f}) {
        EXPECT_EQ(t.scalar_type(), dtype);
      }
      EXPECT_EQ(e.weights.defined(), kind == D::RegressionKind::Linear);
      EXPECT_EQ(e.length_scale.defined(), kind == D::RegressionKind::GP);
      EXPECT_EQ(e.amplitude.defined(), kind == D::RegressionKind::Sinusoid);
      EXPECT_EQ(e.phase.defined(), kind == D::RegressionKind::Sinusoid);
    }
  }
}

// Same seed, same episode; another seed, another; float32 episodes are the float64 draws cast.
TEST(RegressionEpisodes, DeterministicInTheSeed) {
  for (const auto& name : D::regression_kind_names()) {
    SCOPED_TRACE(name);
    const auto kind = D::parse_regression_kind(name);
    auto o = D::RegressionEpisodeOptions().num_context(6).num_targets(4).dtype(torch::kFloat64);
    torch::manual_seed(0);
    const auto a = D::make_regression_episode(kind, 3, 42, o);
    torch::manual_seed(1);  // the global RNG plays no part
    const auto b = D::make_regression_episode(kind, 3, 42, o);
    const auto c = D::make_regression_episode(kind, 3, 43, o);
    const auto f32 = D::make_regression_episode(kind, 3, 42, o.dtype(torch::kFloat32));
    for (auto field : {&D::RegressionEpisode::context_x, &D::RegressionEpisode::context_y,
                       &D::RegressionEpisode::target_x, &D::RegressionEpisode::target_y,
                       &D::RegressionEpisode::target_f}) {
      EXPECT_TRUE(torch::equal(a.*field, b.*field));
      EXPECT_FALSE(torch::equal(a.*field, c.*field));
      EXPECT_TRUE(torch::equal((a.*field).to(torch::kFloat32), f32.*field));
    }
  }
}

// y = w.x + eps. B = 4000 episodes of N + M = 16 points: n = 64000 residuals r = y - w.x with
// sigma = 0.3. Bounds at 4 standard errors: SE(mean r) = sigma / sqrt(n) = 1.2e-3,
// SE(std r) ~ sigma / sqrt(2 n) = 8.4e-4. Weights: 16000 draws of N(0, 2^2), SE(std) = 0.011;
// inputs: 256000 draws of N(0, 1), SE(std) = 1.4e-3.
TEST(RegressionEpisodes, LinearTargetsAreWeightsDotXPlusNoise) {
  const double sigma = 0.3, weight_std = 2.0;
  auto o = D::RegressionEpisodeOptions()
               .num_context(10)
               .num_targets(6)
               .x_dim(4)
               .noise_std(sigma)
               .weight_std(weight_std)
               .dtype(torch::kFloat64);
  const auto e = D::make_regression_episode(D::RegressionKind::Linear, 4000, 11, o);
  EXPECT_LE(max_abs(e.target_f - w_dot_x(e.target_x, e.weights)), 1e-12);
  auto r = torch::cat({e.context_y - w_dot_x(e.context_x, e.weights), e.target_y - e.target_f}, 1);
  const double n = static_cast<double>(r.numel());
  const double mean = r.mean().item<double>(), sd = r.std().item<double>();
  std::cout << "[linear] residual mean " << mean << " std " << sd << " (sigma " << sigma << ")\n";
  EXPECT_LE(std::abs(mean), 4 * sigma / std::sqrt(n));
  EXPECT_LE(std::abs(sd - sigma), 4 * sigma / std::sqrt(2 * n));
  const double w_std = e.weights.std().item<double>();
  EXPECT_LE(std::abs(w_std - weight_std), 4 * weight_std / std::sqrt(2.0 * e.weights.numel()));
  auto x = torch::cat({e.context_x, e.target_x}, 1);
  EXPECT_LE(std::abs(x.std().item<double>() - 1.0), 4 / std::sqrt(2.0 * x.numel()));
}

// f at 5 fixed points, n = 20000 joint draws, l = 0.5, s^2 = 2.25. Each entry of the empirical
// covariance C_ij = mean(f_i f_j) (zero mean by construction) has standard error
// sqrt((K_ii K_jj + K_ij^2) / n) for Gaussian f; every entry must lie within 4.5 SE of K_ij.
TEST(RegressionEpisodes, GPSamplesHaveTheKernelCovariance) {
  const int64_t n = 20000;
  const double signal_var = 2.25;
  auto x = torch::linspace(-1, 1, 5, kF64).view({1, 5, 1});
  auto l = torch::full({}, 0.5, kF64);
  auto gen = at::detail::createCPUGenerator(5);
  auto f = D::sample_gp_prior(x.expand({n, 5, 1}), l, signal_var, 1e-10, gen).squeeze(-1);
  auto cov = f.t().mm(f) / static_cast<double>(n);
  auto k = D::rbf_kernel(x, x, l, signal_var)[0];
  auto se = ((k.diag().unsqueeze(1) * k.diag().unsqueeze(0) + k * k) / n).sqrt();
  const double worst = ((cov - k).abs() / se).max().item<double>();
  std::cout << "[gp] max |C - K| / SE = " << worst << "\n";
  EXPECT_LE(worst, 4.5);
}

// GP episodes with a fixed l (l_min == l_max): l is that value, x lies in its range, target
// noise has the stated std, and E[f(x_i) f(x_j) | x] = k(x_i, x_j) at the random inputs: the
// per-episode statistics z = f_0 f_1 - k(x_0, x_1) and z = f_0^2 - s^2 have mean 0, checked at
// 4 standard errors of their empirical mean over B = 4000 episodes.
TEST(RegressionEpisodes, GPEpisodesFollowTheirPrior) {
  const double sigma = 0.2, s = 1.5, l = 0.3;
  auto o = D::RegressionEpisodeOptions()
               .num_context(3)
               .num_targets(3)
               .noise_std(sigma)
               .signal_std(s)
               .length_scale_min(l)
               .length_scale_max(l)
               .dtype(torch::kFloat64);
  const int64_t batch = 4000;
  const auto e = D::make_regression_episode(D::RegressionKind::GP, batch, 3, o);
  EXPECT_TRUE(torch::equal(e.length_scale, torch::full({batch}, l, kF64)));
  auto x = torch::cat({e.context_x, e.target_x}, 1);
  EXPECT_GE(x.min().item<double>(), -2.0);
  EXPECT_LE(x.max().item<double>(), 2.0);
  auto r = e.target_y - e.target_f;
  const double count = static_cast<double>(r.numel());
  EXPECT_LE(std::abs(r.mean().item<double>()), 4 * sigma / std::sqrt(count));
  EXPECT_LE(std::abs(r.std().item<double>() - sigma), 4 * sigma / std::sqrt(2 * count));

  auto f = e.target_f.squeeze(-1);
  auto k01 = D::rbf_kernel(e.target_x.narrow(1, 0, 1), e.target_x.narrow(1, 1, 1), e.length_scale,
                           s * s)
                 .view({batch});
  for (const auto& z : {f.select(1, 0) * f.select(1, 1) - k01, f.select(1, 2).pow(2) - s * s}) {
    const double mean = z.mean().item<double>();
    const double se = z.std().item<double>() / std::sqrt(static_cast<double>(batch));
    EXPECT_LE(std::abs(mean), 4 * se) << "mean " << mean << " se " << se;
  }

  auto varied = D::make_regression_episode(
      D::RegressionKind::GP, 500, 4, o.length_scale_min(0.1).length_scale_max(0.6));
  EXPECT_GE(varied.length_scale.min().item<double>(), 0.1);
  EXPECT_LE(varied.length_scale.max().item<double>(), 0.6);
  EXPECT_GT(varied.length_scale.std().item<double>(), 0.1);  // uniform: std 0.144
}

// With noise 0, y = A sin(x + phi) exactly; A, phi and x lie in their ranges.
TEST(RegressionEpisodes, SinusoidIsExactWithoutNoise) {
  auto o = D::RegressionEpisodeOptions().num_context(7).num_targets(5).noise_std(0.0).dtype(
      torch::kFloat64);
  const auto e = D::make_regression_episode(D::RegressionKind::Sinusoid, 300, 9, o);
  auto a = e.amplitude.view({-1, 1, 1}), phi = e.phase.view({-1, 1, 1});
  EXPECT_LE(max_abs(e.context_y - a * torch::sin(e.context_x + phi)), 1e-12);
  EXPECT_LE(max_abs(e.target_y - a * torch::sin(e.target_x + phi)), 1e-12);
  EXPECT_TRUE(torch::equal(e.target_y, e.target_f));
  EXPECT_GE(e.amplitude.min().item<double>(), 0.1);
  EXPECT_LE(e.amplitude.max().item<double>(), 5.0);
  EXPECT_GE(e.phase.min().item<double>(), 0.0);
  EXPECT_LE(e.phase.max().item<double>(), M_PI);
  auto x = torch::cat({e.context_x, e.target_x}, 1);
  EXPECT_GE(x.min().item<double>(), -5.0);
  EXPECT_LE(x.max().item<double>(), 5.0);
  EXPECT_GT(x.max().item<double>() - x.min().item<double>(), 9.0);

  const auto noisy = D::make_regression_episode(D::RegressionKind::Sinusoid, 300, 9,
                                                o.noise_std(0.5));
  EXPECT_TRUE(torch::equal(noisy.target_f, e.target_f));  // same stream, noise drawn last
  EXPECT_FALSE(torch::equal(noisy.target_y, e.target_y));
}

// Primal x*^T (X^T X + alpha I)^{-1} X^T y (library, Cholesky) against the dual form
// x*^T X^T (X X^T + alpha I)^{-1} y with an explicit inverse, for N < dx and N > dx.
TEST(RegressionEpisodes, RidgePosteriorMeanMatchesTheDualForm) {
  auto gen = at::detail::createCPUGenerator(21);
  double worst = 0;
  for (int64_t n : {3, 20}) {
    for (double alpha : {1e-2, 1.0, 10.0}) {
      auto x = randn(gen, {3, n, 5}), y = randn(gen, {3, n, 2}), xs = randn(gen, {3, 4, 5});
      auto gram = torch::matmul(x, x.transpose(1, 2)) + alpha * torch::eye(n, kF64);
      auto dual = torch::matmul(torch::matmul(xs, x.transpose(1, 2)),
                                torch::matmul(torch::inverse(gram), y));
      const double err = rel_err(D::ridge_posterior_mean(x, y, xs, alpha), dual);
      worst = std::max(worst, err);
      EXPECT_LE(err, 1e-10) << "N = " << n << ", alpha = " << alpha;
    }
  }
  std::cout << "[ridge] max rel err vs dual form " << worst << "\n";
  // float32 inputs come back in float32.
  auto x = randn(gen, {1, 4, 2}).to(torch::kFloat32);
  EXPECT_EQ(D::ridge_posterior_mean(x, x.narrow(2, 0, 1), x, 1.0).scalar_type(), torch::kFloat32);
}

// Predictive variance against sigma^2 + x*^T Sigma x*, Sigma = (X^T X / sigma^2 + I / sigma_w^2)^-1
// by an explicit inverse.
TEST(RegressionEpisodes, RidgePredictiveVarianceMatchesThePosteriorCovariance) {
  auto gen = at::detail::createCPUGenerator(22);
  const double noise_var = 0.09, weight_var = 2.0;
  for (int64_t n : {2, 12}) {
    auto x = randn(gen, {3, n, 4}), xs = randn(gen, {3, 5, 4});
    auto cov = torch::inverse(torch::matmul(x.transpose(1, 2), x) / noise_var +
                              torch::eye(4, kF64) / weight_var);
    auto quad = (torch::matmul(xs, cov) * xs).sum(-1, true);
    EXPECT_LE(rel_err(D::ridge_predictive_variance(x, xs, noise_var, weight_var), quad + noise_var),
              1e-10);
    EXPECT_LE(rel_err(D::ridge_predictive_variance(x, xs, noise_var, weight_var, false), quad),
              1e-10);
  }
}

// The explicit GP posterior: kernel by loops over the points, (K + noise I)^{-1} by torch::inverse.
TEST(RegressionEpisodes, GPPosteriorMatchesExplicitFormulas) {
  auto gen = at::detail::createCPUGenerator(23);
  const double signal_var = 1.3, noise_var = 0.05;
  for (int64_t dx : {1, 2}) {
    const int64_t b = 3, n = 6, m = 4;
    auto cx = randn(gen, {b, n, dx}), cy = randn(gen, {b, n, 1}), tx = randn(gen, {b, m, dx});
    auto l = torch::tensor({0.3, 0.7, 1.2}, kF64);
    auto mean = D::gp_posterior_mean(cx, cy, tx, l, signal_var, noise_var);
    auto var = D::gp_posterior_variance(cx, tx, l, signal_var, noise_var);
    auto var_f = D::gp_posterior_variance(cx, tx, l, signal_var, noise_var, false);
    for (int64_t e = 0; e < b; ++e) {
      const double le = l[e].item<double>();
      auto k = [&](const torch::Tensor& p, const torch::Tensor& q) {
        const double sq = (p - q).pow(2).sum().item<double>();
        return signal_var * std::exp(-sq / (2 * le * le));
      };
      auto kcc = torch::empty({n, n}, kF64), ktc = torch::empty({m, n}, kF64);
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) kcc[i][j] = k(cx[e][i], cx[e][j]);
        for (int64_t t = 0; t < m; ++t) ktc[t][i] = k(tx[e][t], cx[e][i]);
      }
      auto inv = torch::inverse(kcc + noise_var * torch::eye(n, kF64));
      auto ref_mean = ktc.mm(inv).mm(cy[e]);
      auto ref_var = signal_var - (ktc.mm(inv) * ktc).sum(-1, true);
      EXPECT_LE(rel_err(mean[e], ref_mean), 1e-10);
      EXPECT_LE(rel_err(var_f[e], ref_var), 1e-10);
      EXPECT_LE(rel_err(var[e], ref_var + noise_var), 1e-10);
    }
  }
  // A scalar length scale broadcasts over the batch.
  auto cx = randn(gen, {2, 3, 1}), cy = randn(gen, {2, 3, 1});
  EXPECT_TRUE(torch::allclose(
      D::gp_posterior_mean(cx, cy, cx, torch::full({}, 0.5, kF64), 1.0, 0.1),
      D::gp_posterior_mean(cx, cy, cx, torch::full({2}, 0.5, kF64), 1.0, 0.1), 0, 0));
}

// The Bayes-optimal predictors' documented claim: given the context, E[(mean - y*)^2] = variance.
// Per episode z_b = mean over its targets of ((mean - y*)^2 - variance); the z_b are independent
// with mean 0 and |mean(z)| must be within 4 standard errors. Also: Bayes beats the zero and
// nearest-neighbour predictors.
TEST(RegressionEpisodes, BayesOptimalVarianceIsTheExpectedSquaredError) {
  const int64_t batch = 4000;
  for (auto kind : {D::RegressionKind::Linear, D::RegressionKind::GP}) {
    SCOPED_TRACE(D::regression_kind_name(kind));
    auto o = D::RegressionEpisodeOptions()
                 .num_context(6)
                 .num_targets(4)
                 .x_dim(4)
                 .noise_std(0.5)
                 .dtype(torch::kFloat64);
    const auto e = D::make_regression_episode(kind, batch, 31, o);
    const auto p = D::bayes_optimal_prediction(kind, e, o);
    auto z = ((p.mean - e.target_y).pow(2) - p.variance).mean({1, 2});
    const double mean = z.mean().item<double>();
    const double se = z.std().item<double>() / std::sqrt(static_cast<double>(batch));
    const double bayes = (p.mean - e.target_y).pow(2).mean().item<double>();
    const double zero =
        (D::zero_predictor(e.context_y, e.target_x) - e.target_y).pow(2).mean().item<double>();
    const double nn = (D::nearest_neighbour_predictor(e.context_x, e.context_y, e.target_x) -
                       e.target_y)
                          .pow(2)
                          .mean()
                          .item<double>();
    std::cout << "[" << D::regression_kind_name(kind) << "] MSE bayes " << bayes
              << " (predicted " << p.variance.mean().item<double>() << ") zero " << zero
              << " nearest-neighbour " << nn << "\n";
    EXPECT_LE(std::abs(mean), 4 * se) << "mean " << mean << " se " << se;
    EXPECT_LT(bayes, zero);
    EXPECT_LT(bayes, nn);
  }
  const auto e = D::make_regression_episode(D::RegressionKind::Sinusoid, 2, 1);
  expect_error([&] { D::bayes_optimal_prediction(D::RegressionKind::Sinusoid, e, {}); },
               {"sinusoid", "no closed-form"});
}

TEST(RegressionEpisodes, NearestNeighbourAndZeroPredictors) {
  auto cx = torch::tensor({0.0, 1.0, 3.0}, kF64).view({1, 3, 1});
  auto cy = torch::tensor({10.0, 20.0, 30.0, -1.0, -2.0, -3.0}, kF64).view({1, 2, 3}).transpose(1, 2);
  auto tx = torch::tensor({0.4, 0.6, 2.9, -5.0, 0.5}, kF64).view({1, 5, 1});
  auto out = D::nearest_neighbour_predictor(cx, cy, tx);
  auto expected =
      torch::tensor({10.0, 20.0, 30.0, 10.0, 10.0, -1.0, -2.0, -3.0, -1.0, -1.0}, kF64)
          .view({1, 2, 5})
          .transpose(1, 2);  // 0.5 is a tie: the lower index wins
  EXPECT_TRUE(torch::equal(out, expected));
  // Euclidean in 2-D: (0.9, 0) is nearer (1, 1) (squared distance 1.01) than (0, 0.5) (1.06).
  auto cx2 = torch::tensor({0.0, 0.5, 1.0, 1.0}, kF64).view({1, 2, 2});
  auto cy2 = torch::tensor({1.0, 2.0}, kF64).view({1, 2, 1});
  auto tx2 = torch::tensor({0.9, 0.0, 0.1, 0.6}, kF64).view({1, 2, 2});
  EXPECT_TRUE(torch::equal(D::nearest_neighbour_predictor(cx2, cy2, tx2),
                           torch::tensor({2.0, 1.0}, kF64).view({1, 2, 1})));
  auto zero = D::zero_predictor(cy, tx);
  EXPECT_EQ(zero.sizes(), (std::vector<int64_t>{1, 5, 2}));
  EXPECT_EQ(max_abs(zero), 0.0);
}

TEST(RegressionEpisodes, BadInputsNameTheArgument) {
  auto cx = torch::zeros({2, 5, 3}, kF64), cy = torch::zeros({2, 5, 1}, kF64),
       tx = torch::zeros({2, 4, 3}, kF64);
  expect_error([&] { D::ridge_posterior_mean(cx, torch::zeros({2, 4, 1}, kF64), tx, 1.0); },
               {"ridge_posterior_mean", "context_y", "(B, N, dy) = (2, 5, dy)", "[2, 4, 1]"});
  expect_error([&] { D::ridge_posterior_mean(cx, cy, torch::zeros({2, 4, 2}, kF64), 1.0); },
               {"target_x", "(B, M, dx) = (2, M, 3)", "[2, 4, 2]"});
  expect_error([&] { D::ridge_posterior_mean(torch::zeros({5, 3}, kF64), cy, tx, 1.0); },
               {"context_x", "(B, N, dx)", "[5, 3]"});
  expect_error([&] { D::ridge_posterior_mean(cx.to(torch::kInt64), cy, tx, 1.0); },
               {"context_x", "floating-point"});
  expect_error([&] { D::ridge_posterior_mean(cx, cy, tx, 0.0); }, {"alpha", "> 0"});
  expect_error([&] { D::ridge_predictive_variance(cx, tx, -1.0, 1.0); }, {"noise_var"});
  expect_error([&] { D::ridge_predictive_variance(cx, tx, 1.0, 0.0); }, {"weight_var"});
  expect_error(
      [&] { D::gp_posterior_mean(cx, cy, tx, torch::ones({3}, kF64), 1.0, 0.1); },
      {"gp_posterior_mean", "length_scale", "() or (B) = (2)", "[3]"});
  expect_error([&] { D::gp_posterior_variance(cx, tx, torch::zeros({2}, kF64), 1.0, 0.1); },
               {"length_scale", "> 0"});
  expect_error([&] { D::gp_posterior_mean(cx, cy, tx, torch::ones({2}, kF64), 1.0, 0.0); },
               {"noise_var"});
  expect_error([&] { D::gp_posterior_mean(cx, cy, tx, torch::ones({2}, kF64), 0.0, 0.1); },
               {"signal_var"});
  expect_error(
      [&] { D::nearest_neighbour_predictor(torch::zeros({2, 0, 3}), torch::zeros({2, 0, 1}), tx); },
      {"nearest_neighbour_predictor", "at least one context point"});
  expect_error([&] { D::zero_predictor(cy, torch::zeros({3, 4, 3})); }, {"target_x", "(B, M, dx)"});
  expect_error([&] { D::rbf_kernel(cx, torch::zeros({2, 4, 2}), torch::ones({2}), 1.0); },
               {"rbf_kernel", "x2"});

  using K = D::RegressionKind;
  using O = D::RegressionEpisodeOptions;
  expect_error([] { D::make_regression_episode(K::Linear, 0, 1); }, {"batch_size", ">= 1"});
  expect_error([] { D::make_regression_episode(K::Linear, 2, 1, O().num_context(-1)); },
               {"num_context"});
  expect_error([] { D::make_regression_episode(K::Linear, 2, 1, O().num_targets(-1)); },
               {"num_targets"});
  expect_error([] { D::make_regression_episode(K::Linear, 2, 1, O().noise_std(-0.1)); },
               {"noise_std"});
  expect_error([] { D::make_regression_episode(K::Linear, 2, 1, O().x_dim(0)); }, {"x_dim"});
  expect_error([] { D::make_regression_episode(K::Linear, 2, 1, O().dtype(torch::kInt64)); },
               {"dtype", "kFloat32 or kFloat64"});
  expect_error(
      [] { D::make_regression_episode(K::GP, 2, 1, O().length_scale_min(1).length_scale_max(0.5)); },
      {"length_scale_min", "length_scale_max"});
  expect_error(
      [] { D::make_regression_episode(K::GP, 2, 1, O().length_scale_min(0).length_scale_max(0)); },
      {"length_scale_min", "> 0"});
  expect_error([] { D::make_regression_episode(K::GP, 2, 1, O().gp_x_min(3)); },
               {"gp_x_min", "gp_x_max"});
  expect_error([] { D::make_regression_episode(K::Sinusoid, 2, 1, O().amplitude_max(0)); },
               {"amplitude_min", "amplitude_max"});
}

}  // namespace
