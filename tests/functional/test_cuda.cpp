// Every registered mechanism on a GPU (the composite ATen forms, and PyTorch's fused attention for
// softmax, that CUDA tensors take instead of the CPU kernels) against its float64 oracle on the
// standard sweep of cases (test_utils.h), at the tolerance policy of docs/mechanisms.md; and the
// gradients of every input on the GPU against the CPU path's, in float64 at the same tolerance
// (kv-pos's pos_bias, whose exact gradient is 0, must be 0 up to rounding on both).
// Skipped where this LibTorch has no CUDA or no GPU is visible (CI has none).
#include "test_files.h"
#include "test_utils.h"

namespace kvq_test {
namespace {

const torch::Device kCuda(torch::kCUDA, 0);

Inputs on(const Inputs& in, const torch::Device& device) {
  Inputs out = in;
  for (auto* t : {&out.q, &out.k, &out.v, &out.alpha, &out.mask, &out.pos_weight,
                  &out.pos_bias}) {
    if (t->defined()) *t = t->to(device);
  }
  return out;
}

class CudaSweep : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA in this LibTorch, or no GPU";
  }
};

TEST_P(CudaSweep, MatchesOracle) {
  const auto& mech = GetParam();
  for (const auto dtype : {torch::kFloat64, torch::kFloat32}) {
    for (const auto& c : standard_cases(mech)) {
      SCOPED_TRACE(mech + " " + c.label);
      const auto in = make_inputs(c, 1234).to(dtype);
      const auto gpu = on(in, kCuda);
      const auto out = run_impl(mech, gpu, make_options(c.causal, gpu.mask, c.chunk));
      ASSERT_TRUE(out.is_cuda());
      ASSERT_EQ(out.scalar_type(), dtype);
      const auto ref = run_oracle(mech, in, c.causal, in.mask);
      ASSERT_EQ(out.sizes(), ref.sizes());
      const bool fp64 = dtype == torch::kFloat64;
      const double err = fp64 ? max_rel_err(out.cpu(), ref) : nrmse(out.cpu(), ref);
      const std::string label = mech + " " + c.label + alpha_label(mech, c) +
                                (fp64 ? " fp64 cuda" : " fp32 cuda");
      report(label, fp64 ? "relerr" : "nrmse", err);
      EXPECT_LE(err, fp64 ? fp64_tolerance(mech) : kTolNrmse32) << label;
    }
  }
}

// d<out, g>/d(every input the mechanism takes), float64, GPU against CPU.
TEST_P(CudaSweep, GradientsMatchTheCpu) {
  const auto& mech = GetParam();
  const auto& info = kvq::find_mechanism(mech);
  for (const auto& c : standard_cases(mech)) {
    SCOPED_TRACE(mech + " " + c.label);
    const auto in = make_inputs(c, 4321);
    std::vector<std::string> names = {"q", "k", "v"};
    if (keys_are_queries(mech)) names = {"k", "v"};
    if (info.traits.uses_alpha) names.push_back("alpha");
    if (info.projection == kvq::Projection::KVPos) {
      names.push_back("pos_weight");
      names.push_back("pos_bias");
    }
    auto grads_on = [&](const torch::Device& device) {
      auto x = on(in, device);
      std::vector<torch::Tensor> leaves;
      for (const auto& n : names) {
        auto& t = n == "q"            ? x.q
                  : n == "k"          ? x.k
                  : n == "v"          ? x.v
                  : n == "alpha"      ? x.alpha
                  : n == "pos_weight" ? x.pos_weight
                                      : x.pos_bias;
        t = t.detach().requires_grad_(true);
        leaves.push_back(t);
      }
      const auto out = run_impl(mech, x, make_options(c.causal, x.mask, c.chunk));
      torch::manual_seed(99);
      const auto g = torch::randn(out.sizes(), torch::kFloat64).to(device);
      auto grads = torch::autograd::grad({out}, leaves, {g});
      for (auto& t : grads) t = t.cpu();
      return grads;
    };
    const auto cpu = grads_on(torch::kCPU);
    const auto gpu = grads_on(kCuda);
    double largest = 0;  // the largest gradient entry of the call
    for (const auto& g : cpu) largest = std::max(largest, g.abs().max().item<double>());
    for (size_t i = 0; i < names.size(); ++i) {
      const std::string label = mech + " " + c.label + " d" + names[i] + " fp64";
      if (names[i] == "pos_bias" && info.traits.has_softmax) {
        // The bias adds one constant to every score of a row, which the row softmax cancels:
        // its exact gradient is 0, and both devices must give 0 up to rounding.
        for (const auto* g : {&cpu[i], &gpu[i]}) {
          const double size = g->abs().max().item<double>() / largest;
          report(label + (g == &cpu[i] ? " cpu" : " cuda") + " (exactly 0)", "relsize", size);
          EXPECT_LE(size, fp64_tolerance(mech)) << label;
        }
        continue;
      }
      const double err = max_rel_err(gpu[i], cpu[i]);
      report(label + " cuda-vs-cpu", "relerr", err);
      EXPECT_LE(err, fp64_tolerance(mech)) << label;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Registry, CudaSweep, ::testing::ValuesIn(kvq::mechanism_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return kvq_test_files::test_name(info.param);
                         });

}  // namespace
}  // namespace kvq_test
