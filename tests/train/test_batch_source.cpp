// The batch source of the training loop: the sampler's rows of every field, each worker's share
// of a batch (rank r of W: rows [B r / W, B (r + 1) / W)), drawn batches, fields kept on the
// host, and the errors naming fields and the batch's size.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kvq/train/batch_source.h"
#include "kvq/util/sampler.h"
#include "test_files.h"

namespace {

namespace T = kvq::train;
using kvq_test_files::error_of;

// Rows 0..n-1 whose values are their row numbers, and their doubles.
T::Batch numbered(int64_t n) {
  const auto rows = torch::arange(n, torch::kInt64);
  return {{"x", rows.view({n, 1}).repeat({1, 3})}, {"y", rows * 2}};
}

TEST(BatchSource, RowsOfTheSamplersBatchInEveryField) {
  kvq::util::BatchSampler sampler(12, 4, 5), same(12, 4, 5);
  auto source = T::BatchSource::rows_of(numbered(12), sampler);
  for (int64_t step = 0; step < 3; ++step) {
    const auto index = same.next();
    const auto batch = source.next(step, 0, 1, torch::kCPU);
    EXPECT_TRUE(torch::equal(batch["x"].select(1, 2), index));
    EXPECT_TRUE(torch::equal(batch["y"], index * 2));
    EXPECT_EQ(batch.rows(), 4);
  }
  EXPECT_EQ(source.sampler(), &sampler);
}

TEST(BatchSource, EachWorkerTakesItsContiguousShare) {
  kvq::util::BatchSampler whole_sampler(12, 6, 9);
  const auto index = whole_sampler.next();
  for (int64_t rank = 0; rank < 3; ++rank) {
    kvq::util::BatchSampler sampler(12, 6, 9);
    auto rows = T::BatchSource::rows_of(numbered(12), sampler);
    EXPECT_TRUE(torch::equal(rows.next(0, rank, 3, torch::kCPU)["y"],
                             index.slice(0, 2 * rank, 2 * rank + 2) * 2));
    auto drawn = T::BatchSource::drawn([](int64_t step) { return numbered(6 + step); });
    EXPECT_TRUE(torch::equal(drawn.next(0, rank, 3, torch::kCPU)["y"],
                             torch::arange(2 * rank, 2 * rank + 2, torch::kInt64) * 2));
  }
  auto drawn = T::BatchSource::drawn([](int64_t step) { return numbered(6 + step); });
  EXPECT_EQ(drawn.next(3, 0, 1, torch::kCPU).rows(), 9);  // one worker: the whole batch
  EXPECT_HAS(error_of([&] { drawn.next(1, 0, 3, torch::kCPU); }),
             "the batch of 7 items is not divisible by the 3 workers");
}

TEST(BatchSource, HostFieldsStayAsTheyAre) {
  kvq::util::BatchSampler sampler(8, 4, 1);
  auto source = T::BatchSource::rows_of(numbered(8), sampler).on_host({"x"});
  const auto batch = source.next(0, 0, 1, torch::kCPU);
  EXPECT_EQ(batch["x"].device(), torch::Device(torch::kCPU));
  EXPECT_EQ(batch.fields().size(), 2u);
}

TEST(BatchSource, ErrorsNameTheFieldsAndSizes) {
  const auto batch = numbered(4);
  EXPECT_HAS(error_of([&] { batch["z"]; }), "no field 'z'; the fields are: x, y");
  T::Batch uneven = {{"a", torch::zeros({3})}, {"b", torch::zeros({4})}};
  EXPECT_HAS(error_of([&] { uneven.rows(); }), "field 'b' has 4 rows, field 'a' has 3");
  kvq::util::BatchSampler sampler(5, 2, 1);
  EXPECT_HAS(error_of([&] { T::BatchSource::rows_of(numbered(4), sampler); }),
             "the data has 4 rows, the sampler draws from 5");
  T::BatchSource none;
  EXPECT_TRUE(none.next(0, 0, 1, torch::kCPU).empty());
  EXPECT_HAS(error_of([&] { none.next(0, 1, 2, torch::kCPU); }),
             "with 2 workers the loop needs the batch");
}

}  // namespace
