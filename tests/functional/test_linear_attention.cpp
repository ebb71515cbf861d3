// linear (elu+1, normalised) and linear-identity against the float64 oracle (explicit sums over
// the visible keys, s <= t when causal).
#include "test_utils.h"

namespace kvq_test {
namespace {

// A large eps makes its place in the formula visible: o = num / (den + eps).
TEST(LinearAttention, EpsIsAddedToTheDenominator) {
  for (bool causal : {false, true}) {
    Case c;
    c.causal = causal, c.mask = MaskKind::Scattered, c.m = c.n = 11, c.chunk = 4;
    const auto in = make_inputs(c, 3);
    const auto out =
        F::linear_attention(in.q, in.k, in.v, make_options(causal, in.mask, 4).eps(0.5));
    const auto ref = kvq_ref::linear_attention(in.q, in.k, in.v, causal, in.mask, 0.5);
    const double err = max_rel_err(out, ref);
    report(std::string("linear eps=0.5") + (causal ? " causal" : "") + " fp64", "relerr", err);
    EXPECT_LE(err, kTolMatmul64);
  }
}

// The score scale applies to softmax and kernel mixers only: linear mixers ignore it.
TEST(LinearAttention, ScaleOptionDoesNotApply) {
  for (bool causal : {false, true}) {
    Case c;
    c.causal = causal, c.mask = MaskKind::Trailing, c.m = c.n = 9, c.chunk = 4;
    const auto in = make_inputs(c, 4);
    const auto opt = make_options(causal, in.mask, 4).scale(0.3);
    const double e1 = max_rel_err(F::linear_attention(in.q, in.k, in.v, opt),
                                  kvq_ref::linear_attention(in.q, in.k, in.v, causal, in.mask));
    const double e2 =
        max_rel_err(F::linear_identity_attention(in.q, in.k, in.v, opt),
                    kvq_ref::linear_identity_attention(in.q, in.k, in.v, causal, in.mask));
    report(
        std::string("linear/linear-identity with scale=0.3") + (causal ? " causal" : "") + " fp64",
        "relerr", std::max(e1, e2));
    EXPECT_LE(e1, kTolMatmul64);
    EXPECT_LE(e2, kTolMatmul64);
  }
}

}  // namespace
}  // namespace kvq_test
