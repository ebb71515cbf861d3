// Learning-rate schedules: values worked out by hand, the Key-Value Transformer code's formula
// transcribed literally as the reference of cosine_product_lr, Noam's shape, the schedule as
// data, and the rate reaching Adam/AdamW updates.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <string>

#include "kvq/train/schedules.h"
#include "test_files.h"

namespace {

namespace T = kvq::train;

constexpr double kPi = 3.14159265358979323846;

using kvq_test_files::error_of;

TEST(TrainSchedules, ConstantIsConstant) {
  for (int64_t step : {0, 1, 1000}) EXPECT_EQ(T::constant_lr(step, 3e-4), 3e-4);
  EXPECT_HAS(error_of([] { T::constant_lr(-1, 1.0); }), "step must be >= 0");
}

// base 1, floor 0.1, W = 4, T = 12.
TEST(TrainSchedules, WarmupCosineWorkedValues) {
  const auto lr = [](int64_t s) { return T::warmup_cosine_lr(s, 1.0, 4, 12, 0.1); };
  EXPECT_DOUBLE_EQ(lr(0), 0.25);
  EXPECT_DOUBLE_EQ(lr(1), 0.5);
  EXPECT_DOUBLE_EQ(lr(3), 1.0);
  EXPECT_DOUBLE_EQ(lr(4), 1.0);                                     // cosine starts at the peak
  EXPECT_DOUBLE_EQ(lr(6), 0.1 + 0.9 * 0.5 * (1 + std::cos(kPi / 4)));
  EXPECT_DOUBLE_EQ(lr(8), 0.55);                                    // half way: mid-point
  EXPECT_DOUBLE_EQ(lr(12), 0.1);
  EXPECT_DOUBLE_EQ(lr(1000), 0.1);
  for (int64_t s = 4; s < 12; ++s) EXPECT_GT(lr(s), lr(s + 1)) << s;
  // No warm-up: the first update already has the peak rate.
  EXPECT_DOUBLE_EQ(T::warmup_cosine_lr(0, 2.0, 0, 10), 2.0);
  EXPECT_HAS(error_of([] { T::warmup_cosine_lr(0, 1.0, 5, 5); }), "total_steps (5) must be > warmup_steps (5)");
}

// The reference: get_lr_factor of CosineWarmupScheduler in the paper's Reverse_sort_pos.py,
//   lr_factor = 0.5 * (1 + np.cos(np.pi * epoch / self.max_num_iters))
//   if epoch <= self.warmup: lr_factor *= epoch * 1.0 / self.warmup
// evaluated at epoch = number of scheduler steps taken = updates already done.
double kvt_reference(int64_t epoch, int64_t warmup, int64_t max_iters) {
  double lr_factor = 0.5 * (1 + std::cos(kPi * epoch / max_iters));
  if (epoch <= warmup) lr_factor *= epoch * 1.0 / warmup;
  return lr_factor;
}

TEST(TrainSchedules, CosineProductMatchesTheKeyValueTransformerCode) {
  const int64_t warmup = 5, total = 2 * 390;  // 2 epochs of 50000 / 128 batches (drop_last)
  for (int64_t step = 0; step <= total; ++step) {
    EXPECT_NEAR(T::cosine_product_lr(step, 1e-3, warmup, total), 1e-3 * kvt_reference(step, warmup, total),
                1e-18)
        << step;
  }
  EXPECT_EQ(T::cosine_product_lr(0, 1e-3, warmup, total), 0.0);  // first update: rate 0
  EXPECT_EQ(T::cosine_product_lr(total + 7, 1e-3, warmup, total), 0.0);  // stays at the floor
  EXPECT_DOUBLE_EQ(T::cosine_product_lr(0, 1.0, 5, 10, 0.2), 0.2);
  EXPECT_DOUBLE_EQ(T::cosine_product_lr(5, 1.0, 5, 10, 0.2), 0.2 + 0.8 * 0.5);
}

TEST(TrainSchedules, NoamRisesForWarmupStepsThenDecaysAsInverseSqrt) {
  const int64_t d = 256, w = 4000;
  const double scale = 1.0 / std::sqrt(256.0);
  EXPECT_DOUBLE_EQ(T::noam_lr(0, d, w), scale * std::pow(4000.0, -1.5));  // s = 1
  EXPECT_DOUBLE_EQ(T::noam_lr(w - 1, d, w), scale / std::sqrt(4000.0));   // s = w: the peak
  EXPECT_DOUBLE_EQ(T::noam_lr(4 * w - 1, d, w), scale / std::sqrt(16000.0));
  EXPECT_DOUBLE_EQ(T::noam_lr(99, d, w, 2.0), 2.0 * scale * 100 * std::pow(4000.0, -1.5));
  for (int64_t s = 0; s < w - 1; s += 97) EXPECT_LT(T::noam_lr(s, d, w), T::noam_lr(s + 1, d, w));
  for (int64_t s = w - 1; s < 3 * w; s += 97) EXPECT_GT(T::noam_lr(s, d, w), T::noam_lr(s + 1, d, w));
  EXPECT_HAS(error_of([] { T::noam_lr(0, 0); }), "d_model must be >= 1");
}

TEST(TrainSchedules, LrScheduleDispatchesAndRoundTripsThroughJson) {
  T::LrSchedule s;
  s.kind = "cosine";
  s.base_lr = 1.0;
  s.min_lr = 0.1;
  s.warmup_steps = 4;
  s.total_steps = 12;
  for (int64_t step : {0, 5, 8, 20}) {
    EXPECT_EQ(T::learning_rate(s, step), T::warmup_cosine_lr(step, 1.0, 4, 12, 0.1));
  }
  const auto back = T::lr_schedule_from_json(T::to_json(s));
  EXPECT_EQ(T::to_json(back), T::to_json(s));

  T::LrSchedule noam;
  noam.kind = "noam";
  noam.d_model = 64;
  noam.warmup_steps = 10;
  EXPECT_EQ(T::learning_rate(noam, 3), T::noam_lr(3, 64, 10));
  T::LrSchedule kvt;
  kvt.kind = "cosine-product";
  kvt.warmup_steps = 5;
  kvt.total_steps = 50;
  EXPECT_EQ(T::learning_rate(kvt, 7), T::cosine_product_lr(7, 1e-3, 5, 50));
  EXPECT_EQ(T::learning_rate(T::LrSchedule{}, 7), 1e-3);

  T::LrSchedule bad;
  bad.kind = "linear";
  EXPECT_HAS(error_of([&] { T::learning_rate(bad, 0); }),
             "unknown kind 'linear'; valid kinds: constant, cosine, cosine-product, noam");
  EXPECT_HAS(error_of([] {
               auto j = T::to_json(T::LrSchedule{});
               j["warmup"] = 3;
               T::lr_schedule_from_json(j);
             }),
             "unknown key 'warmup'");
  EXPECT_HAS(error_of([] {
               auto j = T::to_json(T::LrSchedule{});
               j["total_steps"] = "ten";
               T::lr_schedule_from_json(j);
             }),
             "'total_steps' has the wrong type");
}

// One Adam step from zero moments moves a parameter with gradient g by lr * g / (|g| + eps):
// about lr. So the step taken shows which rate the optimiser used.
double first_adam_move(torch::optim::Optimizer& opt, torch::Tensor p) {
  const auto before = p.detach().clone();
  opt.zero_grad();
  (p * 1.0).sum().backward();
  opt.step();
  return (before - p.detach()).item<double>();
}

TEST(TrainSchedules, SetLearningRateReachesEveryParamGroup) {
  auto a = torch::ones({1}, torch::requires_grad());
  auto b = torch::ones({1}, torch::requires_grad());
  torch::optim::Adam adam({torch::optim::OptimizerParamGroup({a}), torch::optim::OptimizerParamGroup({b})},
                          torch::optim::AdamOptions(1e-3));
  T::set_learning_rate(adam, 0.25);
  EXPECT_EQ(T::get_learning_rate(adam), 0.25);
  EXPECT_EQ(adam.param_groups()[1].options().get_lr(), 0.25);
  const auto before = b.detach().clone();
  EXPECT_NEAR(first_adam_move(adam, a), 0.25, 1e-6);
  EXPECT_NEAR((before - b.detach()).item<double>(), 0.0, 0.0);  // b had no gradient

  auto c = torch::ones({1}, torch::requires_grad());
  torch::optim::AdamW adamw({c}, torch::optim::AdamWOptions(1e-3).weight_decay(0.0));
  T::set_learning_rate(adamw, 0.125);
  EXPECT_NEAR(first_adam_move(adamw, c), 0.125, 1e-6);
  EXPECT_HAS(error_of([&] { T::set_learning_rate(adamw, -1.0); }), "lr must be finite and >= 0");
}

}  // namespace
