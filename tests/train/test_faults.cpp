// Numerical faults: the finiteness check of an update names the loss or the first parameter
// whose gradient is not finite; the fault budget skips while it lasts, then stops with a
// NumericalFault naming the step and the last good checkpoint.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "kvq/train/faults.h"
#include "test_files.h"

namespace {

namespace T = kvq::train;

TEST(Faults, CheckUpdateNamesTheLossOrTheFirstBadGradient) {
  torch::nn::Sequential model(torch::nn::Linear(2, 2), torch::nn::Linear(2, 1));
  auto loss = model->forward(torch::ones({1, 2})).sum();
  loss.backward();
  double value = 0;
  EXPECT_FALSE(T::check_update(loss, *model, value).has_value());
  EXPECT_EQ(value, loss.item<double>());

  model->named_parameters()["1.weight"].grad().fill_(std::numeric_limits<double>::infinity());
  const auto bad_gradient = T::check_update(loss, *model, value);
  ASSERT_TRUE(bad_gradient.has_value());
  EXPECT_EQ(bad_gradient->describe(), "gradient of 1.weight (backward)");

  const auto nan = torch::full({}, std::nan(""));
  const auto bad_loss = T::check_update(nan, *model, value);
  ASSERT_TRUE(bad_loss.has_value());
  EXPECT_EQ(bad_loss->describe(), "non-finite loss (forward)");
}

TEST(Faults, BudgetSkipsWhileItLastsThenStops) {
  T::FaultBudget budget(2, 1);  // a resumed run that has skipped one update already
  const T::Fault fault{"loss", "forward", ""};
  EXPECT_FALSE(budget.would_skip(/*in_update=*/false));
  ASSERT_TRUE(budget.would_skip(true));
  EXPECT_EQ(budget.skip(fault, 7, 10),
            "step 7/10: non-finite loss (forward); update skipped (2 of at most "
            "max_skipped_steps = 2)");
  EXPECT_FALSE(budget.would_skip(true));
  const auto stop = budget.stop(fault, 8, 10, true, "run/checkpoint.pt", 6);
  EXPECT_EQ(stop.step(), 8);
  EXPECT_EQ(stop.checkpoint_step(), 6);
  EXPECT_HAS(std::string(stop.what_without_backtrace()),
             "train: numerical fault at step 8/10: non-finite loss (forward)");
  EXPECT_HAS(std::string(stop.what_without_backtrace()),
             "2 update(s) skipped before, max_skipped_steps = 2: the run stops");
  EXPECT_HAS(std::string(stop.what_without_backtrace()),
             "the last good checkpoint run/checkpoint.pt (step 6) is intact");
  const auto early = budget.stop(T::Fault{"factorisation", "val", "singular"}, 0, 10, false,
                                 "run/checkpoint.pt", -1);
  EXPECT_HAS(std::string(early.what_without_backtrace()),
             "evaluation after step 0/10: factorisation (val): singular");
  EXPECT_HAS(std::string(early.what_without_backtrace()), "no checkpoint was written yet");
}

}  // namespace
