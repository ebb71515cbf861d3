// The epoch sampler: every epoch is a permutation, epochs differ, a seed fixes the order, and a
// saved state (mid-epoch or at a boundary) continues the order exactly.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kvq/train/sampler.h"
#include "test_files.h"

namespace {

namespace T = kvq::train;

using kvq_test_files::error_of;

std::vector<int64_t> values(const torch::Tensor& t) {
  return {t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()};
}

std::vector<int64_t> take(T::BatchSampler& s, int64_t batches) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < batches; ++i) {
    const auto b = values(s.next());
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

TEST(TrainSampler, EachEpochIsAPermutationAndEpochsDiffer) {
  T::BatchSampler s(10, 3, 42);  // drop_last: 3 batches, one item left out per epoch
  EXPECT_EQ(s.batches_per_epoch(), 3);
  const auto e0 = take(s, 3);
  EXPECT_EQ(s.epoch(), 1);
  EXPECT_EQ(s.batch_in_epoch(), 0);
  const auto e1 = take(s, 3);
  for (const auto& e : {e0, e1}) {
    EXPECT_EQ(e.size(), 9u);
    EXPECT_EQ(std::set<int64_t>(e.begin(), e.end()).size(), 9u);
    for (auto i : e) EXPECT_TRUE(i >= 0 && i < 10);
  }
  EXPECT_NE(e0, e1);

  T::BatchSampler same(10, 3, 42), other(10, 3, 43);
  EXPECT_EQ(take(same, 6), [&] { auto v = e0; v.insert(v.end(), e1.begin(), e1.end()); return v; }());
  EXPECT_NE(take(other, 3), e0);
}

TEST(TrainSampler, KeepLastAndNoShuffle) {
  T::BatchSampler s(7, 3, 1, T::BatchSamplerOptions().shuffle(false).drop_last(false));
  EXPECT_EQ(s.batches_per_epoch(), 3);
  EXPECT_EQ(values(s.next()), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(values(s.next()), (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(values(s.next()), (std::vector<int64_t>{6}));
  EXPECT_EQ(values(s.next()), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_HAS(error_of([] { T::BatchSampler(2, 3, 0); }), "2 items make no complete batch of 3");
}

TEST(TrainSampler, RestoredStateContinuesTheOrder) {
  for (int64_t cut : {0, 1, 3, 4, 5, 9}) {  // 4 batches per epoch: boundaries at 0, 4, 8
    T::BatchSampler a(17, 4, 5);
    take(a, cut);
    const auto saved = a.state();
    const auto expected = take(a, 10);
    T::BatchSampler b(17, 4, 1000);
    b.load_state(saved);
    EXPECT_EQ(b.epoch(), cut / 4) << cut;
    EXPECT_EQ(take(b, 10), expected) << "cut after " << cut << " batches";
  }
  T::BatchSampler a(17, 4, 5);
  T::BatchSampler wrong(18, 4, 5);
  EXPECT_HAS(error_of([&] { wrong.load_state(a.state()); }),
             "the saved sampler has num_items = 17, this one 18");
  auto bad = a.state();
  bad["rng"] = "12 nonsense";
  EXPECT_HAS(error_of([&] { a.load_state(bad); }), "not a std::mt19937_64 state");
}

TEST(TrainSampler, PermutationIsUniformAndPortable) {
  // Every position of a 3-permutation takes each value about 1/3 of the time.
  std::mt19937_64 engine(7);
  std::vector<std::vector<int>> counts(3, std::vector<int>(3, 0));
  const int trials = 30000;
  for (int t = 0; t < trials; ++t) {
    const auto p = values(T::random_permutation(engine, 3));
    for (int i = 0; i < 3; ++i) counts[i][p[i]]++;
  }
  for (const auto& row : counts) {
    for (int c : row) EXPECT_NEAR(c / double(trials), 1.0 / 3, 0.015);
  }
  // The engine state text round-trips.
  std::mt19937_64 e(123);
  e.discard(17);
  auto copy = T::rng_from_state(T::rng_state(e), "test");
  EXPECT_EQ(copy(), e());
}

}  // namespace
