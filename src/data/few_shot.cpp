#include "kvq/data/few_shot.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "kvq/util/sampler.h"

namespace kvq {
namespace data {
namespace {

// k distinct values of [0, n) in a uniformly random order: the first k steps of a forward
// Fisher-Yates shuffle of 0..n-1, with the swaps kept in a map instead of an n-element array.
std::vector<int64_t> sample_distinct(std::mt19937_64& engine, int64_t n, int64_t k) {
  std::unordered_map<int64_t, int64_t> swapped;
  auto at = [&](int64_t i) {
    const auto it = swapped.find(i);
    return it == swapped.end() ? i : it->second;
  };
  std::vector<int64_t> out(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    const int64_t j =
        i + static_cast<int64_t>(kvq::util::uniform_below(engine, static_cast<uint64_t>(n - i)));
    const int64_t value_i = at(i);
    out[static_cast<size_t>(i)] = at(j);
    swapped[j] = value_i;
  }
  return out;
}

void check_images(const char* who, const char* arg, const torch::Tensor& images) {
  TORCH_CHECK(images.defined() && images.scalar_type() == torch::kUInt8 &&
                  (images.dim() == 3 || images.dim() == 4),
              who, ": ", arg, " must be uint8 of shape (M, H, W) or (M, C, H, W), got ",
              images.defined() ? c10::toString(images.scalar_type()) : "an undefined tensor", " ",
              images.defined() ? images.sizes() : c10::IntArrayRef{});
}

void check_disjoint(const char* who, const std::vector<int64_t>& train_classes,
                    const std::vector<int64_t>& test_classes) {
  const std::unordered_set<int64_t> train(train_classes.begin(), train_classes.end());
  for (int64_t c : test_classes) {
    TORCH_CHECK(!train.count(c), who, ": train_classes and test_classes must be disjoint, class ",
                c, " is in both");
  }
}

// Shape, dtype, label range and one support example per class, for the prototype functions.
void check_prototype_inputs(const char* who, const torch::Tensor& support_features,
                            const torch::Tensor& support_labels,
                            const torch::Tensor* query_features, int64_t num_classes) {
  TORCH_CHECK(num_classes >= 1, who, ": num_classes must be >= 1, got ", num_classes);
  TORCH_CHECK(support_features.defined() && support_features.dim() == 3 &&
                  support_features.is_floating_point(),
              who, ": support_features must be floating point of shape (B, S, F), got ",
              support_features.defined() ? c10::toString(support_features.scalar_type())
                                         : "an undefined tensor",
              " ", support_features.defined() ? support_features.sizes() : c10::IntArrayRef{});
  const int64_t B = support_features.size(0), S = support_features.size(1);
  const int64_t F = support_features.size(2);
  TORCH_CHECK(support_labels.defined() && support_labels.scalar_type() == torch::kInt64 &&
                  support_labels.dim() == 2 && support_labels.size(0) == B &&
                  support_labels.size(1) == S,
              who, ": support_labels must be int64 of shape (B, S) = (", B, ", ", S, "), got ",
              support_labels.defined() ? c10::toString(support_labels.scalar_type())
                                       : "an undefined tensor",
              " ", support_labels.defined() ? support_labels.sizes() : c10::IntArrayRef{});
  if (query_features != nullptr) {
    const auto& q = *query_features;
    TORCH_CHECK(q.defined() && q.dim() == 3 && q.size(0) == B && q.size(2) == F, who,
                ": query_features must have shape (B, Q, F) with B = ", B, " and F = ", F, ", got ",
                q.defined() ? q.sizes() : c10::IntArrayRef{});
    TORCH_CHECK(q.scalar_type() == support_features.scalar_type(), who,
                ": query_features must have the dtype of support_features (",
                support_features.scalar_type(), "), got ", q.scalar_type());
  }
  if (support_labels.numel() > 0) {
    const auto extremes = torch::stack({support_labels.min(), support_labels.max()}).cpu();
    const int64_t lo = extremes[0].item<int64_t>(), hi = extremes[1].item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < num_classes, who,
                ": support_labels must be in [0, num_classes = ", num_classes, "), got values in [",
                lo, ", ", hi, "]");
  }
  const auto counts =
      torch::one_hot(support_labels, num_classes).sum(1).cpu().contiguous();  // (B, N)
  const auto acc = counts.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t n = 0; n < num_classes; ++n) {
      TORCH_CHECK(acc[b][n] > 0, who, ": support_labels of episode ", b,
                  " has no example of class ", n,
                  "; every class in [0, num_classes = ", num_classes, ") needs one");
    }
  }
}

torch::Tensor prototypes_unchecked(const torch::Tensor& support_features,
                                   const torch::Tensor& support_labels, int64_t num_classes) {
  const auto onehot =
      torch::one_hot(support_labels, num_classes).to(support_features.scalar_type());  // (B, S, N)
  const auto sums = onehot.transpose(1, 2).bmm(support_features);                      // (B, N, F)
  return sums / onehot.sum(1).unsqueeze(2);
}

}  // namespace

int64_t EpisodePool::min_class_size() const {
  if (members.empty()) return 0;
  size_t smallest = members[0].size();
  for (const auto& m : members) smallest = std::min(smallest, m.size());
  return static_cast<int64_t>(smallest);
}

EpisodePool make_episode_pool(const ImageClassificationData& data,
                              const std::vector<int64_t>& classes, int64_t min_examples,
                              const std::string& arg) {
  const char* who = "make_episode_pool";
  check_images(who, "data.images", data.images);
  const int64_t M = data.images.size(0);
  TORCH_CHECK(data.labels.defined() && data.labels.scalar_type() == torch::kInt64 &&
                  data.labels.dim() == 1 && data.labels.size(0) == M,
              who, ": data.labels must be int64 of shape (M) = (", M, "), got ",
              data.labels.defined() ? data.labels.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(min_examples >= 1, who, ": min_examples must be >= 1, got ", min_examples);
  TORCH_CHECK(!classes.empty(), who, ": ", arg, " must name at least one class");
  const auto labels = data.labels.cpu().contiguous();
  const int64_t* label = labels.data_ptr<int64_t>();
  const int64_t num_labels = M == 0 ? 0 : labels.max().item<int64_t>() + 1;

  std::unordered_map<int64_t, size_t> position;
  for (size_t i = 0; i < classes.size(); ++i) {
    const int64_t c = classes[i];
    TORCH_CHECK(c >= 0 && c < num_labels, who, ": ", arg, "[", i, "] = ", c,
                " is out of range: the labels of the data are in [0, ", num_labels, ")");
    TORCH_CHECK(position.emplace(c, i).second, who, ": ", arg, " names class ", c, " twice");
  }
  EpisodePool pool;
  pool.images = data.images;
  pool.classes = classes;
  pool.members.resize(classes.size());
  for (int64_t row = 0; row < M; ++row) {
    const auto it = position.find(label[row]);
    if (it != position.end()) pool.members[it->second].push_back(row);
  }
  for (size_t i = 0; i < classes.size(); ++i) {
    TORCH_CHECK(static_cast<int64_t>(pool.members[i].size()) >= min_examples, who, ": ", arg,
                ": class ", classes[i], " has ", pool.members[i].size(),
                " images, need at least min_examples = ", min_examples);
  }
  return pool;
}

MetaSplits make_meta_splits(const ImageClassificationData& data,
                            const std::vector<int64_t>& train_classes,
                            const std::vector<int64_t>& test_classes, int64_t min_examples) {
  check_disjoint("make_meta_splits", train_classes, test_classes);
  return {make_episode_pool(data, train_classes, min_examples, "train_classes"),
          make_episode_pool(data, test_classes, min_examples, "test_classes")};
}

MetaSplits make_meta_splits(const ImageClassificationData& train_data,
                            const std::vector<int64_t>& train_classes,
                            const ImageClassificationData& test_data,
                            const std::vector<int64_t>& test_classes, int64_t min_examples) {
  check_disjoint("make_meta_splits", train_classes, test_classes);
  return {make_episode_pool(train_data, train_classes, min_examples, "train_classes"),
          make_episode_pool(test_data, test_classes, min_examples, "test_classes")};
}

MetaSplits load_fashion_mnist_meta_splits(const std::string& dir,
                                          const std::vector<int64_t>& train_classes,
                                          const std::vector<int64_t>& test_classes) {
  check_disjoint("load_fashion_mnist_meta_splits", train_classes, test_classes);
  return make_meta_splits(load_fashion_mnist("train", dir), train_classes,
                          load_fashion_mnist("test", dir), test_classes);
}

// ---- EpisodeSampler ----

EpisodeSampler::EpisodeSampler(EpisodePool pool, const EpisodeOptions& options, uint64_t seed)
    : pool_(std::move(pool)), options_(options), engine_(seed) {
  const char* who = "EpisodeSampler";
  check_images(who, "pool.images", pool_.images);
  TORCH_CHECK(!pool_.classes.empty() && pool_.members.size() == pool_.classes.size(), who,
              ": pool must have at least one class and one member list per class, got ",
              pool_.classes.size(), " classes and ", pool_.members.size(), " member lists");
  const int64_t M = pool_.images.size(0);
  for (size_t i = 0; i < pool_.members.size(); ++i) {
    for (int64_t row : pool_.members[i]) {
      TORCH_CHECK(row >= 0 && row < M, who, ": pool.members[", i, "] holds row ", row,
                  ", outside pool.images (", M, " images)");
    }
  }
  const int64_t N = options_.num_ways(), K = options_.num_shots(), Q = options_.num_queries();
  TORCH_CHECK(N >= 1 && N <= pool_.num_classes(), who, ": num_ways must be in [1, ",
              pool_.num_classes(), "] (the pool's classes), got ", N);
  TORCH_CHECK(K >= 1, who, ": num_shots must be >= 1, got ", K);
  TORCH_CHECK(Q >= 1, who, ": num_queries must be >= 1, got ", Q);
  for (size_t i = 0; i < pool_.members.size(); ++i) {
    TORCH_CHECK(static_cast<int64_t>(pool_.members[i].size()) >= K + Q, who,
                ": num_shots + num_queries = ", K + Q, " images per class, but class ",
                pool_.classes[i], " of the pool has only ", pool_.members[i].size());
  }
}

EpisodeBatch EpisodeSampler::next(int64_t num_episodes) {
  TORCH_CHECK(num_episodes >= 1, "EpisodeSampler::next: num_episodes must be >= 1, got ",
              num_episodes);
  const int64_t B = num_episodes, N = options_.num_ways(), K = options_.num_shots();
  const int64_t Q = options_.num_queries();
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto support_index = torch::empty({B, N * K}, i64), query_index = torch::empty({B, N * Q}, i64);
  auto support_label = torch::empty({B, N * K}, i64), query_label = torch::empty({B, N * Q}, i64);
  auto classes = torch::empty({B, N}, i64);
  int64_t* s_index = support_index.data_ptr<int64_t>();
  int64_t* q_index = query_index.data_ptr<int64_t>();
  int64_t* s_label = support_label.data_ptr<int64_t>();
  int64_t* q_label = query_label.data_ptr<int64_t>();
  int64_t* cls = classes.data_ptr<int64_t>();

  std::vector<int64_t> support_rows(N * K), query_rows(N * Q);
  for (int64_t b = 0; b < B; ++b) {
    const auto picks = sample_distinct(engine_, pool_.num_classes(), N);
    for (int64_t j = 0; j < N; ++j) {
      const auto& members = pool_.members[picks[j]];
      cls[b * N + j] = pool_.classes[picks[j]];
      const auto chosen = sample_distinct(engine_, static_cast<int64_t>(members.size()), K + Q);
      for (int64_t s = 0; s < K; ++s) support_rows[j * K + s] = members[chosen[s]];
      for (int64_t q = 0; q < Q; ++q) query_rows[j * Q + q] = members[chosen[K + q]];
    }
    const auto support_order = sample_distinct(engine_, N * K, N * K);
    for (int64_t i = 0; i < N * K; ++i) {
      s_index[b * N * K + i] = support_rows[support_order[i]];
      s_label[b * N * K + i] = support_order[i] / K;
    }
    const auto query_order = sample_distinct(engine_, N * Q, N * Q);
    for (int64_t i = 0; i < N * Q; ++i) {
      q_index[b * N * Q + i] = query_rows[query_order[i]];
      q_label[b * N * Q + i] = query_order[i] / Q;
    }
  }

  const auto& images = pool_.images;
  std::vector<int64_t> image_shape = images.sizes().slice(1).vec();
  if (images.dim() == 3) image_shape.insert(image_shape.begin(), 1);
  auto gather = [&](const torch::Tensor& index) {
    std::vector<int64_t> shape = {index.size(0), index.size(1)};
    shape.insert(shape.end(), image_shape.begin(), image_shape.end());
    return images.index_select(0, index.reshape({-1}).to(images.device()))
        .to(torch::kFloat32)
        .div_(255.0)
        .reshape(shape);
  };
  EpisodeBatch batch;
  batch.support_images = gather(support_index);
  batch.support_labels = support_label;
  batch.query_images = gather(query_index);
  batch.query_labels = query_label;
  batch.classes = classes;
  batch.support_indices = support_index;
  batch.query_indices = query_index;
  return batch;
}

std::string EpisodeSampler::state() const { return kvq::util::rng_state(engine_); }

void EpisodeSampler::load_state(const std::string& state) {
  engine_ = kvq::util::rng_from_state(state, "EpisodeSampler::load_state");
}

EpisodeBatch sample_episodes(const EpisodePool& pool, const EpisodeOptions& options,
                             int64_t num_episodes, uint64_t seed) {
  return EpisodeSampler(pool, options, seed).next(num_episodes);
}

// ---- Prototype baseline ----

torch::Tensor class_prototypes(const torch::Tensor& support_features,
                               const torch::Tensor& support_labels, int64_t num_classes) {
  check_prototype_inputs("class_prototypes", support_features, support_labels, nullptr,
                         num_classes);
  return prototypes_unchecked(support_features, support_labels, num_classes);
}

torch::Tensor prototype_logits(const torch::Tensor& support_features,
                               const torch::Tensor& support_labels,
                               const torch::Tensor& query_features, int64_t num_classes) {
  check_prototype_inputs("prototype_logits", support_features, support_labels, &query_features,
                         num_classes);
  const auto prototypes = prototypes_unchecked(support_features, support_labels, num_classes);
  // (B, Q, 1, F) - (B, 1, N, F): exact differences rather than |q|^2 - 2 q.c + |c|^2.
  return -(query_features.unsqueeze(2) - prototypes.unsqueeze(1)).pow(2).sum(3);
}

torch::Tensor prototype_predict(const torch::Tensor& support_features,
                                const torch::Tensor& support_labels,
                                const torch::Tensor& query_features, int64_t num_classes) {
  check_prototype_inputs("prototype_predict", support_features, support_labels, &query_features,
                         num_classes);
  const auto prototypes = prototypes_unchecked(support_features, support_labels, num_classes);
  return (query_features.unsqueeze(2) - prototypes.unsqueeze(1)).pow(2).sum(3).argmin(2);
}

}  // namespace data
}  // namespace kvq
