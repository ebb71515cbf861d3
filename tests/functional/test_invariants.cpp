// Invariants every mechanism must satisfy, checked on kvq alone (fp64) or against the identities of
// docs/mechanisms.md: padded keys cannot leak, causal outputs ignore the future, empty mask equals
// no mask, chunk sizes agree, the reductions of intention to linear / softmax attention.
#include "test_utils.h"

namespace kvq_test {
namespace {

// Rows of (B, H, m, dv) output whose query is not padded (kv, kv-pos: the queries are the keys,
// so a padded key's own output row may change with it). (B, m) bool.
torch::Tensor rows_that_must_match(Mech mech, const torch::Tensor& mask, int64_t B, int64_t m) {
  if (keys_are_queries(mech)) return mask.logical_not();
  return torch::ones({B, m}, torch::kBool);
}

double masked_rel_err(const torch::Tensor& out, const torch::Tensor& ref,
                      const torch::Tensor& row_keep) {
  const auto keep = row_keep.unsqueeze(1).unsqueeze(-1).to(torch::kFloat64);  // (B, 1, m, 1)
  return max_rel_err(out * keep, ref * keep);
}

// Changing the values of padded keys and values leaves every output (of an unpadded query) as
// it was.
TEST(Invariants, PaddedKeysCannotLeak) {
  for (Mech mech : all_mechs()) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE(mech_name(mech) + (causal ? " causal" : ""));
      Case c;
      c.B = 2, c.H = 2, c.m = c.n = 11, c.d = 4, c.dv = 3, c.causal = causal, c.chunk = 4;
      c.mask = MaskKind::Scattered, c.alpha_per_head = true;
      const auto in = make_inputs(c, 51);
      const auto opt = make_options(causal, in.mask, 4);
      const auto out = run_impl(mech, in, opt);
      Inputs moved = in;
      const auto pad = in.mask.unsqueeze(1).unsqueeze(-1).to(torch::kFloat64);  // (B, 1, n, 1)
      torch::manual_seed(52);
      moved.k = in.k + pad * (3.0 * torch::randn_like(in.k) + 2.0);
      moved.v = in.v + pad * (3.0 * torch::randn_like(in.v) - 5.0);
      ASSERT_GT((moved.k - in.k).abs().max().item<double>(), 1.0);
      const auto out2 = run_impl(mech, moved, opt);
      const double err = masked_rel_err(out2, out, rows_that_must_match(mech, in.mask, c.B, c.m));
      report("padded keys changed: " + mech_name(mech) + (causal ? " causal" : "") + " fp64",
             "relerr", err);
      EXPECT_LE(err, kTolMatmul64);
    }
  }
}

// The masked output equals the output on the sequence with the padded keys removed.
// Non-causal q/k/v mechanisms: scattered padding, keys removed, all queries kept (cross shapes).
// kv, kv-pos and every causal run: trailing padding, the sequence truncated (queries too), rows of
// the kept tokens compared (positions, hence the kv-pos table, are unchanged by truncation).
TEST(Invariants, PaddingEqualsRemovingTheKeys) {
  for (Mech mech : all_mechs()) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE(mech_name(mech) + (causal ? " causal" : ""));
      const bool truncate = causal || keys_are_queries(mech);
      Case c;
      c.B = 2, c.H = 2, c.d = 4, c.dv = 3, c.causal = causal, c.chunk = 4;
      c.m = truncate ? 12 : 7, c.n = 12, c.alpha_per_head = true;
      c.mask = truncate ? MaskKind::Trailing : MaskKind::Scattered;
      const auto in = make_inputs(c, 53);
      const auto out = run_impl(mech, in, make_options(causal, in.mask, 4));
      double worst = 0;
      for (int64_t b = 0; b < c.B; ++b) {
        std::vector<int64_t> keep;
        for (int64_t j = 0; j < c.n; ++j)
          if (!in.mask[b][j].item<bool>()) keep.push_back(j);
        const auto ix = torch::tensor(keep, torch::kLong);
        Inputs sub = in;
        sub.k = in.k.slice(0, b, b + 1).index_select(2, ix);
        sub.v = in.v.slice(0, b, b + 1).index_select(2, ix);
        sub.q = truncate ? in.q.slice(0, b, b + 1).index_select(2, ix) : in.q.slice(0, b, b + 1);
        const auto got = run_impl(mech, sub, make_options(causal, {}, 4));
        auto want = out.slice(0, b, b + 1);
        if (truncate) want = want.index_select(2, ix);
        ASSERT_EQ(got.sizes(), want.sizes());
        worst = std::max(worst, max_rel_err(got, want));
      }
      report("padding vs removal: " + mech_name(mech) + (causal ? " causal" : "") + " fp64",
             "relerr", worst);
      EXPECT_LE(worst, fp64_tolerance(mech));
    }
  }
}

// Perturbing tokens t0+1 .. T-1 (q, k, v) leaves rows 0 .. t0 unchanged; rows after t0 do change
// (so the comparison is not vacuous). t0 in the middle of a chunk and on a chunk boundary.
TEST(Invariants, CausalOutputsIgnoreTheFuture) {
  for (Mech mech : all_mechs()) {
    for (int64_t t0 : {5, 7}) {
      SCOPED_TRACE(mech_name(mech) + " t0=" + std::to_string(t0));
      Case c;
      c.B = 2, c.H = 2, c.m = c.n = 13, c.d = 4, c.dv = 3, c.causal = true, c.chunk = 4;
      c.mask = MaskKind::Scattered, c.alpha_per_head = true;
      const auto in = make_inputs(c, 55);
      const auto opt = make_options(true, in.mask, 4);
      const auto out = run_impl(mech, in, opt);
      Inputs moved = in;
      torch::manual_seed(56);
      auto future = [&](const torch::Tensor& x) {
        auto y = x.clone();
        y.slice(2, t0 + 1) += 2.0 * torch::randn_like(y.slice(2, t0 + 1)) + 1.0;
        return y;
      };
      moved.q = future(in.q);
      moved.k = future(in.k);
      moved.v = future(in.v);
      const auto out2 = run_impl(mech, moved, opt);
      const double err = max_rel_err(out2.slice(2, 0, t0 + 1), out.slice(2, 0, t0 + 1));
      report("causal future perturbed: " + mech_name(mech) + " t0=" + std::to_string(t0) + " fp64",
             "relerr", err);
      EXPECT_LE(err, kTolMatmul64);
      EXPECT_GT(max_rel_err(out2.slice(2, t0 + 1), out.slice(2, t0 + 1)), 1e-3);
    }
  }
}

// Same check at chunk 64 on a sequence of 150 tokens, t0 = 70 (second chunk).
TEST(Invariants, CausalOutputsIgnoreTheFutureDefaultChunk) {
  for (Mech mech : all_mechs()) {
    Case c;
    c.B = 1, c.H = 2, c.m = c.n = 150, c.d = 8, c.dv = 4, c.causal = true;
    const int64_t t0 = 70;
    const auto in = make_inputs(c, 57);
    const auto opt = make_options(true, {});
    const auto out = run_impl(mech, in, opt);
    Inputs moved = in;
    torch::manual_seed(58);
    moved.k = in.k.clone();
    moved.v = in.v.clone();
    moved.q = in.q.clone();
    moved.k.slice(2, t0 + 1) += torch::randn_like(moved.k.slice(2, t0 + 1));
    moved.v.slice(2, t0 + 1) += torch::randn_like(moved.v.slice(2, t0 + 1));
    moved.q.slice(2, t0 + 1) += torch::randn_like(moved.q.slice(2, t0 + 1));
    const auto out2 = run_impl(mech, moved, opt);
    const double err = max_rel_err(out2.slice(2, 0, t0 + 1), out.slice(2, 0, t0 + 1));
    report("causal future perturbed: " + mech_name(mech) + " T=150 chunk=64 t0=70 fp64", "relerr",
           err);
    EXPECT_LE(err, kTolMatmul64) << mech_name(mech);
  }
}

// An all-false mask is the same as no mask.
TEST(Invariants, EmptyMaskEqualsNoMask) {
  for (Mech mech : all_mechs()) {
    for (bool causal : {false, true}) {
      Case c;
      c.B = 2, c.H = 2, c.m = c.n = 10, c.d = 4, c.dv = 3, c.causal = causal, c.chunk = 4;
      c.alpha_per_head = true;
      const auto in = make_inputs(c, 59);
      const auto none = run_impl(mech, in, make_options(causal, {}, 4));
      const auto empty =
          run_impl(mech, in, make_options(causal, torch::zeros({c.B, c.n}, torch::kBool), 4));
      const double err = max_rel_err(empty, none);
      report("empty mask vs no mask: " + mech_name(mech) + (causal ? " causal" : "") + " fp64",
             "relerr", err);
      EXPECT_LE(err, fp64_tolerance(mech)) << mech_name(mech);
    }
  }
}

// Causal chunk sizes 1, 3, 64 (and 5, 13 = T) agree with each other.
TEST(Invariants, CausalChunkSizesAgree) {
  for (Mech mech : all_mechs()) {
    Case c;
    c.B = 2, c.H = 2, c.m = c.n = 13, c.d = 4, c.dv = 3, c.causal = true;
    c.mask = MaskKind::Scattered, c.alpha_per_head = true;
    const auto in = make_inputs(c, 61);
    const auto base = run_impl(mech, in, make_options(true, in.mask, 64));
    double worst = 0;
    for (int64_t chunk : {1, 3, 5, 13}) {
      const auto out = run_impl(mech, in, make_options(true, in.mask, chunk));
      const double err = max_rel_err(out, base);
      worst = std::max(worst, err);
      EXPECT_LE(err, fp64_tolerance(mech)) << mech_name(mech) << " chunk " << chunk;
    }
    report("chunk 1/3/5/13 vs 64: " + mech_name(mech) + " causal fp64", "relerr", worst);
  }
}

// Rows that see no key at all (a batch element with every key padded; causal query 0 when key 0
// is padded) output zeros, every output and gradient is finite, and the rest matches the oracle.
TEST(Invariants, QueriesWithNoVisibleKeyOutputZeros) {
  for (Mech mech : all_mechs()) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE(mech_name(mech) + (causal ? " causal" : ""));
      Case c;
      c.B = 2, c.H = 2, c.m = c.n = 7, c.d = 3, c.dv = 2, c.causal = causal, c.chunk = 3;
      c.alpha_per_head = true;
      auto in = make_inputs(c, 63);
      auto mask = torch::zeros({c.B, c.n}, torch::kBool);
      mask[0].fill_(true);  // batch 0: nothing to attend to
      mask[1][0] = true;    // batch 1: key 0 padded (causal row 0 sees nothing)
      mask[1][4] = true;
      in.mask = mask;
      in.q.requires_grad_(true);
      in.k.requires_grad_(true);
      in.v.requires_grad_(true);
      const auto out = run_impl(mech, in, make_options(causal, mask, 3));
      const auto ref = run_oracle(mech, in, causal, mask);
      EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
      const double zero0 = out[0].abs().max().item<double>();
      EXPECT_EQ(zero0, 0.0) << "batch element with every key padded";
      if (causal) {
        EXPECT_EQ(out[1].select(1, 0).abs().max().item<double>(), 0.0) << "causal row 0";
      }
      const double err = max_rel_err(out, ref);
      report("no visible key: " + mech_name(mech) + (causal ? " causal" : "") + " fp64", "relerr",
             err);
      EXPECT_LE(err, fp64_tolerance(mech));
      (out * torch::randn_like(out)).sum().backward();
      for (const auto* x : {&in.q, &in.k, &in.v}) {
        if (x->grad().defined()) {
          EXPECT_TRUE(torch::isfinite(x->grad()).all().item<bool>()) << "non-finite gradient";
        }
      }
    }
  }
}

// Orthonormal key columns per (b, h): K^T K = I (K = first d columns of a QR factor of an n x n
// Gaussian).
torch::Tensor whitened_keys(int64_t B, int64_t H, int64_t n, int64_t d) {
  const auto g = torch::randn({B, H, n, n}, torch::kFloat64);
  const auto qr = torch::linalg_qr(g);
  return std::get<0>(qr).slice(3, 0, d).contiguous();
}

// With K^T K = I and alpha -> 0, intention is identity linear attention Q K^T V. The API rejects
// alpha = 0, so alpha = 1e-12 (the difference is a factor 1 / (1 + 1e-12)).
TEST(Invariants, IntentionWithWhitenedKeysIsIdentityLinearAttention) {
  Case c;
  c.B = 2, c.H = 3, c.m = 6, c.n = 10, c.d = 4, c.dv = 5;
  auto in = make_inputs(c, 65);
  in.k = whitened_keys(c.B, c.H, c.n, c.d);
  const auto gram = torch::matmul(in.k.transpose(2, 3), in.k);
  ASSERT_LE((gram - torch::eye(c.d, torch::kFloat64)).abs().max().item<double>(), 1e-14);
  const auto alpha = torch::full({}, 1e-12, torch::kFloat64);
  const auto out = F::intention(in.q, in.k, in.v, alpha, make_options(false, {}));
  const double e_lib = max_rel_err(out, F::linear_identity_attention(in.q, in.k, in.v));
  const double e_ref =
      max_rel_err(out, kvq_ref::linear_identity_attention(in.q, in.k, in.v, false, {}));
  report("intention(K^T K = I, alpha=1e-12) vs linear-identity fp64", "relerr",
         std::max(e_lib, e_ref));
  EXPECT_LE(e_lib, kTolSolve64);
  EXPECT_LE(e_ref, kTolSolve64);
}

// With whitened keys and alpha = 1e-12, softmax intention is softmax attention.
TEST(Invariants, SoftmaxIntentionWithWhitenedKeysIsSoftmaxAttention) {
  Case c;
  c.B = 2, c.H = 3, c.m = 6, c.n = 10, c.d = 4, c.dv = 5;
  auto in = make_inputs(c, 67);
  in.k = whitened_keys(c.B, c.H, c.n, c.d);
  in.q = 3.0 * in.q;  // sharper softmax, so a missing preconditioner would show
  const auto alpha = torch::full({c.H}, 1e-12, torch::kFloat64);
  const auto out = F::softmax_intention(in.q, in.k, in.v, alpha, make_options(false, {}));
  const double e_lib = max_rel_err(out, F::softmax_attention(in.q, in.k, in.v));
  const double e_ref = max_rel_err(out, kvq_ref::softmax_attention(in.q, in.k, in.v, false, {}));
  report("softmax-intention(K^T K = I, alpha=1e-12) vs softmax fp64", "relerr",
         std::max(e_lib, e_ref));
  EXPECT_LE(e_lib, kTolSolve64);
  EXPECT_LE(e_ref, kTolSolve64);
}

// Square invertible keys (n == d), q = k, alpha = 1e-12 (> 0 as the API requires): the ridge
// regression interpolates, so the output on the keys is V. K = orthogonal * diag(1 .. 2), so
// cond(K) = 2 and the alpha bias is ~1e-12.
TEST(Invariants, IntentionReproducesValuesOnSquareKeys) {
  const int64_t B = 2, H = 2, d = 6, dv = 3;
  torch::manual_seed(69);
  const auto orth = whitened_keys(B, H, d, d);
  const auto k = torch::matmul(orth, torch::diag(torch::linspace(1.0, 2.0, d, torch::kFloat64)));
  const auto v = torch::randn({B, H, d, dv}, torch::kFloat64);
  const auto alpha = torch::full({}, 1e-12, torch::kFloat64);
  const auto out = F::intention(k, k, v, alpha, make_options(false, {}));
  const double err = max_rel_err(out, v);
  report("intention(q=k, n=d, alpha=1e-12) vs V fp64", "relerr", err);
  EXPECT_LE(err, kTolSolve64);
}

// kv-pos: b0 and the query-position half of the table are constant along each score row, so they
// cancel under the row softmax (documented in softmax_attention.h): changing b0 changes nothing.
TEST(Invariants, KVPosBiasCancels) {
  for (bool causal : {false, true}) {
    Case c;
    c.m = c.n = 9, c.H = 2, c.causal = causal, c.mask = MaskKind::Scattered, c.chunk = 4;
    const auto in = make_inputs(c, 71);
    const auto opt = make_options(causal, in.mask, 4);
    const auto out = F::kv_pos_attention(in.k, in.v, in.pos_weight, in.pos_bias, opt);
    const auto out2 = F::kv_pos_attention(in.k, in.v, in.pos_weight, in.pos_bias + 5.0, opt);
    const double err = max_rel_err(out2, out);
    report(std::string("kv-pos b0 shifted by 5") + (causal ? " causal" : "") + " fp64", "relerr",
           err);
    EXPECT_LE(err, kTolMatmul64);
  }
}

// Dropout only acts when training: training = false with dropout 0.5 equals dropout 0.
TEST(Invariants, DropoutInactiveWhenNotTraining) {
  for (Mech mech : {"softmax", "kv", "kv-pos", "softmax-intention"}) {
    Case c;
    c.m = c.n = 9, c.mask = MaskKind::Scattered;
    const auto in = make_inputs(c, 73);
    const auto base = run_impl(mech, in, make_options(false, in.mask));
    const auto off = run_impl(mech, in, make_options(false, in.mask).dropout(0.5).training(false));
    const double err = max_rel_err(off, base);
    report("dropout=0.5 training=false: " + mech_name(mech) + " fp64", "relerr", err);
    EXPECT_LE(err, kTolMatmul64) << mech_name(mech);
  }
}

}  // namespace
}  // namespace kvq_test
