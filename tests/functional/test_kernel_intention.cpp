// kernel-intention against the float64 oracle: one dense kernel-ridge solve per query row over the
// keys that row sees (unpadded, and s <= t when causal).
#include "test_utils.h"

namespace kvq_test {
namespace {

TEST(KernelIntention, ExplicitScale) {
  for (bool causal : {false, true}) {
    Case c;
    c.causal = causal, c.mask = MaskKind::Scattered, c.m = c.n = 10, c.chunk = 4;
    c.alpha_per_head = true;
    const auto in = make_inputs(c, 41);
    const auto out = F::kernel_intention(in.q, in.k, in.v, in.alpha,
                                         make_options(causal, in.mask, 4).scale(0.25));
    const auto ref = kvq_ref::kernel_intention(in.q, in.k, in.v, in.alpha, causal, in.mask, 0.25);
    const double err = max_rel_err(out, ref);
    report(std::string("kernel-intention scale=0.25") + (causal ? " causal" : "") + " fp64",
           "relerr", err);
    EXPECT_LE(err, kTolSolve64);
  }
}

}  // namespace
}  // namespace kvq_test
