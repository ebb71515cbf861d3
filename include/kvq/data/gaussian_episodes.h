#pragma once
// Gaussian-cluster few-shot episodes and their Bayes-optimal classifier (Intention paper's
// few-shot experiment, Garnelo & Czarnecki 2023; docs: tasks.md, "Experiments of the Intention
// paper", item 2): an exactly solvable episode family with a fresh set of classes in every
// episode, so meta-training never runs out of classes (Fashion-MNIST has 5 on each side).
//
// Episode: N classes with means mu_c ~ N(0, class_std^2 I_D), independent; K support and Q query
// points of each class, x = mu_c + noise_std * eps, eps ~ N(0, I_D); labels 0..N-1 (classes are
// exchangeable, so the label order carries no information, as after the image episodes'
// relabelling). Points are returned as D-channel 1x1 images so that they travel through the
// image episodes' EpisodeBatch and FewShotClassifier::forward unchanged.
#include <torch/torch.h>

#include <cstdint>

#include "kvq/data/few_shot.h"

namespace kvq {
namespace data {

struct GaussianEpisodeOptions {
  /// Classes per episode N. Default: 5.
  TORCH_ARG(int64_t, num_ways) = 5;
  /// Support points per class K. Default: 1.
  TORCH_ARG(int64_t, num_shots) = 1;
  /// Query points per class Q. Default: 15.
  TORCH_ARG(int64_t, num_queries) = 15;
  /// Dimension D of a point. Default: 32.
  TORCH_ARG(int64_t, dim) = 32;
  /// Standard deviation of every coordinate of a class mean. Default: 1.
  TORCH_ARG(double, class_std) = 1.0;
  /// Standard deviation of every coordinate of a point around its class mean. Default: 1.5.
  TORCH_ARG(double, noise_std) = 1.5;
};

// num_episodes (>= 1) episodes drawn in float64 from a CPU generator seeded with `seed` (the same
// seed gives the same episodes), returned as float32. Per episode, support and query sets are each
// in a uniformly random order. EpisodeBatch fields:
//   support_images (B, N*K, D, 1, 1), support_labels int64 (B, N*K), K of each label;
//   query_images (B, N*Q, D, 1, 1), query_labels int64 (B, N*Q), Q of each label;
//   classes, support_indices, query_indices: undefined (no pool).
EpisodeBatch sample_gaussian_episodes(const GaussianEpisodeOptions& options, int64_t num_episodes,
                                      uint64_t seed);

// Bayes-optimal log-probabilities of the query labels, up to a constant per query, given the
// support set (independent per query). With K_c support points of label c and their mean m_c,
// the posterior predictive of a query of class c is N(a_c m_c, v_c I_D):
//   a_c = K_c s^2 / (K_c s^2 + n^2),   v_c = n^2 + s^2 n^2 / (K_c s^2 + n^2)
// (s = class_std, n = noise_std; K_c = 0 gives the prior predictive N(0, (s^2 + n^2) I)), so
//   logit_jc = -|q_j - a_c m_c|^2 / (2 v_c) - (D / 2) log v_c.
// support (B, S, D) or (B, S, D, 1, 1), support_labels int64 (B, S) in [0, num_classes),
// query (B, M, D) or (B, M, D, 1, 1) -> float64 (B, M, num_classes). The argmax is the
// Bayes-optimal decision (maximum accuracy) under the generating distribution.
torch::Tensor gaussian_bayes_logits(const torch::Tensor& support,
                                    const torch::Tensor& support_labels,
                                    const torch::Tensor& query, int64_t num_classes,
                                    double class_std, double noise_std);

}  // namespace data
}  // namespace kvq
