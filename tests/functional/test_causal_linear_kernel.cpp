// The fused causal linear kernel (src/kernels/cpu/causal_linear_kernel.cpp, used by causal linear
// and linear-identity attention on CPU float32/float64) and its analytic backward against the
// float64 oracle and autograd through it, at lengths that are not multiples of the chunk.
#include "test_utils.h"

namespace kvq_test {
namespace {

// Output and gradients of q, k, v of <out, g> for mech (linear or linear-identity), ours against
// the oracle, in float64; returns the worst max relative error.
double causal_linear_error(Mech mech, int64_t T, int64_t chunk, bool padded, uint64_t seed) {
  Case c;
  c.B = 2, c.H = 2, c.m = c.n = T, c.d = 5, c.dv = 3, c.causal = true, c.chunk = chunk;
  auto in = make_inputs(c, seed);
  if (padded) in.mask = make_mask(MaskKind::Scattered, c.B, T);
  const auto grad_out = torch::randn({c.B, c.H, T, c.dv}, torch::kFloat64);
  auto run = [&](bool oracle) {
    std::vector<torch::Tensor> leaves;
    for (const auto& t : {in.q, in.k, in.v}) leaves.push_back(t.clone().requires_grad_(true));
    Inputs x = in;
    x.q = leaves[0], x.k = leaves[1], x.v = leaves[2];
    auto out = oracle ? run_oracle(mech, x, true, x.mask)
                      : run_impl(mech, x, make_options(true, x.mask, chunk));
    auto grads = torch::autograd::grad({out}, leaves, {grad_out});
    grads.insert(grads.begin(), out.detach());
    return grads;
  };
  const auto ours = run(false), ref = run(true);
  double worst = 0;
  for (size_t i = 0; i < ours.size(); ++i) worst = std::max(worst, max_rel_err(ours[i], ref[i]));
  report(mech_name(mech) + " fused causal T=" + std::to_string(T) + " chunk=" +
             std::to_string(chunk) + (padded ? " pad(scattered)" : "") + " fp64 out+grads",
         "relerr", worst);
  return worst;
}

TEST(CausalLinearKernel, MatchesOracleAndItsGradients) {
  for (Mech mech : {"linear", "linear-identity"}) {
    // At T = 1 normalised linear attention is v * x / (x + eps): the exact gradients of q and k
    // are O(eps), so their relative error measures cancellation, not the kernel. It starts at 2.
    for (int64_t T : {mech == "linear" ? 2 : 1, 17, 63, 65, 130}) {
      for (int64_t chunk : {1, 4, 64, 500}) {
        for (bool padded : {false, true}) {
          EXPECT_LE(causal_linear_error(mech, T, chunk, padded, 100 + uint64_t(T)), kTolMatmul64)
              << mech_name(mech) << " T=" << T << " chunk=" << chunk;
        }
      }
    }
  }
}

// float32 against the float64 oracle within the tolerance policy.
TEST(CausalLinearKernel, Float32WithinPolicy) {
  for (Mech mech : {"linear", "linear-identity"}) {
    Case c;
    c.B = 1, c.H = 2, c.m = c.n = 300, c.d = 16, c.dv = 8, c.causal = true, c.chunk = 0;
    c.mask = MaskKind::Trailing, c.label = "fused causal T=300 chunk=d mask(trailing)";
    check_against_oracle(mech, c, torch::kFloat32);
  }
}

}  // namespace
}  // namespace kvq_test
