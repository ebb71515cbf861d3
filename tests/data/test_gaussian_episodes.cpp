// Gaussian-cluster episodes and their Bayes-optimal classifier: episode layout and determinism,
// the generating distribution's second moments, the Bayes logits against Gaussian conditioning of
// the joint distribution (a separate derivation), and the Bayes rule beating the prototype rule.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "kvq/data/gaussian_episodes.h"
#include "test_files.h"

namespace {

namespace D = kvq::data;
using kvq_test_files::expect_error;

TEST(GaussianEpisodes, LayoutLabelsAndDeterminism) {
  const auto o = D::GaussianEpisodeOptions().num_ways(4).num_shots(3).num_queries(2).dim(7);
  const auto e = D::sample_gaussian_episodes(o, 50, 11);
  EXPECT_EQ(e.support_images.sizes(), torch::IntArrayRef({50, 12, 7, 1, 1}));
  EXPECT_EQ(e.query_images.sizes(), torch::IntArrayRef({50, 8, 7, 1, 1}));
  EXPECT_EQ(e.support_images.scalar_type(), torch::kFloat32);
  for (int64_t c = 0; c < 4; ++c) {
    EXPECT_TRUE((e.support_labels == c).sum(1).eq(3).all().item<bool>());
    EXPECT_TRUE((e.query_labels == c).sum(1).eq(2).all().item<bool>());
  }
  // Random order: not every episode lists its support labels sorted.
  const auto sorted = std::get<0>(e.support_labels.sort(1));
  EXPECT_FALSE(torch::equal(sorted, e.support_labels));
  const auto again = D::sample_gaussian_episodes(o, 50, 11);
  EXPECT_TRUE(torch::equal(again.support_images, e.support_images));
  EXPECT_TRUE(torch::equal(again.query_labels, e.query_labels));
  const auto other = D::sample_gaussian_episodes(o, 50, 12);
  EXPECT_FALSE(torch::equal(other.support_images, e.support_images));
}

// Same class: x - x' = noise difference, variance 2 n^2 per coordinate. Different classes of one
// episode: variance 2 (s^2 + n^2). 2000 episodes x 5 x 32 coordinates per estimate: the relative
// standard error of each variance is below 0.4 %, the tolerance 3 %.
TEST(GaussianEpisodes, SecondMomentsMatchTheGeneratingDistribution) {
  const double s = 0.7, n = 1.3;
  const auto o =
      D::GaussianEpisodeOptions().num_ways(5).num_shots(1).num_queries(1).dim(32).class_std(s).noise_std(n);
  const auto e = D::sample_gaussian_episodes(o, 2000, 3);
  const auto order_s = std::get<1>(e.support_labels.sort(1)), order_q = std::get<1>(e.query_labels.sort(1));
  auto by_label = [](const torch::Tensor& x, const torch::Tensor& order) {
    const auto p = x.squeeze(-1).squeeze(-1).to(torch::kFloat64);
    return p.gather(1, order.unsqueeze(2).expand({-1, -1, p.size(2)}));  // (B, N, D), label order
  };
  const auto xs = by_label(e.support_images, order_s), xq = by_label(e.query_images, order_q);
  const double same = (xs - xq).pow(2).mean().item<double>();
  const double different = (xs - xq.roll(1, 1)).pow(2).mean().item<double>();
  EXPECT_NEAR(same / (2 * n * n), 1.0, 0.03);
  EXPECT_NEAR(different / (2 * (s * s + n * n)), 1.0, 0.03);
}

// The posterior predictive of a query of class c from the joint Gaussian of (x_1 .. x_K, q) per
// coordinate, covariance s^2 11^T + n^2 I, conditioned on the K support points of c.
torch::Tensor conditioning_log_density(const torch::Tensor& support, const torch::Tensor& labels,
                                       const torch::Tensor& query, int64_t N, double s, double n) {
  const int64_t B = support.size(0), M = query.size(1), Dim = support.size(2);
  auto out = torch::empty({B, M, N}, torch::kFloat64);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < N; ++c) {
      const auto rows = (labels[b] == c).nonzero().squeeze(1);
      const int64_t K = rows.size(0);
      const auto joint = s * s * torch::ones({K + 1, K + 1}, torch::kFloat64) +
                         n * n * torch::eye(K + 1, torch::kFloat64);
      torch::Tensor mean = torch::zeros({Dim}, torch::kFloat64);
      double var = joint[K][K].item<double>();
      if (K > 0) {
        const auto cxx = joint.slice(0, 0, K).slice(1, 0, K);
        const auto cqx = joint[K].slice(0, 0, K);
        const auto w = torch::linalg_solve(cxx, cqx);  // C_xx^-1 C_xq
        mean = torch::matmul(w, support[b].index_select(0, rows));
        var -= torch::dot(cqx, w).item<double>();
      }
      const auto d2 = (query[b] - mean).pow(2).sum(1);  // (M)
      out.select(0, b).select(1, c).copy_(-d2 / (2 * var) - 0.5 * Dim * std::log(2 * M_PI * var));
    }
  }
  return out;
}

TEST(GaussianEpisodes, BayesLogitsMatchGaussianConditioning) {
  torch::manual_seed(5);
  const int64_t B = 3, S = 7, M = 4, N = 4, Dim = 5;
  const double s = 1.2, n = 0.8;
  const auto support = torch::randn({B, S, Dim}, torch::kFloat64);
  const auto query = torch::randn({B, M, Dim}, torch::kFloat64);
  // Unequal shots; label 3 has no support point in episode 0 (the prior predictive).
  const auto labels = torch::tensor({0, 0, 0, 1, 2, 2, 1, 0, 1, 2, 3, 3, 3, 3, 2, 1, 0, 3, 2, 1, 0},
                                    torch::kInt64)
                          .reshape({B, S});
  const auto ours = D::gaussian_bayes_logits(support, labels, query, N, s, n);
  const auto oracle = conditioning_log_density(support, labels, query, N, s, n);
  EXPECT_EQ(ours.scalar_type(), torch::kFloat64);
  // Equal up to a constant per query.
  EXPECT_TRUE(torch::allclose(ours.log_softmax(2), oracle.log_softmax(2), 1e-12, 1e-12))
      << (ours.log_softmax(2) - oracle.log_softmax(2)).abs().max();
  // (B, S, D, 1, 1) points give the same.
  const auto as_images = D::gaussian_bayes_logits(support.reshape({B, S, Dim, 1, 1}), labels,
                                                  query.reshape({B, M, Dim, 1, 1}), N, s, n);
  EXPECT_TRUE(torch::equal(as_images, ours));
}

// Accuracy on 2000 episodes: Bayes >= prototypes (nearest class mean) > chance, 1 and 5 shots.
TEST(GaussianEpisodes, BayesRuleBeatsThePrototypeRule) {
  for (int64_t shots : {1, 5}) {
    const auto o = D::GaussianEpisodeOptions().num_shots(shots).num_queries(5);
    const auto e = D::sample_gaussian_episodes(o, 2000, 21 + shots);
    const auto support = e.support_images.flatten(2), query = e.query_images.flatten(2);
    const auto bayes = D::gaussian_bayes_logits(support, e.support_labels, query, 5,
                                                o.class_std(), o.noise_std())
                           .argmax(2);
    const auto proto = D::prototype_predict(support, e.support_labels, query, 5);
    const double bayes_acc = (bayes == e.query_labels).to(torch::kFloat64).mean().item<double>();
    const double proto_acc = (proto == e.query_labels).to(torch::kFloat64).mean().item<double>();
    EXPECT_GE(bayes_acc, proto_acc) << shots << " shots";
    EXPECT_GT(proto_acc, 0.5) << shots << " shots";
  }
}

TEST(GaussianEpisodes, BadInputNamesTheArgument) {
  expect_error([] { D::sample_gaussian_episodes(D::GaussianEpisodeOptions().dim(0), 1, 0); },
               {"dim", ">= 1"});
  expect_error(
      [] { D::sample_gaussian_episodes(D::GaussianEpisodeOptions().noise_std(0), 1, 0); },
      {"noise_std", "> 0"});
  const auto x = torch::zeros({2, 3, 4}), q = torch::zeros({2, 1, 4});
  const auto labels = torch::zeros({2, 3}, torch::kInt64);
  expect_error([&] { D::gaussian_bayes_logits(x, labels, torch::zeros({2, 1, 5}), 2, 1, 1); },
               {"query", "D = 4"});
  expect_error([&] { D::gaussian_bayes_logits(x, labels + 2, q, 2, 1, 1); },
               {"support_labels", "[0, 2)"});
  expect_error([&] { D::gaussian_bayes_logits(x, labels, q, 2, 1, -1); }, {"noise_std"});
}

}  // namespace
