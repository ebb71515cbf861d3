#include "kvq/data/gaussian_episodes.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace kvq {
namespace data {
namespace {

constexpr auto kF64 = torch::kFloat64;

// Labels 0..N-1, `per_class` of each, in a uniformly random order per episode: (B, N * per_class).
torch::Tensor shuffled_labels(at::Generator& gen, int64_t B, int64_t N, int64_t per_class) {
  const auto labels = torch::arange(N, torch::kInt64).repeat_interleave(per_class);
  const auto keys = torch::empty({B, N * per_class}, kF64).uniform_(0.0, 1.0, gen);
  const auto order = std::get<1>(keys.sort(1));
  return labels.index_select(0, order.flatten()).reshape({B, N * per_class});
}

// The points of `labels` around the episode means: mu (B, N, D), labels (B, P) -> (B, P, D, 1, 1).
torch::Tensor points(at::Generator& gen, const torch::Tensor& mu, const torch::Tensor& labels,
                     double noise_std) {
  const int64_t B = mu.size(0), P = labels.size(1), D = mu.size(2);
  const auto centres = mu.gather(1, labels.unsqueeze(2).expand({B, P, D}));
  const auto eps = torch::empty({B, P, D}, kF64).normal_(0.0, 1.0, gen);
  return (centres + noise_std * eps).to(torch::kFloat32).reshape({B, P, D, 1, 1});
}

// (B, P, D) or (B, P, D, 1, 1) as float64 (B, P, D).
torch::Tensor as_points(const char* arg, const torch::Tensor& t) {
  TORCH_CHECK(t.defined() && t.is_floating_point() &&
                  (t.dim() == 3 || (t.dim() == 5 && t.size(3) == 1 && t.size(4) == 1)),
              "gaussian_bayes_logits: ", arg,
              " must be floating point of shape (B, P, D) or (B, P, D, 1, 1), got ",
              t.defined() ? t.sizes() : c10::IntArrayRef{});
  return t.to(kF64).reshape({t.size(0), t.size(1), t.size(2)});
}

}  // namespace

EpisodeBatch sample_gaussian_episodes(const GaussianEpisodeOptions& o, int64_t num_episodes,
                                      uint64_t seed) {
  const char* who = "sample_gaussian_episodes";
  TORCH_CHECK(num_episodes >= 1, who, ": num_episodes must be >= 1, got ", num_episodes);
  TORCH_CHECK(o.num_ways() >= 1, who, ": num_ways must be >= 1, got ", o.num_ways());
  TORCH_CHECK(o.num_shots() >= 1 && o.num_queries() >= 1, who,
              ": num_shots and num_queries must be >= 1, got ", o.num_shots(), " and ",
              o.num_queries());
  TORCH_CHECK(o.dim() >= 1, who, ": dim must be >= 1, got ", o.dim());
  TORCH_CHECK(std::isfinite(o.class_std()) && o.class_std() > 0 && std::isfinite(o.noise_std()) &&
                  o.noise_std() > 0,
              who, ": class_std and noise_std must be finite and > 0, got ", o.class_std(),
              " and ", o.noise_std());
  const int64_t B = num_episodes, N = o.num_ways();
  auto gen = at::detail::createCPUGenerator(seed);
  const auto mu = o.class_std() * torch::empty({B, N, o.dim()}, kF64).normal_(0.0, 1.0, gen);
  EpisodeBatch batch;
  batch.support_labels = shuffled_labels(gen, B, N, o.num_shots());
  batch.support_images = points(gen, mu, batch.support_labels, o.noise_std());
  batch.query_labels = shuffled_labels(gen, B, N, o.num_queries());
  batch.query_images = points(gen, mu, batch.query_labels, o.noise_std());
  return batch;
}

torch::Tensor gaussian_bayes_logits(const torch::Tensor& support,
                                    const torch::Tensor& support_labels,
                                    const torch::Tensor& query, int64_t num_classes,
                                    double class_std, double noise_std) {
  const char* who = "gaussian_bayes_logits";
  const auto x = as_points("support", support), q = as_points("query", query);
  const int64_t B = x.size(0), S = x.size(1), D = x.size(2);
  TORCH_CHECK(q.size(0) == B && q.size(2) == D, who, ": query must have B = ", B, " and D = ", D,
              " as support, got ", query.sizes());
  TORCH_CHECK(num_classes >= 1, who, ": num_classes must be >= 1, got ", num_classes);
  TORCH_CHECK(support_labels.defined() && support_labels.scalar_type() == torch::kInt64 &&
                  support_labels.dim() == 2 && support_labels.size(0) == B &&
                  support_labels.size(1) == S,
              who, ": support_labels must be int64 of shape (B, S) = (", B, ", ", S, "), got ",
              support_labels.defined() ? support_labels.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(S == 0 || (support_labels.min().item<int64_t>() >= 0 &&
                         support_labels.max().item<int64_t>() < num_classes),
              who, ": support_labels must be in [0, ", num_classes, ")");
  TORCH_CHECK(std::isfinite(class_std) && class_std > 0 && std::isfinite(noise_std) &&
                  noise_std > 0,
              who, ": class_std and noise_std must be finite and > 0, got ", class_std, " and ",
              noise_std);
  const double s2 = class_std * class_std, n2 = noise_std * noise_std;
  const auto one_hot = torch::one_hot(support_labels, num_classes).to(kF64);  // (B, S, N)
  const auto count = one_hot.sum(1);                                          // (B, N)
  const auto sums = torch::matmul(one_hot.transpose(1, 2), x);                // (B, N, D)
  const auto denominator = count * s2 + n2;
  const auto shrunk_means = sums * (s2 / denominator).unsqueeze(2);  // a_c m_c = s^2 sum / (.)
  const auto variance = n2 + s2 * n2 / denominator;                  // (B, N)
  const auto distance = (q.unsqueeze(2) - shrunk_means.unsqueeze(1)).pow(2).sum(3);  // (B, M, N)
  return -distance / (2 * variance.unsqueeze(1)) -
         0.5 * static_cast<double>(D) * variance.log().unsqueeze(1);
}

}  // namespace data
}  // namespace kvq
