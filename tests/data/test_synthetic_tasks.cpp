// The Key-Value Transformer synthetic tasks: every target checked element by element against the
// task's definition, worked examples, and seeded determinism.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "kvq/data/synthetic_tasks.h"
#include "test_files.h"

namespace {

namespace D = kvq::data;

using kvq_test_files::error_of;

std::vector<int64_t> row(const torch::Tensor& t, int64_t i) {
  auto r = t[i].contiguous();
  return {r.data_ptr<int64_t>(), r.data_ptr<int64_t>() + r.numel()};
}

D::SequencePairs make(D::SyntheticTask task, int64_t n, int64_t length, uint64_t seed,
                      int64_t vocab = 10) {
  return D::make_synthetic_task(task, n, seed,
                                D::SyntheticTaskOptions().length(length).vocab_size(vocab));
}

TEST(DataSyntheticTasks, NamesAreThePapersFiveInOrder) {
  EXPECT_EQ(D::synthetic_task_names(),
            (std::vector<std::string>{"reverse", "sort", "copy", "sub", "swap"}));
  for (const auto& name : D::synthetic_task_names()) {
    EXPECT_EQ(D::synthetic_task_name(D::parse_synthetic_task(name)), name);
  }
  const auto message = error_of([] { D::parse_synthetic_task("rotate"); });
  EXPECT_NE(message.find("rotate"), std::string::npos) << message;
  EXPECT_NE(message.find("reverse, sort, copy, sub, swap"), std::string::npos) << message;
}

// x = 3 1 4 1 5 9 (L = 6, h = 3) and x = 3 1 4 1 5 (L = 5, h = 2), targets written out by hand.
TEST(DataSyntheticTasks, WorkedExamples) {
  const auto even = torch::tensor({3, 1, 4, 1, 5, 9}, torch::kInt64).view({1, 6});
  const auto odd = torch::tensor({3, 1, 4, 1, 5}, torch::kInt64).view({1, 5});
  using T = D::SyntheticTask;
  EXPECT_EQ(row(D::synthetic_targets(T::Reverse, even), 0), (std::vector<int64_t>{9, 5, 1, 4, 1, 3}));
  EXPECT_EQ(row(D::synthetic_targets(T::Sort, even), 0), (std::vector<int64_t>{1, 1, 3, 4, 5, 9}));
  EXPECT_EQ(row(D::synthetic_targets(T::Copy, even), 0), (std::vector<int64_t>{3, 1, 4, 1, 5, 9}));
  EXPECT_EQ(row(D::synthetic_targets(T::Sub, even), 0), (std::vector<int64_t>{6, 8, 5, 8, 4, 0}));
  EXPECT_EQ(row(D::synthetic_targets(T::Swap, even), 0), (std::vector<int64_t>{1, 5, 9, 3, 1, 4}));
  EXPECT_EQ(row(D::synthetic_targets(T::Swap, odd), 0), (std::vector<int64_t>{4, 1, 5, 3, 1}));
  // sub with V = 6 is 5 - x.
  EXPECT_EQ(row(D::synthetic_targets(T::Sub, odd, 6), 0), (std::vector<int64_t>{2, 4, 1, 4, 0}));
}

TEST(DataSyntheticTasks, GeneratedTargetsFollowTheDefinitions) {
  for (int64_t length : {12, 7}) {
    const int64_t n = 40, h = length / 2;
    const auto reverse = make(D::SyntheticTask::Reverse, n, length, 1);
    const auto sort = make(D::SyntheticTask::Sort, n, length, 1);
    const auto copy = make(D::SyntheticTask::Copy, n, length, 1);
    const auto sub = make(D::SyntheticTask::Sub, n, length, 1);
    const auto swap = make(D::SyntheticTask::Swap, n, length, 1);
    for (const auto* p : {&reverse, &sort, &copy, &sub, &swap}) {
      ASSERT_EQ(p->inputs.sizes(), torch::IntArrayRef({n, length}));
      ASSERT_EQ(p->targets.sizes(), torch::IntArrayRef({n, length}));
      ASSERT_EQ(p->inputs.scalar_type(), torch::kInt64);
      ASSERT_EQ(p->targets.scalar_type(), torch::kInt64);
      // Same seed and options: the inputs do not depend on the task.
      EXPECT_TRUE(torch::equal(p->inputs, reverse.inputs));
    }
    for (int64_t i = 0; i < n; ++i) {
      const auto x = row(reverse.inputs, i);
      for (int64_t j = 0; j < length; ++j) {
        ASSERT_GE(x[j], 0);
        ASSERT_LT(x[j], 10);
        EXPECT_EQ(row(reverse.targets, i)[j], x[length - 1 - j]);
        EXPECT_EQ(row(copy.targets, i)[j], x[j]);
        EXPECT_EQ(row(sub.targets, i)[j], 9 - x[j]);
        EXPECT_EQ(row(swap.targets, i)[j], j < length - h ? x[h + j] : x[j - (length - h)]);
      }
      const auto s = row(sort.targets, i);
      std::vector<int> count_x(10, 0), count_s(10, 0);
      for (int64_t j = 0; j < length; ++j) {
        if (j > 0) {
          EXPECT_LE(s[j - 1], s[j]) << "sort output not ascending, row " << i;
        }
        ++count_x[x[j]];
        ++count_s[s[j]];
      }
      EXPECT_EQ(count_x, count_s) << "sort output is not a permutation of row " << i;
    }
  }
}

// 64000 draws of a fair digit: each count is 6400 +- 76 (one sd); 5% is over 4 sd.
TEST(DataSyntheticTasks, InputsAreUniformOverTheVocabulary) {
  const auto data = make(D::SyntheticTask::Copy, 1000, 64, 7);
  const auto counts = torch::bincount(data.inputs.view(-1), {}, 10);
  ASSERT_EQ(counts.size(0), 10);
  for (int64_t v = 0; v < 10; ++v) EXPECT_NEAR(counts[v].item<int64_t>(), 6400, 320) << v;
  const auto big = make(D::SyntheticTask::Copy, 200, 64, 7, 37);
  EXPECT_EQ(big.inputs.min().item<int64_t>(), 0);
  EXPECT_EQ(big.inputs.max().item<int64_t>(), 36);
}

TEST(DataSyntheticTasks, SeedDeterminesTheData) {
  const auto a = make(D::SyntheticTask::Sort, 64, 32, 123);
  const auto b = make(D::SyntheticTask::Sort, 64, 32, 123);
  const auto c = make(D::SyntheticTask::Sort, 64, 32, 124);
  EXPECT_TRUE(torch::equal(a.inputs, b.inputs));
  EXPECT_TRUE(torch::equal(a.targets, b.targets));
  EXPECT_FALSE(torch::equal(a.inputs, c.inputs));
}

// The C++ standard fixes std::mt19937_64: default seed 5489, the 10000th output is
// 9981545732273789042 ([rand.predef]). A digit is draw % 10 unless the draw falls in the rejected
// top 6 values of 2^64, so input 10000 is 9981545732273789042 % 10 = 2 on every conforming machine.
TEST(DataSyntheticTasks, StreamIsTheStandardMersenneTwister) {
  const auto data = make(D::SyntheticTask::Copy, 1, 10000, 5489);
  EXPECT_EQ(data.inputs[0][9999].item<int64_t>(), 2);
  // Row-major: two rows of 5000 are the same stream.
  const auto two_rows = make(D::SyntheticTask::Copy, 2, 5000, 5489);
  EXPECT_TRUE(torch::equal(two_rows.inputs.view({1, 10000}), data.inputs));
}

TEST(DataSyntheticTasks, SplitsComeFromOneStreamInOrder) {
  const auto opts = D::SyntheticTaskOptions().length(16);
  const auto splits = D::make_synthetic_splits(D::SyntheticTask::Reverse, 9, opts, 30, 5, 7);
  EXPECT_EQ(splits.train.inputs.size(0), 30);
  EXPECT_EQ(splits.val.inputs.size(0), 5);
  EXPECT_EQ(splits.test.inputs.size(0), 7);
  const auto all = D::make_synthetic_task(D::SyntheticTask::Reverse, 42, 9, opts);
  EXPECT_TRUE(torch::equal(splits.train.inputs, all.inputs.narrow(0, 0, 30)));
  EXPECT_TRUE(torch::equal(splits.val.inputs, all.inputs.narrow(0, 30, 5)));
  EXPECT_TRUE(torch::equal(splits.test.inputs, all.inputs.narrow(0, 35, 7)));
  EXPECT_TRUE(torch::equal(splits.test.targets, all.targets.narrow(0, 35, 7)));
}

TEST(DataSyntheticTasks, BadArgumentsAreRejected) {
  auto m = error_of([] { make(D::SyntheticTask::Copy, 4, 0, 1); });
  EXPECT_NE(m.find("length"), std::string::npos) << m;
  m = error_of([] { make(D::SyntheticTask::Copy, 4, 8, 1, 0); });
  EXPECT_NE(m.find("vocab_size"), std::string::npos) << m;
  m = error_of([] {
    D::synthetic_targets(D::SyntheticTask::Sub, torch::tensor({0, 10}, torch::kInt64).view({1, 2}));
  });
  EXPECT_NE(m.find("[0, 10)"), std::string::npos) << m;
  m = error_of([] { D::synthetic_targets(D::SyntheticTask::Sub, torch::zeros({2, 3})); });
  EXPECT_NE(m.find("int64"), std::string::npos) << m;
}

}  // namespace
