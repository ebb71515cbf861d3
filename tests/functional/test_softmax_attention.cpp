// softmax and kv against the float64 oracle (explicit scores, explicit masked row softmax).
#include "test_utils.h"

namespace kvq_test {
namespace {

TEST(SoftmaxAttention, ExplicitScale) {
  for (bool causal : {false, true}) {
    Case c;
    c.causal = causal, c.mask = MaskKind::Scattered, c.m = c.n = 10, c.d = 4, c.dv = 3, c.chunk = 4;
    const auto in = make_inputs(c, 7);
    const auto out =
        F::softmax_attention(in.q, in.k, in.v, make_options(causal, in.mask, 4).scale(0.37));
    const auto ref = kvq_ref::softmax_attention(in.q, in.k, in.v, causal, in.mask, 0.37);
    const double err = max_rel_err(out, ref);
    report(std::string("softmax scale=0.37") + (causal ? " causal" : "") + " fp64", "relerr", err);
    EXPECT_LE(err, kTolMatmul64);
  }
}

// The score_gain / score_bias options (the kv-pos path of the module): gain () or (H),
// bias (H, m, n) or (m, n), with masks, causal and not, cross shapes.
TEST(SoftmaxAttention, ScoreGainAndBias) {
  struct Variant {
    std::string label;
    bool gain_per_head, bias_per_head, causal;
    int64_t m, n;
  };
  const std::vector<Variant> variants = {
      {"gain(H) bias(H,m,n) cross(m=6,n=9)", true, true, false, 6, 9},
      {"gain() bias(m,n) cross(m=8,n=5)", false, false, false, 8, 5},
      {"gain(H) bias(H,m,n) causal T=11 chunk=4", true, true, true, 11, 11},
      {"gain() bias(H,m,n) causal T=11 chunk=4", false, true, true, 11, 11},
  };
  for (const auto& var : variants) {
    for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
      Case c;
      c.B = 2, c.H = 3, c.m = var.m, c.n = var.n, c.d = 4, c.dv = 5, c.causal = var.causal;
      c.mask = MaskKind::Scattered;
      torch::manual_seed(99);
      const auto in = make_inputs(c, 11).to(dtype);
      const auto o = torch::TensorOptions().dtype(torch::kFloat64);
      const auto gain =
          (var.gain_per_head ? torch::rand({c.H}, o) * 2 + 0.2 : torch::full({}, 1.7, o)).to(dtype);
      const auto bias =
          (var.bias_per_head ? torch::randn({c.H, c.m, c.n}, o) : torch::randn({c.m, c.n}, o))
              .to(dtype);
      const auto opt = make_options(c.causal, in.mask, 4).score_gain(gain).score_bias(bias);
      const auto out = F::softmax_attention(in.q, in.k, in.v, opt);
      const auto ref =
          kvq_ref::softmax_attention(in.q, in.k, in.v, c.causal, in.mask, -1.0, gain, bias);
      const bool fp64 = dtype == torch::kFloat64;
      const double err = fp64 ? max_rel_err(out, ref) : nrmse(out, ref);
      report("softmax " + var.label + (fp64 ? " fp64" : " fp32"), fp64 ? "relerr" : "nrmse", err);
      EXPECT_LE(err, fp64 ? kTolMatmul64 : kTolNrmse32) << var.label;
    }
  }
}

// kv is softmax attention with the queries tied to the keys.
TEST(KVAttention, EqualsSoftmaxWithQueriesEqualToKeys) {
  for (bool causal : {false, true}) {
    Case c;
    c.causal = causal, c.mask = MaskKind::Trailing, c.m = c.n = 12, c.chunk = 5;
    const auto in = make_inputs(c, 21);
    const auto opt = make_options(causal, in.mask, 5);
    const auto kv = F::kv_attention(in.k, in.v, opt);
    const auto sm = F::softmax_attention(in.k, in.k, in.v, opt);
    const double err = max_rel_err(kv, sm);
    report(std::string("kv vs softmax(k,k,v)") + (causal ? " causal" : "") + " fp64", "relerr",
           err);
    EXPECT_LE(err, kTolMatmul64);
  }
}

// The kv output equals masked softmax over a score matrix that is symmetric by construction:
// S_ij = S_ji = sum_c k_ic k_jc * scale, filled for i <= j with scalar loops and mirrored.
TEST(KVAttention, MatchesSymmetricScoreOracle) {
  for (bool causal : {false, true}) {
    Case c;
    c.B = 2, c.H = 2, c.m = c.n = 8, c.d = 3, c.dv = 4, c.causal = causal;
    c.mask = MaskKind::Scattered, c.chunk = 3;
    const auto in = make_inputs(c, 5);
    auto scores = torch::zeros({c.B, c.H, c.n, c.n}, torch::kFloat64);
    auto S = scores.accessor<double, 4>();
    auto K = in.k.accessor<double, 4>();
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.H; ++h)
        for (int64_t i = 0; i < c.n; ++i)
          for (int64_t j = i; j < c.n; ++j) {
            double s = 0;
            for (int64_t x = 0; x < c.d; ++x) s += K[b][h][i][x] * K[b][h][j][x];
            S[b][h][i][j] = S[b][h][j][i] = s * scale;
          }
    ASSERT_TRUE(torch::equal(scores, scores.transpose(2, 3)));
    const auto ref = kvq_ref::masked_softmax_apply(scores, in.v, causal, in.mask);
    const auto out = F::kv_attention(in.k, in.v, make_options(causal, in.mask, 3));
    const double err = max_rel_err(out, ref);
    report(std::string("kv vs symmetric-score oracle") + (causal ? " causal" : "") + " fp64",
           "relerr", err);
    EXPECT_LE(err, kTolMatmul64);
  }
}

TEST(KVAttention, ExplicitScale) {
  Case c;
  c.mask = MaskKind::Trailing, c.m = c.n = 9;
  const auto in = make_inputs(c, 8);
  const auto out = F::kv_attention(in.k, in.v, make_options(false, in.mask).scale(0.61));
  const auto ref = kvq_ref::softmax_attention(in.k, in.k, in.v, false, in.mask, 0.61);
  const double err = max_rel_err(out, ref);
  report("kv scale=0.61 fp64", "relerr", err);
  EXPECT_LE(err, kTolMatmul64);
}

}  // namespace
}  // namespace kvq_test
