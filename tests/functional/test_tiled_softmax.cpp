// The tiled softmax-family kernels (src/kernels/cpu/softmax_attention_kernel.cpp, reached through
// the functional ops on CPU float32/float64) against the float64 oracle: outputs and gradients of
// every input, at lengths on both sides of the query block (128) and key block (256), with causal
// masks, key padding that leaves whole rows without keys, cross shapes and score biases of every
// broadcast shape.
#include "test_utils.h"

namespace kvq_test {
namespace {

struct Grads {
  torch::Tensor out;
  std::vector<torch::Tensor> grads;
};

// The differentiable inputs of a mechanism, by name.
std::vector<std::pair<std::string, torch::Tensor*>> leaves_of(Mech mech, Inputs& in) {
  std::vector<std::pair<std::string, torch::Tensor*>> leaves;
  if (!keys_are_queries(mech)) leaves.push_back({"q", &in.q});
  leaves.push_back({"k", &in.k});
  leaves.push_back({"v", &in.v});
  if (uses_alpha(mech)) leaves.push_back({"alpha", &in.alpha});
  if (mech == "kv-pos") {
    leaves.push_back({"pos_weight", &in.pos_weight});
    leaves.push_back({"pos_bias", &in.pos_bias});
  }
  return leaves;
}

// Output and d<out, grad_out>/d(every leaf) of run(in), on fresh leaves.
template <typename Run>
Grads output_and_grads(Mech mech, const Inputs& values, const torch::Tensor& grad_out, Run run) {
  Inputs in = values;
  std::vector<torch::Tensor> leaves;
  for (auto& leaf : leaves_of(mech, in)) {
    *leaf.second = leaf.second->detach().clone().requires_grad_(true);
    leaves.push_back(*leaf.second);
  }
  auto out = run(in);
  auto grads = torch::autograd::grad({out}, leaves, {grad_out.to(out.scalar_type())},
                                     /*retain_graph=*/false, /*create_graph=*/false,
                                     /*allow_unused=*/true);
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].defined()) grads[i] = torch::zeros_like(leaves[i]);
  }
  return {out.detach(), grads};
}

// Key padding that leaves rows without any visible key: batch 0 pads keys 0..2 (causal rows 0..2
// see nothing), batch 1 (when B > 1) pads every key, others pad every third key.
torch::Tensor empty_row_mask(int64_t B, int64_t n) {
  auto mask = torch::zeros({B, n}, torch::kBool);
  mask[0].narrow(0, 0, std::min<int64_t>(3, n)).fill_(true);
  if (B > 1) mask[1].fill_(true);
  for (int64_t b = 2; b < B; ++b) mask[b].slice(0, 2, n, 3).fill_(true);
  return mask;
}

enum class Padding { None, Scattered, EmptyRows };

// Compares kvq with the oracle on one configuration: output and every gradient in float64 at the
// mechanism's tolerance; pos_bias, whose exact gradient is zero (a constant score shift), must be
// zero to that tolerance on the scale of the largest gradient.
void check_tiled(Mech mech, int64_t B, int64_t H, int64_t m, int64_t n, int64_t d, int64_t dv,
                 bool causal, Padding padding) {
  Case c;
  c.B = B, c.H = H, c.m = m, c.n = n, c.d = d, c.dv = dv, c.causal = causal;
  c.alpha_per_head = true;
  auto in = make_inputs(c, 77 + uint64_t(m) * 31 + uint64_t(n));
  if (padding == Padding::Scattered) in.mask = make_mask(MaskKind::Scattered, B, n);
  if (padding == Padding::EmptyRows) in.mask = empty_row_mask(B, n);
  const int64_t rows = keys_are_queries(mech) ? n : m;
  const auto grad_out = torch::randn({B, H, rows, dv}, torch::kFloat64);
  const auto opt = make_options(causal, in.mask, 0);
  const auto ours = output_and_grads(mech, in, grad_out, [&](const Inputs& x) {
    return run_impl(mech, x, opt);
  });
  const auto ref = output_and_grads(mech, in, grad_out, [&](const Inputs& x) {
    return run_oracle(mech, x, causal, x.mask);
  });
  std::ostringstream label;
  label << mech_name(mech) << (causal ? " causal" : "") << " B=" << B << " H=" << H << " m=" << m
        << " n=" << n << " d=" << d << " dv=" << dv
        << (padding == Padding::None ? "" : padding == Padding::Scattered ? " pad(scattered)"
                                                                          : " pad(empty rows)");
  SCOPED_TRACE(label.str());
  const double tol = fp64_tolerance(mech);
  double worst = max_rel_err(ours.out, ref.out);
  EXPECT_LE(worst, tol) << "output";
  const auto names = leaves_of(mech, in);
  double largest = 0;
  for (const auto& g : ref.grads) largest = std::max(largest, g.abs().max().item<double>());
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_TRUE(torch::isfinite(ours.grads[i]).all().item<bool>()) << names[i].first;
    double err;
    if (names[i].first == "pos_bias") {
      err = ours.grads[i].abs().max().item<double>() / largest;
    } else {
      err = max_rel_err(ours.grads[i], ref.grads[i]);
    }
    EXPECT_LE(err, tol) << "d" << names[i].first;
    worst = std::max(worst, err);
  }
  report("tiled " + label.str() + " fp64 out+grads", "relerr", worst);
}

const std::vector<Mech> kSoftmaxFamily = {"softmax", "kv", "kv-pos",
                                          "softmax-intention"};

// Self-attention at lengths around the tile edges, causal or not, every padding kind.
TEST(TiledSoftmax, MatchesOracleAcrossTileEdges) {
  for (Mech mech : kSoftmaxFamily) {
    for (int64_t T : {1, 17, 63, 65, 257}) {
      for (bool causal : {false, true}) {
        for (Padding pad : {Padding::None, Padding::Scattered, Padding::EmptyRows}) {
          check_tiled(mech, T > 100 ? 1 : 3, 2, T, T, 8, 5, causal, pad);
        }
      }
    }
  }
}

// T = 1000: several query and key blocks, a partial last block of each.
TEST(TiledSoftmax, MatchesOracleAtLength1000) {
  for (Mech mech : kSoftmaxFamily) {
    check_tiled(mech, 1, 1, 1000, 1000, 8, 4, /*causal=*/true, Padding::EmptyRows);
  }
  check_tiled("softmax", 1, 1, 1000, 1000, 16, 8, /*causal=*/false, Padding::Scattered);
}

// Cross-attention shapes (m != n), with and without padding.
TEST(TiledSoftmax, MatchesOracleOnCrossShapes) {
  for (Mech mech : {"softmax", "softmax-intention"}) {
    const std::vector<std::pair<int64_t, int64_t>> shapes = {
        {65, 17}, {17, 257}, {1, 300}, {130, 1}};
    for (const auto& mn : shapes) {
      for (Padding pad : {Padding::None, Padding::EmptyRows}) {
        check_tiled(mech, 3, 2, mn.first, mn.second, 6, 7, false, pad);
      }
    }
  }
}

// float32 against the float64 oracle within the tolerance policy (unit-scale inputs).
TEST(TiledSoftmax, Float32WithinPolicy) {
  for (Mech mech : kSoftmaxFamily) {
    for (bool causal : {false, true}) {
      Case c;
      c.B = 1, c.H = 2, c.m = c.n = 300, c.d = 16, c.dv = 16, c.causal = causal;
      c.mask = MaskKind::Scattered, c.chunk = 0;
      c.label = std::string("tiled T=300") + (causal ? " causal" : "") + " mask(scattered)";
      check_against_oracle(mech, c, torch::kFloat32);
    }
  }
}

// score_bias of every broadcast shape: output and the gradients of q, k, v and the bias, against
// autograd through the oracle.
TEST(TiledSoftmax, ScoreBiasShapesAndGradients) {
  const int64_t B = 2, H = 3, m = 70, n = 300, d = 5, dv = 4;
  torch::manual_seed(5);
  const auto o = torch::TensorOptions().dtype(torch::kFloat64);
  const std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"(H,m,n)", {H, m, n}}, {"(H,1,n)", {H, 1, n}}, {"(m,1)", {m, 1}},
      {"()", {}},            {"(B,1,1,n)", {B, 1, 1, n}}};
  for (const auto& shape : shapes) {
    for (bool padded : {false, true}) {
      const auto q = torch::randn({B, H, m, d}, o), k = torch::randn({B, H, n, d}, o);
      const auto v = torch::randn({B, H, n, dv}, o), bias = torch::randn(shape.second, o);
      const auto mask = padded ? empty_row_mask(B, n) : torch::Tensor();
      const auto grad_out = torch::randn({B, H, m, dv}, o);
      auto run = [&](bool oracle) {
        std::vector<torch::Tensor> leaves;
        for (const auto& t : {q, k, v, bias}) leaves.push_back(t.clone().requires_grad_(true));
        auto out = oracle ? kvq_ref::softmax_attention(leaves[0], leaves[1], leaves[2], false,
                                                       mask, -1.0, {}, leaves[3])
                          : F::softmax_attention(leaves[0], leaves[1], leaves[2],
                                                 make_options(false, mask).score_bias(leaves[3]));
        auto grads = torch::autograd::grad({out}, leaves, {grad_out}, false, false, true);
        grads.insert(grads.begin(), out.detach());
        return grads;
      };
      const auto ours = run(false), ref = run(true);
      // A bias constant along each score row cancels under the softmax: its exact gradient is
      // zero, so it is measured on the scale of the largest gradient.
      const bool row_constant = shape.second.empty() || shape.second.back() == 1;
      double largest = 0;
      for (size_t i = 1; i < ref.size(); ++i) {
        largest = std::max(largest, ref[i].abs().max().item<double>());
      }
      double worst = 0;
      for (size_t i = 0; i < ours.size(); ++i) {
        ASSERT_TRUE(ours[i].defined() && ref[i].defined()) << shape.first << " tensor " << i;
        EXPECT_EQ(ours[i].sizes(), ref[i].sizes()) << shape.first;
        const bool zero_grad = row_constant && i == ours.size() - 1;
        worst = std::max(worst, zero_grad ? ours[i].abs().max().item<double>() / largest
                                          : max_rel_err(ours[i], ref[i]));
      }
      report("tiled softmax score_bias" + shape.first + (padded ? " pad(empty rows)" : "") +
                 " fp64 out+grads",
             "relerr", worst);
      EXPECT_LE(worst, kTolMatmul64) << shape.first;
    }
  }
}

// kv-pos computes with the per-key bias (the query-position part of P . w dropped): the same
// output as the full (H, m, n) bias of kv_pos_score_terms.
TEST(TiledSoftmax, KvPosKeyTermsEqualFullScoreTerms) {
  Case c;
  c.B = 2, c.H = 3, c.m = c.n = 40, c.d = 4, c.dv = 3, c.mask = MaskKind::Scattered;
  for (bool causal : {false, true}) {
    const auto in = make_inputs(c, 9);
    const auto full = F::kv_pos_score_terms(in.pos_weight, in.pos_bias, c.n, c.n);
    const auto key = F::kv_pos_key_terms(in.pos_weight, in.pos_bias, c.n);
    EXPECT_EQ(key.second.sizes(), torch::IntArrayRef({c.H, 1, c.n}));
    const auto opt = make_options(causal, in.mask);
    const auto a = F::softmax_attention(in.k, in.k, in.v,
                                        F::AttentionFuncOptions(opt).score_gain(full.first)
                                            .score_bias(full.second));
    const auto b = F::softmax_attention(in.k, in.k, in.v,
                                        F::AttentionFuncOptions(opt).score_gain(key.first)
                                            .score_bias(key.second));
    const double err = max_rel_err(b, a);
    report(std::string("kv_pos_key_terms vs kv_pos_score_terms") + (causal ? " causal" : "") +
               " fp64",
           "relerr", err);
    EXPECT_LE(err, kTolMatmul64);
  }
}

// Dropout (in the tiled kernel, tests/functional/test_softmax_dropout.cpp): the same seed gives
// the same weights, another seed others, and evaluation mode is the dropout-free output.
TEST(TiledSoftmax, DropoutIsDeterministicPerSeed) {
  Case c;
  c.m = c.n = 33, c.causal = true;
  const auto in = make_inputs(c, 3);
  const auto train = make_options(true, {}).dropout(0.3).training(true);
  torch::manual_seed(11);
  const auto a = F::softmax_attention(in.q, in.k, in.v, train);
  torch::manual_seed(11);
  const auto b = F::softmax_attention(in.q, in.k, in.v, train);
  torch::manual_seed(12);
  const auto other = F::softmax_attention(in.q, in.k, in.v, train);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, other));
  const auto eval = F::softmax_attention(in.q, in.k, in.v, make_options(true, {}).dropout(0.3));
  const auto ref = kvq_ref::softmax_attention(in.q, in.k, in.v, true, {});
  EXPECT_LE(max_rel_err(eval, ref), kTolMatmul64);
}

// Inputs whose rows are strided (the module's (B, T, H, E) -> (B, H, T, E) view) need no copy and
// give the same result as contiguous ones.
TEST(TiledSoftmax, StridedInputs) {
  torch::manual_seed(4);
  const auto x = torch::randn({2, 150, 3, 8}, torch::kFloat64);  // (B, T, H, E)
  const auto q = x.transpose(1, 2);
  const auto v = torch::randn({2, 150, 3, 5}, torch::kFloat64).transpose(1, 2);
  for (bool causal : {false, true}) {
    const auto out = F::softmax_attention(q, q, v, make_options(causal, {}));
    const auto ref = kvq_ref::softmax_attention(q, q, v, causal, {});
    EXPECT_LE(max_rel_err(out, ref), kTolMatmul64);
  }
}

}  // namespace
}  // namespace kvq_test
