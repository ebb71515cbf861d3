// The epoch sampler: every epoch is a permutation, epochs differ, a seed fixes the order, and a
// saved state (mid-epoch or at a boundary) continues the order exactly.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kvq/util/sampler.h"
#include "test_files.h"

namespace {

namespace U = kvq::util;

using kvq_test_files::error_of;

std::vector<int64_t> values(const torch::Tensor& t) {
  return {t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()};
}

std::vector<int64_t> take(U::BatchSampler& s, int64_t batches) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < batches; ++i) {
    const auto b = values(s.next());
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

TEST(TrainSampler, EachEpochIsAPermutationAndEpochsDiffer) {
  U::BatchSampler s(10, 3, 42);  // drop_last: 3 batches, one item left out per epoch
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

  U::BatchSampler same(10, 3, 42), other(10, 3, 43);
  EXPECT_EQ(take(same, 6), [&] { auto v = e0; v.insert(v.end(), e1.begin(), e1.end()); return v; }());
  EXPECT_NE(take(other, 3), e0);
}

TEST(TrainSampler, KeepLastAndNoShuffle) {
  U::BatchSampler s(7, 3, 1, U::BatchSamplerOptions().shuffle(false).drop_last(false));
  EXPECT_EQ(s.batches_per_epoch(), 3);
  EXPECT_EQ(values(s.next()), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(values(s.next()), (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(values(s.next()), (std::vector<int64_t>{6}));
  EXPECT_EQ(values(s.next()), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_HAS(error_of([] { U::BatchSampler(2, 3, 0); }), "2 items make no complete batch of 3");
}

TEST(TrainSampler, RestoredStateContinuesTheOrder) {
  for (int64_t cut : {0, 1, 3, 4, 5, 9}) {  // 4 batches per epoch: boundaries at 0, 4, 8
    U::BatchSampler a(17, 4, 5);
    take(a, cut);
    const auto saved = a.state();
    const auto expected = take(a, 10);
    U::BatchSampler b(17, 4, 1000);
    b.load_state(saved);
    EXPECT_EQ(b.epoch(), cut / 4) << cut;
    EXPECT_EQ(take(b, 10), expected) << "cut after " << cut << " batches";
  }
  U::BatchSampler a(17, 4, 5);
  U::BatchSampler wrong(18, 4, 5);
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
    const auto p = values(U::random_permutation(engine, 3));
    for (int i = 0; i < 3; ++i) counts[i][p[i]]++;
  }
  for (const auto& row : counts) {
    for (int c : row) EXPECT_NEAR(c / double(trials), 1.0 / 3, 0.015);
  }
  // The engine state text round-trips.
  std::mt19937_64 e(123);
  e.discard(17);
  auto copy = U::rng_from_state(U::rng_state(e), "test");
  EXPECT_EQ(copy(), e());
}

}  // namespace
