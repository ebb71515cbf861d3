// Few-shot episodes and the prototype baseline: class-disjoint pools, exact N-way K-shot episodes
// on a small synthetic data set whose pixels encode each image's row, determinism from the seed,
// prototypes against a hand computation; Fashion-MNIST's meta splits when the data set is
// installed.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "kvq/data/few_shot.h"
#include "test_files.h"

namespace {

namespace D = kvq::data;
using kvq_test_files::expect_error;

constexpr int64_t kSide = 6;

// M images of 6 x 6 over 10 classes, row i labelled (7 i) % 10 (classes interleaved; 25 or 26
// images each for M = 253). Pixel (0, 0) holds i / 256, pixel (0, 1) i % 256, pixel (0, 2) the
// label; every other pixel is 255 - label.
D::ImageClassificationData make_indexed_data(int64_t M = 253, int64_t channels = 0) {
  auto labels = torch::empty({M}, torch::kInt64);
  auto images = torch::empty({M, kSide, kSide}, torch::kUInt8);
  auto img = images.accessor<uint8_t, 3>();
  for (int64_t i = 0; i < M; ++i) {
    const int64_t label = (7 * i) % 10;
    labels[i] = label;
    for (int64_t r = 0; r < kSide; ++r)
      for (int64_t c = 0; c < kSide; ++c) img[i][r][c] = static_cast<uint8_t>(255 - label);
    img[i][0][0] = static_cast<uint8_t>(i / 256);
    img[i][0][1] = static_cast<uint8_t>(i % 256);
    img[i][0][2] = static_cast<uint8_t>(label);
  }
  if (channels > 0) images = images.unsqueeze(1).repeat({1, channels, 1, 1});
  return {images, labels};
}

// The row encoded in a float image (C, H, W) of make_indexed_data.
int64_t row_of(const torch::Tensor& image) {
  const auto px = (image[0] * 255.0).round().to(torch::kInt64);
  return px[0][0].item<int64_t>() * 256 + px[0][1].item<int64_t>();
}

std::vector<int64_t> range(int64_t lo, int64_t hi) {
  std::vector<int64_t> out;
  for (int64_t c = lo; c < hi; ++c) out.push_back(c);
  return out;
}

bool same(const D::EpisodeBatch& a, const D::EpisodeBatch& b) {
  return a.support_images.equal(b.support_images) && a.query_images.equal(b.query_images) &&
         a.support_labels.equal(b.support_labels) && a.query_labels.equal(b.query_labels) &&
         a.classes.equal(b.classes) && a.support_indices.equal(b.support_indices) &&
         a.query_indices.equal(b.query_indices);
}

// Every property of a batch of N-way K-shot episodes drawn from `pool` of `data`.
void check_episodes(const D::EpisodeBatch& e, const D::ImageClassificationData& data,
                    const D::EpisodePool& pool, int64_t B, int64_t N, int64_t K, int64_t Q) {
  const int64_t C = data.images.dim() == 3 ? 1 : data.images.size(1);
  ASSERT_EQ(e.support_images.sizes(), (std::vector<int64_t>{B, N * K, C, kSide, kSide}));
  ASSERT_EQ(e.query_images.sizes(), (std::vector<int64_t>{B, N * Q, C, kSide, kSide}));
  ASSERT_EQ(e.support_labels.sizes(), (std::vector<int64_t>{B, N * K}));
  ASSERT_EQ(e.query_labels.sizes(), (std::vector<int64_t>{B, N * Q}));
  ASSERT_EQ(e.classes.sizes(), (std::vector<int64_t>{B, N}));
  EXPECT_EQ(e.support_images.scalar_type(), torch::kFloat32);
  EXPECT_EQ(e.support_labels.scalar_type(), torch::kInt64);
  EXPECT_GE(e.support_images.min().item<float>(), 0.0f);
  EXPECT_LE(e.query_images.max().item<float>(), 1.0f);
  const std::set<int64_t> pool_classes(pool.classes.begin(), pool.classes.end());
  for (int64_t b = 0; b < B; ++b) {
    // Episode label j stands for one class of the pool, each a different one.
    std::set<int64_t> episode_classes;
    for (int64_t j = 0; j < N; ++j) {
      const int64_t c = e.classes[b][j].item<int64_t>();
      EXPECT_TRUE(pool_classes.count(c)) << "class " << c << " is not in the pool";
      episode_classes.insert(c);
    }
    EXPECT_EQ(static_cast<int64_t>(episode_classes.size()), N) << "episode " << b;
    std::set<int64_t> rows;
    auto check_set = [&](const torch::Tensor& images, const torch::Tensor& labels,
                         const torch::Tensor& indices, int64_t per_class) {
      std::vector<int64_t> count(static_cast<size_t>(N), 0);
      for (int64_t i = 0; i < images.size(1); ++i) {
        const int64_t label = labels[b][i].item<int64_t>(), row = indices[b][i].item<int64_t>();
        ASSERT_TRUE(label >= 0 && label < N) << label;
        ++count[static_cast<size_t>(label)];
        EXPECT_EQ(row_of(images[b][i]), row) << "the image is not the one its index names";
        EXPECT_TRUE(images[b][i].equal(
            data.images[row].to(torch::kFloat32).div(255.0).reshape({C, kSide, kSide})));
        EXPECT_EQ(data.labels[row].item<int64_t>(), e.classes[b][label].item<int64_t>())
            << "episode " << b << ": label " << label << " is not the class of row " << row;
        EXPECT_TRUE(rows.insert(row).second) << "row " << row << " twice in episode " << b;
      }
      for (int64_t n = 0; n < N; ++n) EXPECT_EQ(count[static_cast<size_t>(n)], per_class);
    };
    check_set(e.support_images, e.support_labels, e.support_indices, K);
    check_set(e.query_images, e.query_labels, e.query_indices, Q);
  }
}

TEST(FewShotSplits, PoolsAreClassDisjointAndGroupRowsByClass) {
  const auto data = make_indexed_data();
  const auto splits = D::make_meta_splits(data, {4, 0, 2, 1, 3}, range(5, 10));
  EXPECT_EQ(splits.train.classes, (std::vector<int64_t>{4, 0, 2, 1, 3}));  // the order given
  EXPECT_EQ(splits.test.classes, range(5, 10));
  EXPECT_TRUE(splits.train.images.is_same(data.images));  // shared, not copied
  std::set<int64_t> seen;
  for (const auto* pool : {&splits.train, &splits.test}) {
    ASSERT_EQ(pool->members.size(), pool->classes.size());
    for (size_t i = 0; i < pool->classes.size(); ++i) {
      EXPECT_TRUE(std::is_sorted(pool->members[i].begin(), pool->members[i].end()));
      for (int64_t row : pool->members[i]) {
        EXPECT_EQ(data.labels[row].item<int64_t>(), pool->classes[i]);
        EXPECT_TRUE(seen.insert(row).second) << "row " << row << " in two pools";
      }
    }
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), data.images.size(0));  // every row, once
  EXPECT_EQ(splits.train.min_class_size(), 25);

  // Two data sets: each pool from its own.
  const auto other = make_indexed_data(60);
  const auto across = D::make_meta_splits(data, {0, 1}, other, {7, 8});
  EXPECT_TRUE(across.train.images.is_same(data.images));
  EXPECT_TRUE(across.test.images.is_same(other.images));
  EXPECT_EQ(across.test.members[0].size(), 6u);
}

TEST(FewShotSplits, BadClassesNameTheArgument) {
  const auto data = make_indexed_data();
  expect_error(
      [&] {
        D::make_meta_splits(data, {0, 1, 3}, {3, 4});
      },
      {"train_classes and test_classes must be disjoint", "class 3"});
  expect_error([&] { D::make_meta_splits(data, {0, 1}, data, {4, 1}); }, {"disjoint", "class 1"});
  expect_error(
      [&] {
        D::make_meta_splits(data, {0, 1}, {2, 10});
      },
      {"test_classes[1] = 10", "out of range", "[0, 10)"});
  expect_error([&] { D::make_meta_splits(data, {-1}, {2}); }, {"train_classes[0] = -1"});
  expect_error(
      [&] {
        D::make_meta_splits(data, {0, 1, 0}, {2});
      },
      {"train_classes", "class 0 twice"});
  expect_error([&] { D::make_meta_splits(data, {}, {2}); }, {"train_classes", "at least one"});
  expect_error(
      [&] {
        D::make_meta_splits(data, {0, 1}, {2}, 26);
      },
      {"train_classes", "class 1 has 25 images", "min_examples = 26"});
  expect_error(
      [&] {
        D::make_episode_pool({data.images.to(torch::kFloat32), data.labels}, {0});
      },
      {"data.images", "uint8"});
  expect_error(
      [&] {
        D::make_episode_pool({data.images, data.labels.narrow(0, 0, 5)}, {0});
      },
      {"data.labels", "(M) = (253)"});
}

TEST(EpisodeSampler, EpisodesAreExactNWayKShot) {
  const auto data = make_indexed_data();
  const auto splits = D::make_meta_splits(data, range(0, 5), range(5, 10));
  const int64_t B = 12, N = 4, K = 3, Q = 5;
  const auto options = D::EpisodeOptions().num_ways(N).num_shots(K).num_queries(Q);
  D::EpisodeSampler train(splits.train, options, 7), test(splits.test, options, 7);
  const auto train_episodes = train.next(B), test_episodes = test.next(B);
  check_episodes(train_episodes, data, splits.train, B, N, K, Q);
  check_episodes(test_episodes, data, splits.test, B, N, K, Q);
  for (const auto* e : {&train_episodes, &test_episodes}) {
    const bool is_train = e == &train_episodes;
    EXPECT_TRUE(is_train ? (e->classes < 5).all().item<bool>()
                         : (e->classes >= 5).all().item<bool>());
  }

  // The relabelling and the orders are random: some episode maps label 0 to a larger class than
  // label 1, and some support set is not sorted by label.
  EXPECT_TRUE((train_episodes.classes.select(1, 0) > train_episodes.classes.select(1, 1))
                  .any()
                  .item<bool>());
  EXPECT_FALSE(
      train_episodes.support_labels.equal(std::get<0>(train_episodes.support_labels.sort(1))));
  EXPECT_FALSE(train_episodes.query_labels.equal(std::get<0>(train_episodes.query_labels.sort(1))));
}

TEST(EpisodeSampler, EveryPoolClassAndLabelOrderOccurs) {
  const auto data = make_indexed_data();
  const auto pool = D::make_episode_pool(data, {1, 3, 5, 7});
  const auto e =
      D::sample_episodes(pool, D::EpisodeOptions().num_ways(2).num_shots(1).num_queries(1), 400, 3);
  // 400 episodes of 2 of 4 classes: each class about 200 times, each ordered pair about 33.
  for (int64_t c : {1, 3, 5, 7}) {
    const int64_t count = (e.classes == c).sum().item<int64_t>();
    EXPECT_GT(count, 140) << c;
    EXPECT_LT(count, 260) << c;
  }
  std::set<std::pair<int64_t, int64_t>> pairs;
  for (int64_t b = 0; b < 400; ++b) {
    pairs.insert({e.classes[b][0].item<int64_t>(), e.classes[b][1].item<int64_t>()});
  }
  EXPECT_EQ(pairs.size(), 12u);
}

TEST(EpisodeSampler, DeterministicFromTheSeed) {
  const auto data = make_indexed_data();
  const auto pool = D::make_episode_pool(data, range(0, 10));
  const auto options = D::EpisodeOptions().num_ways(5).num_shots(2).num_queries(3);
  const auto a = D::sample_episodes(pool, options, 5, 42);
  EXPECT_TRUE(same(a, D::sample_episodes(pool, options, 5, 42)));
  EXPECT_FALSE(a.support_indices.equal(D::sample_episodes(pool, options, 5, 43).support_indices));

  // One stream: next(2) then next(3) are the five episodes of next(5).
  D::EpisodeSampler sampler(pool, options, 42);
  const auto first = sampler.next(2);
  const auto state = sampler.state();
  const auto rest = sampler.next(3);
  EXPECT_TRUE(torch::cat({first.support_images, rest.support_images}).equal(a.support_images));
  EXPECT_TRUE(torch::cat({first.query_labels, rest.query_labels}).equal(a.query_labels));
  EXPECT_TRUE(torch::cat({first.classes, rest.classes}).equal(a.classes));
  // A restored state draws the same episodes again.
  sampler.load_state(state);
  EXPECT_TRUE(same(sampler.next(3), rest));
  expect_error([&] { sampler.load_state("not a state"); }, {"EpisodeSampler::load_state"});
}

TEST(EpisodeSampler, ChannelImagesKeepTheirChannels) {
  const auto data = make_indexed_data(253, 3);
  const auto pool = D::make_episode_pool(data, {0, 1, 2});
  const auto e =
      D::sample_episodes(pool, D::EpisodeOptions().num_ways(3).num_shots(2).num_queries(2), 4, 1);
  check_episodes(e, data, pool, 4, 3, 2, 2);
}

TEST(EpisodeSampler, BadOptionsNameTheArgument) {
  const auto data = make_indexed_data();
  const auto pool = D::make_episode_pool(data, {0, 1, 2, 3, 4});
  auto make = [&](const D::EpisodeOptions& o) { D::EpisodeSampler(pool, o, 0); };
  expect_error([&] { make(D::EpisodeOptions().num_ways(6)); },
               {"num_ways must be in [1, 5]", "got 6"});
  expect_error([&] { make(D::EpisodeOptions().num_ways(0)); }, {"num_ways"});
  expect_error([&] { make(D::EpisodeOptions().num_shots(0)); }, {"num_shots must be >= 1"});
  expect_error([&] { make(D::EpisodeOptions().num_queries(0)); }, {"num_queries must be >= 1"});
  expect_error([&] { make(D::EpisodeOptions().num_shots(20).num_queries(6)); },
               {"num_shots + num_queries = 26", "has only 25"});
  D::EpisodeSampler sampler(pool, D::EpisodeOptions(), 0);
  expect_error([&] { sampler.next(0); }, {"num_episodes must be >= 1"});
  auto broken = pool;
  broken.members[2].push_back(999);
  expect_error([&] { D::EpisodeSampler(broken, D::EpisodeOptions(), 0); },
               {"pool.members[2]", "row 999"});
}

TEST(Prototypes, MatchAHandComputation) {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  // Episode 0: class 0 = {(0, 0), (2, 0)}, mean (1, 0); class 1 = {(0, 2), (0, 4)}, mean (0, 3).
  // Episode 1: class 1 = {(1, 1)}, class 0 = {(3, 3), (5, 5), (4, 1)}, mean (4, 3).
  auto support =
      torch::tensor({0., 0., 2., 0., 0., 2., 0., 4., 1., 1., 3., 3., 5., 5., 4., 1.}, f64)
          .reshape({2, 4, 2});
  auto labels = torch::tensor({0, 0, 1, 1, 1, 0, 0, 0}, torch::kInt64).reshape({2, 4});
  // Queries: episode 0 = (1, 1), (0, 3), (2, 0); episode 1 = (4, 2), (1, 1), (0, 0).
  auto query =
      torch::tensor({1., 1., 0., 3., 2., 0., 4., 2., 1., 1., 0., 0.}, f64).reshape({2, 3, 2});

  auto prototypes = D::class_prototypes(support, labels, 2);
  auto want_prototypes = torch::tensor({1., 0., 0., 3., 4., 3., 1., 1.}, f64).reshape({2, 2, 2});
  EXPECT_TRUE(prototypes.allclose(want_prototypes, 0, 1e-15)) << prototypes;

  // -||q - c||^2 by hand. Episode 0: (1,1): c0 1, c1 5; (0,3): c0 10, c1 0; (2,0): c0 1, c1 13.
  // Episode 1: (4,2): c0 1, c1 10; (1,1): c0 13, c1 0; (0,0): c0 25, c1 2.
  auto want_logits =
      -torch::tensor({1., 5., 10., 0., 1., 13., 1., 10., 13., 0., 25., 2.}, f64).reshape({2, 3, 2});
  auto logits = D::prototype_logits(support, labels, query, 2);
  EXPECT_TRUE(logits.allclose(want_logits, 0, 1e-14)) << logits;
  auto predicted = D::prototype_predict(support, labels, query, 2);
  EXPECT_TRUE(predicted.equal(torch::tensor({0, 1, 0, 0, 1, 1}, torch::kInt64).reshape({2, 3})))
      << predicted;
}

TEST(Prototypes, ClassifyWellSeparatedClustersPerfectly) {
  torch::manual_seed(0);
  const int64_t B = 3, N = 5, K = 3, Q = 4, F = 8;
  auto centres = 10.0 * torch::randn({B, N, F});
  // Labels in a different random order per episode.
  auto support_labels =
      torch::stack({torch::randperm(N * K), torch::randperm(N * K), torch::randperm(N * K)}) % N;
  auto query_labels = torch::randint(0, N, {B, Q * N}, torch::kInt64);
  auto gather = [&](const torch::Tensor& labels) {
    return torch::stack({centres[0].index_select(0, labels[0]),
                         centres[1].index_select(0, labels[1]),
                         centres[2].index_select(0, labels[2])}) +
           0.1 * torch::randn({B, labels.size(1), F});
  };
  auto predicted =
      D::prototype_predict(gather(support_labels), support_labels, gather(query_labels), N);
  EXPECT_TRUE(predicted.equal(query_labels));
}

TEST(Prototypes, BadInputsNameTheArgument) {
  auto support = torch::randn({2, 4, 3});
  auto labels = torch::tensor({0, 1, 0, 1, 1, 0, 1, 0}, torch::kInt64).reshape({2, 4});
  auto query = torch::randn({2, 5, 3});
  expect_error([&] { D::prototype_logits(support, labels + 1, query, 2); },
               {"support_labels must be in [0, num_classes = 2)", "[1, 2]"});
  expect_error([&] { D::prototype_logits(support, labels, query, 3); },
               {"support_labels of episode 0 has no example of class 2"});
  expect_error([&] { D::prototype_logits(support, labels * 0, query, 2); },
               {"episode 0", "no example of class 1"});
  expect_error(
      [&] {
        D::prototype_logits(support, labels, torch::randn({2, 5, 4}), 2);
      },
      {"query_features", "F = 3"});
  expect_error(
      [&] {
        D::prototype_logits(support, labels, torch::randn({1, 5, 3}), 2);
      },
      {"query_features", "B = 2"});
  expect_error([&] { D::prototype_logits(support, labels, query.to(torch::kFloat64), 2); },
               {"query_features", "dtype"});
  expect_error([&] { D::prototype_predict(support, labels.to(torch::kFloat32), query, 2); },
               {"support_labels must be int64"});
  expect_error([&] { D::class_prototypes(support, labels.narrow(1, 0, 3), 2); },
               {"support_labels", "(B, S) = (2, 4)"});
  expect_error([&] { D::class_prototypes(support.flatten(0, 1), labels, 2); },
               {"support_features", "(B, S, F)"});
  expect_error([&] { D::class_prototypes(support, labels, 0); }, {"num_classes must be >= 1"});
}

TEST(FashionMnistMetaSplits, EpisodesUseTheDocumentedClassesAndSplits) {
  if (!std::filesystem::exists(std::string(D::kFashionMnistDir) + "/train-labels-idx1-ubyte.gz") &&
      !std::filesystem::exists(std::string(D::kFashionMnistDir) + "/train-labels-idx1-ubyte")) {
    GTEST_SKIP() << "Fashion-MNIST is not installed at " << D::kFashionMnistDir;
  }
  const auto splits = D::load_fashion_mnist_meta_splits();
  EXPECT_EQ(splits.train.classes, range(0, 5));
  EXPECT_EQ(splits.test.classes, range(5, 10));
  EXPECT_EQ(splits.train.images.size(0), 60000);  // the train split
  EXPECT_EQ(splits.test.images.size(0), 10000);   // the test split
  for (const auto& m : splits.train.members) EXPECT_EQ(m.size(), 6000u);
  for (const auto& m : splits.test.members) EXPECT_EQ(m.size(), 1000u);
  const auto options = D::EpisodeOptions().num_ways(5).num_shots(5).num_queries(15);
  for (const auto* pool : {&splits.train, &splits.test}) {
    const auto e = D::sample_episodes(*pool, options, 4, 11);
    EXPECT_EQ(e.support_images.sizes(), (std::vector<int64_t>{4, 25, 1, 28, 28}));
    EXPECT_EQ(e.query_images.sizes(), (std::vector<int64_t>{4, 75, 1, 28, 28}));
    // All five classes of the pool, and each image's true class through the episode's labels.
    EXPECT_TRUE(
        std::get<0>(e.classes.sort(1))
            .equal(torch::tensor(pool->classes, torch::kInt64).unsqueeze(0).expand({4, 5})));
    const auto true_classes =
        torch::cat({e.classes.gather(1, e.support_labels), e.classes.gather(1, e.query_labels)}, 1);
    const auto rows = torch::cat({e.support_indices, e.query_indices}, 1);
    for (int64_t b = 0; b < 4; ++b) {
      for (int64_t i = 0; i < rows.size(1); ++i) {
        const int64_t row = rows[b][i].item<int64_t>(), want = true_classes[b][i].item<int64_t>();
        int64_t found = -1;
        for (size_t c = 0; c < pool->classes.size(); ++c) {
          const auto& m = pool->members[c];
          if (std::binary_search(m.begin(), m.end(), row)) found = pool->classes[c];
        }
        ASSERT_EQ(found, want) << "row " << row << " of episode " << b;
      }
    }
  }
}

}  // namespace
