#pragma once
// Few-shot classification episodes for the Intention paper's few-shot experiment (Garnelo &
// Czarnecki 2023; docs: tasks.md, "Experiments of the Intention paper", item 2), in the N-way
// K-shot protocol of Vinyals et al. 2016 and Snell et al. 2017: the classes of an image data set
// are split into disjoint meta-train and meta-test sets; an episode picks N classes of one set,
// K support and Q query images of each class, and relabels its N classes 0..N-1 in a random order.
//
// Fashion-MNIST default (load_fashion_mnist_meta_splits):
//   meta-train: classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat), train split, 6000 each
//   meta-test:  classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot),     test split,  1000 each
// A meta-test episode thus uses neither a class nor an image seen in meta-training, and 5-way
// episodes are possible on both sides. All three footwear classes are meta-test classes, so the
// test episodes are a real shift from the training ones.
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kvq/data/idx.h"

namespace kvq {
namespace data {

inline constexpr std::array<int64_t, 5> kFashionMnistMetaTrainClasses = {0, 1, 2, 3, 4};
inline constexpr std::array<int64_t, 5> kFashionMnistMetaTestClasses = {5, 6, 7, 8, 9};

// The images of some classes of a data set, grouped by class: what episodes are drawn from.
struct EpisodePool {
  torch::Tensor images;                       // uint8 (M, H, W) or (M, C, H, W), shared, not copied
  std::vector<int64_t> classes;               // the pool's classes, in the order given
  std::vector<std::vector<int64_t>> members;  // members[i]: rows of images of class classes[i],
                                              // ascending

  int64_t num_classes() const { return static_cast<int64_t>(classes.size()); }
  // The number of images of the pool's smallest class (0 for an empty pool).
  int64_t min_class_size() const;
};

// The pool of `classes` (distinct, each in [0, max label + 1) and with at least `min_examples`
// images) in data (images uint8 (M, H, W) or (M, C, H, W), labels int64 (M)). Errors name `arg`
// ("classes" unless the caller says otherwise) and the offending class.
EpisodePool make_episode_pool(const ImageClassificationData& data,
                              const std::vector<int64_t>& classes, int64_t min_examples = 1,
                              const std::string& arg = "classes");

struct MetaSplits {
  EpisodePool train, test;
};

// Class-disjoint meta-train and meta-test pools of one data set. train_classes and test_classes
// must be disjoint, non-empty, in range and have min_examples images per class; errors name the
// argument.
MetaSplits make_meta_splits(const ImageClassificationData& data,
                            const std::vector<int64_t>& train_classes,
                            const std::vector<int64_t>& test_classes, int64_t min_examples = 1);

// The same with the meta-train pool from train_data and the meta-test pool from test_data (the
// classes still disjoint): meta-test episodes then also use no image of train_data.
MetaSplits make_meta_splits(const ImageClassificationData& train_data,
                            const std::vector<int64_t>& train_classes,
                            const ImageClassificationData& test_data,
                            const std::vector<int64_t>& test_classes, int64_t min_examples = 1);

// Fashion-MNIST's meta splits: train_classes of its "train" split, test_classes of its "test"
// split (defaults in the comment at the top).
MetaSplits load_fashion_mnist_meta_splits(
    const std::string& dir = kFashionMnistDir,
    const std::vector<int64_t>& train_classes = {kFashionMnistMetaTrainClasses.begin(),
                                                 kFashionMnistMetaTrainClasses.end()},
    const std::vector<int64_t>& test_classes = {kFashionMnistMetaTestClasses.begin(),
                                                kFashionMnistMetaTestClasses.end()});

struct EpisodeOptions {
  /// Classes per episode N, at most the pool's number of classes. Default: 5.
  TORCH_ARG(int64_t, num_ways) = 5;
  /// Support images per class K. Default: 1.
  TORCH_ARG(int64_t, num_shots) = 1;
  /// Query images per class Q. Default: 15 (Snell et al. 2017).
  TORCH_ARG(int64_t, num_queries) = 15;
};

// B episodes. Support and query sets are each in a random order (positions say nothing about
// labels). Episode label j of episode b stands for the pool class classes[b][j].
struct EpisodeBatch {
  torch::Tensor support_images;   // float32 (B, N*K, C, H, W) in [0, 1] (C = 1 for (M, H, W) data)
  torch::Tensor support_labels;   // int64 (B, N*K), episode labels in [0, N), K of each
  torch::Tensor query_images;     // float32 (B, N*Q, C, H, W) in [0, 1]
  torch::Tensor query_labels;     // int64 (B, N*Q), episode labels in [0, N), Q of each
  torch::Tensor classes;          // int64 (B, N): the data set's class of each episode label
  torch::Tensor support_indices;  // int64 (B, N*K): rows of pool.images of the support images
  torch::Tensor query_indices;    // int64 (B, N*Q): rows of pool.images of the query images
};

// N-way K-shot episodes from a pool, drawn from the sampler's own std::mt19937_64 (never torch's
// global generator) with portable draws (kvq::util::uniform_below), so a seed gives the same
// episodes with every compiler. Episodes are drawn one after another from one stream: next(2)
// followed by next(3) gives the episodes of next(5). Per episode, in this order:
//   1. N distinct classes, uniformly, in a uniformly random order: episode label j = j-th pick;
//   2. for j = 0..N-1: K + Q distinct images of that class, uniformly; the first K support;
//   3. a uniformly random order of the N*K support images, then of the N*Q query images.
// Needs N <= the pool's classes and K + Q <= its smallest class (checked at construction).
class EpisodeSampler {
 public:
  EpisodeSampler(EpisodePool pool, const EpisodeOptions& options, uint64_t seed);

  // The next num_episodes (>= 1) episodes.
  EpisodeBatch next(int64_t num_episodes);

  // The engine's state (kvq::util::rng_state), for a checkpoint; load_state restores it, so the
  // episodes that followed it are drawn again.
  std::string state() const;
  void load_state(const std::string& state);

  const EpisodePool& pool() const { return pool_; }
  const EpisodeOptions& options() const { return options_; }

 private:
  EpisodePool pool_;
  EpisodeOptions options_;
  std::mt19937_64 engine_;
};

// A fixed set of episodes, e.g. for evaluation: EpisodeSampler(pool, options, seed).next(
// num_episodes). The same seed gives the same episodes.
EpisodeBatch sample_episodes(const EpisodePool& pool, const EpisodeOptions& options,
                             int64_t num_episodes, uint64_t seed);

// Prototypical-network baseline (Snell et al. 2017) on given features. The prototype of class n
// is the mean of its support features, c_n = mean{ s_i : y_i = n }; a query's logit for class n
// is the negative squared Euclidean distance, -||q - c_n||^2.
//   support_features (B, S, F) floating, support_labels int64 (B, S) in [0, N),
//   query_features (B, Q, F) of the same dtype; every class needs a support example in every
//   episode.
// class_prototypes -> (B, N, F); prototype_logits -> (B, Q, N); prototype_predict -> int64 (B, Q),
// the nearest prototype (argmax of the logits).
torch::Tensor class_prototypes(const torch::Tensor& support_features,
                               const torch::Tensor& support_labels, int64_t num_classes);
torch::Tensor prototype_logits(const torch::Tensor& support_features,
                               const torch::Tensor& support_labels,
                               const torch::Tensor& query_features, int64_t num_classes);
torch::Tensor prototype_predict(const torch::Tensor& support_features,
                                const torch::Tensor& support_labels,
                                const torch::Tensor& query_features, int64_t num_classes);

}  // namespace data
}  // namespace kvq
