// Gradients, two ways (fp64):
//  1. central finite differences of L = sum(out * R) (R fixed random weights) against kvq's
//     backward (autograd or custom), relative error <= 1e-6, for q, k, v, alpha, and the kv-pos
//     parameters pos_weight / pos_bias;
//  2. kvq's backward against autograd through the float64 oracle (this covers the closed-form
//     backward of non-causal intention).
#include "test_utils.h"

namespace kvq_test {
namespace {

using Named = std::vector<std::pair<std::string, torch::Tensor>>;

// Gradients of sum(forward() * weights) w.r.t. the inputs; unused inputs get zeros.
std::vector<torch::Tensor> autograd_grads(const std::function<torch::Tensor()>& forward,
                                          const torch::Tensor& weights, const Named& inputs) {
  std::vector<torch::Tensor> xs;
  for (const auto& [name, x] : inputs) xs.push_back(x);
  const auto loss = (forward() * weights).sum();
  auto grads = torch::autograd::grad({loss}, xs, {}, /*retain_graph=*/false,
                                     /*create_graph=*/false, /*allow_unused=*/true);
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].defined()) grads[i] = torch::zeros_like(xs[i]);
  }
  return grads;
}

Named grad_inputs(Mech mech, Inputs& in) {
  Named named;
  if (!keys_are_queries(mech)) named.push_back({"q", in.q});
  named.push_back({"k", in.k});
  named.push_back({"v", in.v});
  if (uses_alpha(mech)) named.push_back({"alpha", in.alpha});
  if (mech == "kv-pos") {
    named.push_back({"pos_weight", in.pos_weight});
    named.push_back({"pos_bias", in.pos_bias});
  }
  for (auto& [name, x] : named) x.requires_grad_(true);
  return named;
}

// Tiny shapes: B = 2, H = 2, T <= 7, d = 3, dv = 2.
std::vector<Case> grad_cases(Mech mech) {
  std::vector<Case> cases;
  Case c;
  c.B = 2, c.H = 2, c.m = c.n = 7, c.d = 3, c.dv = 2, c.pos_channels = 6;
  c.label = "mask(scattered)";
  c.mask = MaskKind::Scattered, c.alpha_per_head = true;
  cases.push_back(c);
  c.label = "causal+mask(trailing) chunk=3";
  c.causal = true, c.mask = MaskKind::Trailing, c.alpha_per_head = false, c.chunk = 3;
  cases.push_back(c);
  c.label = "causal+mask(scattered) chunk=2 B=1";
  c.mask = MaskKind::Scattered, c.alpha_per_head = true, c.chunk = 2, c.B = 1;
  cases.push_back(c);
  if (!keys_are_queries(mech)) {
    Case x = c;
    x.label = "cross(m=4,n=6)+mask(scattered)";
    x.B = 2, x.causal = false, x.m = 4, x.n = 6, x.chunk = 64;
    cases.push_back(x);
  }
  return cases;
}

TEST(Gradients, FiniteDifferencesEveryMechanism) {
  for (Mech mech : all_mechs()) {
    for (const auto& c : grad_cases(mech)) {
      SCOPED_TRACE(mech_name(mech) + " " + c.label);
      auto in = make_inputs(c, 101);
      const auto named = grad_inputs(mech, in);
      const auto opt = make_options(c.causal, in.mask, c.chunk);
      auto forward = [&] { return run_impl(mech, in, opt); };
      torch::manual_seed(202);
      const auto weights = torch::randn_like(forward().detach());
      const auto grads = autograd_grads(forward, weights, named);
      double worst = 0;
      for (size_t i = 0; i < named.size(); ++i) {
        const auto num = central_differences(
            [&] { return (forward() * weights).sum().item<double>(); }, named[i].second);
        const double err = grad_rel_err(grads[i], num);
        worst = std::max(worst, err);
        EXPECT_LE(err, kTolGrad) << "d/d" << named[i].first;
        EXPECT_TRUE(torch::isfinite(grads[i]).all().item<bool>()) << "d/d" << named[i].first;
      }
      report("grad-fd " + mech_name(mech) + " " + c.label + alpha_label(mech, c), "relerr", worst);
    }
  }
}

// score_gain / score_bias are differentiable inputs of softmax attention (the kv-pos route).
TEST(Gradients, FiniteDifferencesSoftmaxScoreGainAndBias) {
  for (bool causal : {false, true}) {
    Case c;
    c.B = 2, c.H = 2, c.m = c.n = 6, c.d = 3, c.dv = 2, c.causal = causal, c.chunk = 4;
    c.mask = MaskKind::Scattered;
    auto in = make_inputs(c, 103);
    auto gain = (torch::rand({c.H}, torch::kFloat64) + 0.5).requires_grad_(true);
    auto bias = torch::randn({c.H, c.m, c.n}, torch::kFloat64).requires_grad_(true);
    in.q.requires_grad_(true);
    in.k.requires_grad_(true);
    in.v.requires_grad_(true);
    const Named named = {
        {"q", in.q}, {"k", in.k}, {"v", in.v}, {"score_gain", gain}, {"score_bias", bias}};
    const auto opt = make_options(causal, in.mask, 4).score_gain(gain).score_bias(bias);
    auto forward = [&] { return F::softmax_attention(in.q, in.k, in.v, opt); };
    const auto weights = torch::randn_like(forward().detach());
    const auto grads = autograd_grads(forward, weights, named);
    double worst = 0;
    for (size_t i = 0; i < named.size(); ++i) {
      const auto num = central_differences(
          [&] { return (forward() * weights).sum().item<double>(); }, named[i].second);
      const double err = grad_rel_err(grads[i], num);
      worst = std::max(worst, err);
      EXPECT_LE(err, kTolGrad) << "d/d" << named[i].first;
    }
    report(std::string("grad-fd softmax score_gain/score_bias") + (causal ? " causal" : ""),
           "relerr", worst);
  }
}

// kvq's backward against autograd through the oracle, every mechanism. For non-causal intention
// this checks the closed-form backward (G = A^{-1} Q^T dO, dQ, dK, dV, dalpha) against autograd
// of the dense solve. Tolerance: the fp64 solve tolerance, 1e-10.
TEST(Gradients, MatchAutogradThroughOracle) {
  for (Mech mech : all_mechs()) {
    for (const auto& c : grad_cases(mech)) {
      SCOPED_TRACE(mech_name(mech) + " " + c.label);
      auto in = make_inputs(c, 107);
      const auto named = grad_inputs(mech, in);
      const auto opt = make_options(c.causal, in.mask, c.chunk);
      torch::manual_seed(208);
      const auto weights = torch::randn_like(run_impl(mech, in, opt).detach());
      const auto got = autograd_grads([&] { return run_impl(mech, in, opt); }, weights, named);
      const auto want =
          autograd_grads([&] { return run_oracle(mech, in, c.causal, in.mask); }, weights, named);
      double worst = 0;
      for (size_t i = 0; i < named.size(); ++i) {
        const double err = grad_rel_err(got[i], want[i]);
        worst = std::max(worst, err);
        EXPECT_LE(err, kTolSolve64) << "d/d" << named[i].first;
      }
      report("grad-vs-oracle-autograd " + mech_name(mech) + " " + c.label + alpha_label(mech, c),
             "relerr", worst);
    }
  }
}

// The custom backward of non-causal intention at larger shapes than the finite-difference checks:
// alpha () and (H), masks, cross-attention, a small ridge.
TEST(Gradients, IntentionCustomBackwardMatchesOracleAutograd) {
  struct Variant {
    std::string label;
    int64_t m, n, d, dv;
    MaskKind mask;
    bool per_head;
    double alpha;
  };
  const std::vector<Variant> variants = {
      {"self T=12 d=5 dv=4 alpha()", 12, 12, 5, 4, MaskKind::None, false, 1.0},
      {"self T=12 d=5 dv=4 mask(scattered) alpha(H)", 12, 12, 5, 4, MaskKind::Scattered, true, 1.0},
      {"cross(m=7,n=15) d=6 dv=3 mask(trailing) alpha(H)", 7, 15, 6, 3, MaskKind::Trailing, true,
       0.7},
      {"n<d (n=4,d=7) alpha()=0.05", 5, 4, 7, 3, MaskKind::None, false, 0.05},
  };
  for (const auto& var : variants) {
    SCOPED_TRACE(var.label);
    Case c;
    c.B = 2, c.H = 3, c.m = var.m, c.n = var.n, c.d = var.d, c.dv = var.dv, c.mask = var.mask;
    c.alpha_per_head = var.per_head, c.alpha_base = var.alpha;
    auto in = make_inputs(c, 109);
    const auto named = grad_inputs("intention", in);
    const auto opt = make_options(false, in.mask);
    torch::manual_seed(210);
    const auto weights = torch::randn({c.B, c.H, c.m, c.dv}, torch::kFloat64);
    const auto got = autograd_grads([&] { return F::intention(in.q, in.k, in.v, in.alpha, opt); },
                                    weights, named);
    const auto want = autograd_grads(
        [&] { return kvq_ref::intention(in.q, in.k, in.v, in.alpha, false, in.mask); }, weights,
        named);
    double worst = 0;
    for (size_t i = 0; i < named.size(); ++i) {
      const double err = grad_rel_err(got[i], want[i]);
      worst = std::max(worst, err);
      EXPECT_LE(err, kTolSolve64) << "d/d" << named[i].first;
    }
    report("intention custom backward vs oracle autograd " + var.label, "relerr", worst);
  }
}

}  // namespace
}  // namespace kvq_test
