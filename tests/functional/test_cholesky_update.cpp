// The rank-1 Cholesky update (kvq/functional/cholesky_update.h): the factor of L L^T + x x^T,
// the CPU kernel against the LibTorch-op form, in place and out of place, and positive
// definiteness over 10,000 updates of a nearly singular start (alpha = 1e-4), as causal
// intention's decoding uses it.
#include "test_utils.h"

namespace kvq_test {
namespace {

// A well-conditioned SPD batch (B, H, d, d): X X^T / d + I.
torch::Tensor spd(int64_t B, int64_t H, int64_t d, torch::ScalarType dtype) {
  auto x = torch::randn({B, H, d, d}, torch::kFloat64);
  return (torch::matmul(x, x.transpose(-2, -1)) / d + torch::eye(d, torch::kFloat64)).to(dtype);
}

torch::Tensor outer(const torch::Tensor& x) { return x.unsqueeze(-1) * x.unsqueeze(-2); }

TEST(CholeskyRank1Update, IsTheFactorOfTheUpdatedMatrix) {
  torch::manual_seed(0);
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    SCOPED_TRACE(c10::toString(dtype));
    const int64_t B = 2, H = 3, d = 7;
    const auto a = spd(B, H, d, dtype);
    const auto factor = torch::linalg_cholesky(a);
    const auto x = torch::randn({B, H, d}, dtype);
    const auto before = factor.clone();
    const auto got = F::cholesky_rank1_update(factor, x);
    const auto want = torch::linalg_cholesky(a + outer(x));
    const double tol = dtype == torch::kFloat64 ? kTolMatmul64 : 1e-5;
    report(std::string("cholesky_rank1_update ") + c10::toString(dtype), "relerr",
           max_rel_err(got, want));
    EXPECT_LE(max_rel_err(got, want), tol);
    EXPECT_TRUE(torch::equal(factor, before)) << "the out-of-place form changed its input";
    EXPECT_TRUE(torch::equal(got.triu(1), torch::zeros_like(got.triu(1))));
    // The LibTorch-op form (what non-CPU tensors run) does the same rotations.
    EXPECT_LE(max_rel_err(F::cholesky_rank1_update_composite(factor, x), got),
              dtype == torch::kFloat64 ? 1e-14 : 1e-6);
    // In place, on a contiguous factor and on a strided view of a wider buffer.
    auto in_place = factor.clone();
    F::cholesky_rank1_update_(in_place, x);
    EXPECT_TRUE(torch::equal(in_place, got));
    auto wide = torch::zeros({B, H, d, d + 3}, dtype);
    auto view = wide.narrow(-1, 0, d);
    view.copy_(factor);
    F::cholesky_rank1_update_(view, x);
    EXPECT_TRUE(torch::equal(view, got));
    EXPECT_TRUE(torch::equal(wide.narrow(-1, d, 3), torch::zeros({B, H, d, 3}, dtype)));
  }
}

// From L = sqrt(alpha) I with alpha = 1e-4 (A is rank deficient but for alpha until t >= d keys),
// 10,000 updates with random unit-scale keys: the diagonal stays positive throughout and L L^T is
// alpha I + sum k k^T to rounding.
TEST(CholeskyRank1Update, StaysPositiveDefiniteOverTenThousandRandomKeysWithAlpha1e4) {
  torch::manual_seed(1);
  const int64_t B = 2, H = 2, d = 16, steps = 10000;
  const double alpha = 1e-4;
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    SCOPED_TRACE(c10::toString(dtype));
    const auto keys = torch::randn({steps, B, H, d}, torch::kFloat64);
    const auto keys_t = keys.to(dtype);
    auto factor = (std::sqrt(alpha) * torch::eye(d, torch::kFloat64))
                      .expand({B, H, d, d})
                      .to(dtype)
                      .contiguous();
    double worst = 0;
    auto check = [&](int64_t t) {  // after t updates
      EXPECT_GT(factor.diagonal(0, -2, -1).min().item<double>(), 0.0) << "after " << t;
      const auto seen = keys.narrow(0, 0, t);
      const auto a =
          torch::einsum("sbhi,sbhj->bhij", {seen, seen}) + alpha * torch::eye(d, torch::kFloat64);
      const auto f = factor.to(torch::kFloat64);
      const double err = max_rel_err(torch::matmul(f, f.transpose(-2, -1)), a);
      worst = std::max(worst, err);
      return err;
    };
    for (int64_t t = 1; t <= steps; ++t) {
      F::cholesky_rank1_update_(factor, keys_t[t - 1]);
      if (t == 3 || t == d - 1 || t % 1000 == 0) check(t);
    }
    report(std::string("rank-1 updates x10000 alpha=1e-4 ") + c10::toString(dtype),
           "max relerr of L L^T", worst);
    // Backward stable: rounding grows like sqrt(steps) eps, far below these bounds.
    EXPECT_LE(worst, dtype == torch::kFloat64 ? 1e-12 : 1e-4);
  }
}

TEST(CholeskyRank1Update, BadInputsNameTheArgument) {
  const auto factor = torch::eye(4, torch::kFloat64).expand({2, 4, 4}).contiguous();
  const auto x = torch::ones({2, 4}, torch::kFloat64);
  expect_error_naming([&] { F::cholesky_rank1_update(factor.narrow(-1, 0, 3), x); }, {"factor"},
                      "non-square factor");
  expect_error_naming([&] { F::cholesky_rank1_update(factor, x.narrow(-1, 0, 3)); }, {"x"},
                      "x of the wrong width");
  expect_error_naming(
      [&] {
        F::cholesky_rank1_update(factor, torch::ones({3, 4}, torch::kFloat64));
      },
      {"x"}, "x of another batch");
  expect_error_naming([&] { F::cholesky_rank1_update(factor, x.to(torch::kFloat32)); },
                      {"x", "factor"}, "two dtypes");
  expect_error_naming([&] { F::cholesky_rank1_update(factor, x.clone().requires_grad_(true)); },
                      {"NoGradGuard"}, "gradients requested");
}

}  // namespace
}  // namespace kvq_test
