// The 2D sinusoidal table, the kv-pos score terms, and kv-pos against the naive broadcast form
// (S_ij + P_ijc for every channel, then the Linear(p, 1), then masked softmax).
#include "test_utils.h"

namespace kvq_test {
namespace {

// docs/mechanisms.md: p = 10, P[3, 5] = [0.1411, -0.99, 0.1388, 0.9903, 0.0065, 1.0, -0.9589,
// 0.2837, 0.23, 0.9732], quoted to 4 decimals (-0.99, 1.0 and 0.23 are -0.9900, 1.0000, 0.2300).
const std::vector<double> kCheckValue = {0.1411, -0.99,   0.1388, 0.9903, 0.0065,
                                         1.0,    -0.9589, 0.2837, 0.23,   0.9732};
constexpr double kCheckTol = 5e-5 + 1e-9;  // half a unit in the 4th decimal

void expect_check_value(const torch::Tensor& table, const std::string& who) {
  ASSERT_EQ(table.size(2), 10);
  const auto row = table[3][5].to(torch::kFloat64);
  double worst = 0;
  for (int64_t c = 0; c < 10; ++c) {
    const double got = row[c].item<double>();
    worst = std::max(worst, std::abs(got - kCheckValue[c]));
    EXPECT_NEAR(got, kCheckValue[c], kCheckTol) << who << " channel " << c;
  }
  report(who + " P[3,5] p=10 vs the documented check value", "maxabs", worst);
}

TEST(PositionalEncoding2D, OracleTableMatchesDocumentedCheckValue) {
  expect_check_value(kvq_ref::positional_encoding_2d(6, 8, 10), "oracle table");
}

TEST(PositionalEncoding2D, LibraryTableMatchesDocumentedCheckValue) {
  expect_check_value(F::positional_encoding_2d(6, 8, 10, torch::kFloat64), "kvq table fp64");
  expect_check_value(F::positional_encoding_2d(6, 8, 10), "kvq table fp32(default)");
}

TEST(PositionalEncoding2D, LibraryTableMatchesOracle) {
  struct Size {
    int64_t rows, cols, p;
  };
  // p = 10, 20, 50 as in the paper; p not a multiple of 4, p < 4, rows != cols.
  for (const auto& s : std::vector<Size>{
           {7, 7, 10}, {12, 5, 20}, {4, 9, 50}, {6, 6, 7}, {5, 3, 1}, {3, 4, 2}, {40, 40, 12}}) {
    const auto ref = kvq_ref::positional_encoding_2d(s.rows, s.cols, s.p);
    const auto t64 = F::positional_encoding_2d(s.rows, s.cols, s.p, torch::kFloat64);
    const auto t32 = F::positional_encoding_2d(s.rows, s.cols, s.p);
    ASSERT_EQ(t64.sizes(), ref.sizes());
    ASSERT_EQ(t32.sizes(), ref.sizes());
    EXPECT_EQ(t64.scalar_type(), torch::kFloat64);
    EXPECT_EQ(t32.scalar_type(), torch::kFloat32);
    const double e64 = (t64 - ref).abs().max().item<double>();
    const double e32 = (t32.to(torch::kFloat64) - ref).abs().max().item<double>();
    const std::string label = "pe2d table " + std::to_string(s.rows) + "x" +
                              std::to_string(s.cols) + "x" + std::to_string(s.p);
    report(label + " fp64", "maxabs", e64);
    report(label + " fp32", "maxabs", e32);
    EXPECT_LE(e64, 1e-12) << label;  // entries are sines and cosines in [-1, 1]
    EXPECT_LE(e32, 1e-6) << label;
  }
}

// gain = sum_c w_c, bias_ij = sum_c P_ijc w_c + b0, with the sums written as scalar loops.
TEST(PositionalEncoding2D, ScoreTermsMatchNaiveSums) {
  for (bool per_head : {true, false}) {
    const int64_t H = 3, p = 10, rows = 6, cols = 9;
    torch::manual_seed(3);
    const auto o = torch::TensorOptions().dtype(torch::kFloat64);
    const auto w = per_head ? torch::randn({H, p}, o) : torch::randn({p}, o);
    const auto b0 = per_head ? torch::randn({H}, o) : torch::randn({}, o);
    const auto [gain, bias] = F::kv_pos_score_terms(w, b0, rows, cols);
    const auto P = kvq_ref::positional_encoding_2d(rows, cols, p);
    const int64_t heads = per_head ? H : 1;
    if (per_head) {
      ASSERT_EQ(gain.sizes(), torch::IntArrayRef({H}));
      ASSERT_EQ(bias.sizes(), torch::IntArrayRef({H, rows, cols}));
    } else {
      ASSERT_EQ(gain.dim(), 0);
      ASSERT_EQ(bias.sizes(), torch::IntArrayRef({rows, cols}));
    }
    auto want_gain = torch::zeros({heads}, o);
    auto want_bias = torch::zeros({heads, rows, cols}, o);
    const auto w2 = w.reshape({heads, p});
    const auto b2 = b0.reshape({heads});
    for (int64_t h = 0; h < heads; ++h) {
      double g = 0;
      for (int64_t c = 0; c < p; ++c) g += w2[h][c].item<double>();
      want_gain[h] = g;
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
          double s = b2[h].item<double>();
          for (int64_t c = 0; c < p; ++c) s += P[i][j][c].item<double>() * w2[h][c].item<double>();
          want_bias[h][i][j] = s;
        }
    }
    const double eg = max_rel_err(gain.reshape({heads}), want_gain);
    const double eb = max_rel_err(bias.reshape({heads, rows, cols}), want_bias);
    report(std::string("kv_pos_score_terms ") + (per_head ? "w(H,p)" : "w(p)") + " fp64", "relerr",
           std::max(eg, eb));
    EXPECT_LE(eg, kTolMatmul64);
    EXPECT_LE(eb, kTolMatmul64);
  }
}

// Shared weights (p) / bias (), and other channel counts (20 as the char LM, 50 as the ViT).
TEST(KVPosAttention, SharedWeightsAndOtherChannelCounts) {
  for (int64_t p : {10, 20, 50}) {
    for (bool causal : {false, true}) {
      Case c;
      c.label = "w(p) b0() p=" + std::to_string(p) + (causal ? " causal T=11 chunk=4" : " T=11") +
                " mask(trailing)";
      c.m = c.n = 11, c.d = 4, c.dv = 3, c.causal = causal, c.chunk = 4;
      c.mask = MaskKind::Trailing, c.pos_channels = p, c.pos_per_head = false;
      check_against_oracle("kv-pos", c, torch::kFloat64);
    }
  }
}

// The module's route: softmax attention on (k, k, v) with the score terms as gain / bias.
TEST(KVPosAttention, ScoreTermsThroughSoftmaxOptionsMatchNaiveOracle) {
  for (bool causal : {false, true}) {
    Case c;
    c.m = c.n = 10, c.H = 3, c.causal = causal, c.mask = MaskKind::Scattered, c.chunk = 4;
    const auto in = make_inputs(c, 43);
    const auto [gain, bias] = F::kv_pos_score_terms(in.pos_weight, in.pos_bias, c.n, c.n);
    const auto opt = make_options(causal, in.mask, 4).score_gain(gain).score_bias(bias);
    const auto out = F::softmax_attention(in.k, in.k, in.v, opt);
    const auto ref =
        kvq_ref::kv_pos_attention(in.k, in.v, in.pos_weight, in.pos_bias, causal, in.mask);
    const double err = max_rel_err(out, ref);
    report(std::string("softmax(k,k,v)+kv_pos_score_terms vs naive kv-pos") +
               (causal ? " causal" : "") + " fp64",
           "relerr", err);
    EXPECT_LE(err, kTolMatmul64);
  }
}

}  // namespace
}  // namespace kvq_test
