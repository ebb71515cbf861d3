// Model FLOP counting and the matmul rate (kvq/train/flops.h).
#include "kvq/train/flops.h"

#include <gtest/gtest.h>

#include <cmath>

namespace {

namespace T = kvq::train;

TEST(TrainFlops, CountsEveryLinearLayerOnce) {
  torch::nn::Sequential model(torch::nn::Linear(3, 4), torch::nn::ReLU(),
                              torch::nn::Linear(torch::nn::LinearOptions(4, 5).bias(false)),
                              torch::nn::LayerNorm(torch::nn::LayerNormOptions({5})),
                              torch::nn::Embedding(7, 5));
  EXPECT_EQ(T::linear_flops_per_position(*model), 2.0 * (3 * 4 + 4 * 5));
}

// Softmax attention at batch 1: Q K^T and P V, 2 n^2 (d + dv) per head (n (n + 1) (d + dv)
// causal); the chunk length 0 stands for the head width in the chunk-parallel formulas.
TEST(TrainFlops, AttentionIsTheRegistryFormulaOfOneSequence) {
  EXPECT_EQ(T::attention_flops("softmax", 2, 12, 4, /*causal=*/false, 0), 2 * 2.0 * 144 * 8);
  EXPECT_EQ(T::attention_flops("softmax", 2, 12, 4, /*causal=*/true, 0), 2 * 12.0 * 13 * 8);
  EXPECT_EQ(T::attention_flops("linear", 1, 16, 4, true, 0),
            T::attention_flops("linear", 1, 16, 4, true, 4));
  EXPECT_NE(T::attention_flops("linear", 1, 16, 4, true, 0),
            T::attention_flops("linear", 1, 16, 4, true, 8));
}

// The rate is positive and finite, and measuring it draws nothing from torch's generator.
TEST(TrainFlops, GemmRateLeavesTheGeneratorAlone) {
  torch::manual_seed(5);
  const auto before = torch::rand({4});
  torch::manual_seed(5);
  const double rate = T::measure_gemm_flops(torch::kFloat32, torch::kCPU, 64, 2);
  EXPECT_TRUE(std::isfinite(rate) && rate > 0) << rate;
  EXPECT_TRUE(torch::equal(torch::rand({4}), before));
}

}  // namespace
