// intention, softmax-intention and the least-squares query transform against the float64 oracle
// (dense per-(b, h) solves; causal: one dense solve of A_t per token).
#include "test_utils.h"

namespace kvq_test {
namespace {

// A small ridge (alpha = 1e-2, the edge of the well-conditioned range) in fp64, where the causal
// A_t are nearly rank deficient for t < d.
TEST(Intention, SmallAlphaFp64) {
  for (bool causal : {false, true}) {
    Case c;
    c.label = std::string("alpha=1e-2") + (causal ? " causal T=13 chunk=4" : " n=13") +
              " mask(scattered)";
    c.causal = causal, c.m = c.n = 13, c.d = 6, c.dv = 4, c.chunk = 4;
    c.mask = MaskKind::Scattered, c.alpha_base = 1e-2;
    check_against_oracle("intention", c, torch::kFloat64);
    check_against_oracle("softmax-intention", c, torch::kFloat64);
  }
}

// Non-causal intention against the second oracle: least squares on the augmented system
// [K; sqrt(alpha) I] W = [V; 0].
TEST(Intention, MatchesAugmentedLeastSquaresFp64) {
  for (bool per_head : {false, true}) {
    Case c;
    c.B = 2, c.H = 3, c.m = 6, c.n = 10, c.d = 4, c.dv = 5, c.mask = MaskKind::Scattered;
    c.alpha_per_head = per_head, c.alpha_base = 0.3;
    const auto in = make_inputs(c, 17);
    const auto out = F::intention(in.q, in.k, in.v, in.alpha, make_options(false, in.mask));
    const auto ref = kvq_ref::intention_lstsq(in.q, in.k, in.v, in.alpha, in.mask);
    const double err = max_rel_err(out, ref);
    report(std::string("intention vs lstsq oracle cross(m=6,n=10)+mask alpha") +
               (per_head ? "(H)" : "()") + " fp64",
           "relerr", err);
    EXPECT_LE(err, kTolSolve64);
  }
}

// One long causal run in fp32 against the per-token fp64 loop: T = 512, d = 32, chunk 32
// (16 chunks). Conditioning: N(0, 1) keys, alpha = 1, so cond(A_t) <= ~1 + |k|^2 ~ 33.
TEST(Intention, LongCausalFp32MatchesPerTokenSolves) {
  Case c;
  c.label = "causal T=512 d=32 chunk=32";
  c.B = 1, c.H = 2, c.m = c.n = 512, c.d = 32, c.dv = 16, c.causal = true, c.chunk = 32;
  check_against_oracle("intention", c, torch::kFloat32);
}

TEST(SoftmaxIntention, ExplicitScale) {
  for (bool causal : {false, true}) {
    Case c;
    c.causal = causal, c.mask = MaskKind::Scattered, c.m = c.n = 10, c.chunk = 4;
    c.alpha_per_head = true;
    const auto in = make_inputs(c, 29);
    const auto out = F::softmax_intention(in.q, in.k, in.v, in.alpha,
                                          make_options(causal, in.mask, 4).scale(2.5));
    const auto ref = kvq_ref::softmax_intention(in.q, in.k, in.v, in.alpha, causal, in.mask, 2.5);
    const double err = max_rel_err(out, ref);
    report(std::string("softmax-intention scale=2.5") + (causal ? " causal" : "") + " fp64",
           "relerr", err);
    EXPECT_LE(err, kTolSolve64);
  }
}

// Intention has no score scale: the option must not change it.
TEST(Intention, ScaleOptionDoesNotApply) {
  for (bool causal : {false, true}) {
    Case c;
    c.causal = causal, c.mask = MaskKind::Trailing, c.m = c.n = 10, c.chunk = 4;
    const auto in = make_inputs(c, 31);
    const auto out =
        F::intention(in.q, in.k, in.v, in.alpha, make_options(causal, in.mask, 4).scale(0.3));
    const auto ref = kvq_ref::intention(in.q, in.k, in.v, in.alpha, causal, in.mask);
    const double err = max_rel_err(out, ref);
    report(std::string("intention with scale=0.3") + (causal ? " causal" : "") + " fp64", "relerr",
           err);
    EXPECT_LE(err, kTolSolve64);
  }
}

// The query transform alone: row t is q_t^T A^{-1} (A_t when causal).
TEST(LeastSquaresQueries, MatchesOracle) {
  struct Variant {
    std::string label;
    bool causal;
    int64_t m, n, chunk;
    MaskKind mask;
    bool per_head;
  };
  const std::vector<Variant> variants = {
      {"cross(m=5,n=9)+mask(scattered) alpha()", false, 5, 9, 64, MaskKind::Scattered, false},
      {"causal T=13 chunk=4 mask(trailing) alpha(H)", true, 13, 13, 4, MaskKind::Trailing, true},
      {"causal T=150 chunk=64 alpha(H)", true, 150, 150, 64, MaskKind::None, true},
  };
  for (const auto& var : variants) {
    for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
      Case c;
      c.B = 2, c.H = 2, c.m = var.m, c.n = var.n, c.d = 5, c.causal = var.causal;
      c.mask = var.mask, c.alpha_per_head = var.per_head, c.chunk = var.chunk;
      const auto in = make_inputs(c, 37).to(dtype);
      const auto out =
          F::least_squares_queries(in.q, in.k, in.alpha, make_options(c.causal, in.mask, c.chunk));
      const auto ref = kvq_ref::least_squares_queries(in.q, in.k, in.alpha, c.causal, in.mask);
      EXPECT_EQ(out.sizes(), in.q.sizes());
      const bool fp64 = dtype == torch::kFloat64;
      const double err = fp64 ? max_rel_err(out, ref) : nrmse(out, ref);
      report("least_squares_queries " + var.label + (fp64 ? " fp64" : " fp32"),
             fp64 ? "relerr" : "nrmse", err);
      EXPECT_LE(err, fp64 ? kTolSolve64 : kTolNrmse32) << var.label;
    }
  }
}

}  // namespace
}  // namespace kvq_test
