// The Mesa layer (kvq/functional/mesa.h, src/kernels/cpu/mesa_kernel.cpp): against the float64
// per-token oracle (tests/reference/mesa_oracle.h), in float32, against causal intention, its
// analytic backward against autograd through the oracle and against central differences for every
// input, and the numerical cases that broke other implementations (strong decay, near-rank-1 keys,
// short chunks), key padding and initial states.
#include "kvq/functional/mesa.h"
#include "reference/mesa_oracle.h"
#include "test_utils.h"

namespace kvq_test {
namespace {

struct MesaInputs {
  torch::Tensor q, k, v, g, beta, lambda, kk, kv;  // kk, kv undefined: zero initial states

  MesaInputs to(torch::ScalarType dtype) const {
    MesaInputs out;
    const auto cast = [&](const torch::Tensor& t) { return t.defined() ? t.to(dtype) : t; };
    out.q = cast(q), out.k = cast(k), out.v = cast(v), out.g = cast(g), out.beta = cast(beta);
    out.lambda = cast(lambda), out.kk = cast(kk), out.kv = cast(kv);
    return out;
  }
  std::vector<torch::Tensor> leaves() const { return {q, k, v, g, beta, lambda, kk, kv}; }
};

const char* kLeafNames[] = {"q", "k", "v", "g", "beta", "lambda", "initial S_kk", "initial S_kv"};

// Well-conditioned float64 inputs: q, v ~ N(0, 1), k ~ N(0, 1 / d) (|k| about 1), g uniform in
// [g_lo, g_hi], beta uniform in [0.1, 1], lambda uniform in [0.5, 1.5] per (head, dimension);
// with_state: initial S_kk = M M^T / d (M ~ N(0, 1)), S_kv ~ N(0, 0.5^2).
MesaInputs make(int64_t B, int64_t H, int64_t T, int64_t d, int64_t dv, uint64_t seed,
                bool with_state = false, double g_lo = -1.0, double g_hi = 0.0) {
  torch::manual_seed(seed);
  const auto o = torch::TensorOptions().dtype(torch::kFloat64);
  MesaInputs in;
  in.q = torch::randn({B, H, T, d}, o);
  in.k = torch::randn({B, H, T, d}, o) / std::sqrt(double(d));
  in.v = torch::randn({B, H, T, dv}, o);
  in.g = g_lo + (g_hi - g_lo) * torch::rand({B, H, T}, o);
  in.beta = 0.1 + 0.9 * torch::rand({B, H, T}, o);
  in.lambda = 0.5 + torch::rand({H, d}, o);
  if (with_state) {
    const auto m = torch::randn({B, H, d, d}, o);
    in.kk = torch::matmul(m, m.transpose(-2, -1)) / double(d);
    in.kv = 0.5 * torch::randn({B, H, d, dv}, o);
  }
  return in;
}

F::MesaOptions options(const MesaInputs& in, int64_t chunk, const torch::Tensor& mask = {}) {
  return F::MesaOptions().initial_kk(in.kk).initial_kv(in.kv).chunk_size(chunk).key_padding_mask(
      mask);
}

using Outputs = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>;

Outputs run_kvq(const MesaInputs& in, int64_t chunk, const torch::Tensor& mask = {}) {
  return F::mesa_with_final_state(in.q, in.k, in.v, in.g, in.beta, in.lambda,
                                  options(in, chunk, mask));
}

// The oracle with the initial S_kk symmetrised, as kvq documents it.
Outputs run_oracle(const MesaInputs& in, const torch::Tensor& mask = {}) {
  const auto kk = in.kk.defined() ? 0.5 * (in.kk + in.kk.transpose(-2, -1)) : in.kk;
  auto r = kvq_ref::mesa(in.q, in.k, in.v, in.g, in.beta, in.lambda, kk, in.kv, mask);
  return {r.out, r.final_kk, r.final_kv};
}

// L = <o, W0> + <S_kk,T, W1> + <S_kv,T, W2> with fixed random W.
torch::Tensor loss_of(const Outputs& r, uint64_t seed) {
  torch::manual_seed(seed);
  const auto& [o, kk, kv] = r;
  const auto w0 = torch::randn(o.sizes(), o.options()), w1 = torch::randn(kk.sizes(), kk.options()),
             w2 = torch::randn(kv.sizes(), kv.options());
  return (o * w0).sum() + (kk * w1).sum() + (kv * w2).sum();
}

// dL/d(every defined leaf), float64.
std::vector<torch::Tensor> grads_of(const std::function<Outputs(const MesaInputs&)>& f,
                                    const MesaInputs& in, uint64_t seed) {
  MesaInputs x = in;
  std::vector<torch::Tensor*> slots{&x.q, &x.k, &x.v, &x.g, &x.beta, &x.lambda, &x.kk, &x.kv};
  std::vector<torch::Tensor> leaves;
  for (auto* s : slots) {
    if (s->defined()) *s = s->detach().clone().requires_grad_(true), leaves.push_back(*s);
  }
  return torch::autograd::grad({loss_of(f(x), seed)}, leaves);
}

double output_error(const Outputs& got, const Outputs& want) {
  return std::max({max_rel_err(std::get<0>(got), std::get<0>(want)),
                   max_rel_err(std::get<1>(got), std::get<1>(want)),
                   max_rel_err(std::get<2>(got), std::get<2>(want))});
}

// Analytic (kvq) gradients against autograd through the oracle; returns the largest error.
double check_grads_against_oracle(const std::string& label, const MesaInputs& in, int64_t chunk,
                                  double tol, const torch::Tensor& mask = {}) {
  const auto got = grads_of([&](const MesaInputs& x) { return run_kvq(x, chunk, mask); }, in, 7);
  const auto want = grads_of([&](const MesaInputs& x) { return run_oracle(x, mask); }, in, 7);
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = grad_rel_err(got[i], want[i]);
    EXPECT_LE(err, tol) << label << " d" << kLeafNames[i];
    worst = std::max(worst, err);
  }
  report(label, "grad-vs-oracle-autograd", worst);
  return worst;
}

TEST(Mesa, MatchesFloat64Oracle) {
  // 6 heads: one full lane group of 4 (float64) and one with 2 padding lanes.
  auto in = make(2, 3, 37, 5, 3, 1, /*with_state=*/true);
  for (const auto& lambda : {in.lambda, in.lambda.mean(1), in.lambda.mean()}) {
    in.lambda = lambda;
    const double err = output_error(run_kvq(in, 8), run_oracle(in));
    report("mesa fp64 lambda" + std::to_string(lambda.dim()) + "d", "rel", err);
    EXPECT_LE(err, kTolSolve64);
  }
}

TEST(Mesa, Float32MatchesFloat64Oracle) {
  // Well-conditioned: |k| ~ 1, lambda in [0.5, 1.5], g in [-1, 0]; 9 heads (2 lane groups of 8).
  const auto in = make(3, 3, 160, 16, 12, 2, /*with_state=*/true);
  const auto want = run_oracle(in);
  const auto got = run_kvq(in.to(torch::kFloat32), 64);
  EXPECT_EQ(std::get<0>(got).scalar_type(), torch::kFloat32);
  const double err = std::max({nrmse(std::get<0>(got), std::get<0>(want)),
                               nrmse(std::get<1>(got), std::get<1>(want)),
                               nrmse(std::get<2>(got), std::get<2>(want))});
  report("mesa fp32 vs fp64 oracle", "nrmse", err);
  EXPECT_LE(err, kTolNrmse32);
}

TEST(Mesa, LongSequenceFloat32) {
  // T = 16384 with slow decay (g in [-0.02, 0]: memory of ~100 tokens), d = dv = 8: float32
  // against the float64 oracle over the whole sequence.
  const auto in = make(1, 2, 16384, 8, 8, 14, /*with_state=*/false, -0.02, 0.0);
  const auto want = run_oracle(in);
  const auto got = run_kvq(in.to(torch::kFloat32), 64);
  const double err = std::max({nrmse(std::get<0>(got), std::get<0>(want)),
                               nrmse(std::get<1>(got), std::get<1>(want)),
                               nrmse(std::get<2>(got), std::get<2>(want))});
  report("mesa fp32 T=16384 vs fp64 oracle", "nrmse", err);
  EXPECT_LE(err, kTolNrmse32);
}

TEST(Mesa, NoGatesEqualsCausalIntention) {
  auto in = make(2, 3, 50, 6, 4, 3);
  in.g = torch::zeros_like(in.g), in.beta = torch::ones_like(in.beta);
  const auto alpha = torch::tensor({0.3, 1.0, 2.5}, torch::kFloat64);
  const auto got = F::mesa(in.q, in.k, in.v, in.g, in.beta, alpha, F::MesaOptions().chunk_size(16));
  const auto want = F::intention(in.q, in.k, in.v, alpha, F::AttentionFuncOptions().causal(true));
  const double err = max_rel_err(got, want);
  report("mesa g=0 beta=1 vs causal intention fp64", "rel", err);
  EXPECT_LE(err, kTolMatmul64);
}

TEST(Mesa, GradientsMatchAutogradThroughOracle) {
  check_grads_against_oracle("mesa grads fp64", make(2, 3, 11, 4, 3, 4, /*with_state=*/true), 4,
                             kTolSolve64);
}

TEST(Mesa, GradientsMatchCentralDifferences) {
  const auto in = make(1, 2, 7, 3, 2, 5, /*with_state=*/true);
  const auto analytic = grads_of([](const MesaInputs& x) { return run_kvq(x, 3); }, in, 11);
  MesaInputs x = in;
  for (auto* t : {&x.q, &x.k, &x.v, &x.g, &x.beta, &x.lambda, &x.kk, &x.kv}) *t = t->clone();
  const auto leaves = x.leaves();
  const auto loss = [&] { return loss_of(run_kvq(x, 3), 11).item<double>(); };
  double worst = 0;
  for (size_t i = 0; i < leaves.size(); ++i) {
    const double err = grad_rel_err(analytic[i], central_differences(loss, leaves[i]));
    EXPECT_LE(err, kTolGrad) << "d" << kLeafNames[i];
    worst = std::max(worst, err);
  }
  report("mesa grads vs central differences fp64", "rel", worst);
}

TEST(Mesa, StrongDecay) {
  // g in [-10.5, -9.5]: the states forget almost everything at every token.
  const auto in = make(1, 3, 24, 4, 3, 6, /*with_state=*/true, -10.5, -9.5);
  const double err = output_error(run_kvq(in, 5), run_oracle(in));
  report("mesa strong decay fp64", "rel", err);
  EXPECT_LE(err, kTolSolve64);
  check_grads_against_oracle("mesa strong decay", in, 5, kTolSolve64);
  // dg is ~exp(-10) times the other gradients, so the floored grad_rel_err above says little
  // about it: compare it relative to its own size, with autograd through the oracle and with
  // central differences. Their step is 1e-3 here, not 1e-6: with |dg| ~ 1e-4 the rounding error
  // of a 1e-6 step (~1e-16 |L| / 1e-6) would be ~1e-5 of dg, while the truncation error of a
  // 1e-3 step is ~1e-6 |d^3L/dg^3| / 6, about 1e-7 of dg (each derivative in g is ~ exp(g)).
  const auto analytic = grads_of([](const MesaInputs& y) { return run_kvq(y, 5); }, in, 13);
  const auto oracle = grads_of([](const MesaInputs& y) { return run_oracle(y); }, in, 13);
  const double scale = oracle[3].abs().max().item<double>();
  EXPECT_GT(scale, 0.0);
  const double vs_oracle = (analytic[3] - oracle[3]).abs().max().item<double>() / scale;
  report("mesa strong decay dg vs oracle autograd (rel to max|dg|)", "rel", vs_oracle);
  EXPECT_LE(vs_oracle, kTolSolve64);
  MesaInputs x = in;
  x.g = in.g.clone();
  auto numeric = torch::zeros_like(x.g);
  {
    torch::NoGradGuard no_grad;
    constexpr double kStep = 1e-3;
    double* p = x.g.data_ptr<double>();
    for (int64_t i = 0; i < x.g.numel(); ++i) {
      const double old = p[i];
      p[i] = old + kStep;
      const double up = loss_of(run_kvq(x, 5), 13).item<double>();
      p[i] = old - kStep;
      const double down = loss_of(run_kvq(x, 5), 13).item<double>();
      p[i] = old;
      numeric.data_ptr<double>()[i] = (up - down) / (2 * kStep);
    }
  }
  const double vs_fd = (analytic[3] - numeric).abs().max().item<double>() / scale;
  report("mesa strong decay dg vs central differences (rel to max|dg|)", "rel", vs_fd);
  EXPECT_LE(vs_fd, kTolGrad);
  std::cout << "[mesa] strong decay max|dg| = " << scale << std::endl;
}

TEST(Mesa, NearRankOneKeys) {
  auto in = make(1, 2, 30, 5, 3, 8);
  torch::manual_seed(9);
  const auto u = torch::randn({1, 2, 1, 5}, torch::kFloat64);
  in.k = torch::randn({1, 2, 30, 1}, torch::kFloat64) * u + 1e-4 * torch::randn_like(in.k);
  in.lambda = torch::full({2, 5}, 1e-2, torch::kFloat64);
  const double err = output_error(run_kvq(in, 8), run_oracle(in));
  report("mesa near-rank-1 keys fp64", "rel", err);
  EXPECT_LE(err, kTolSolve64);
  check_grads_against_oracle("mesa near-rank-1 keys", in, 8, kTolSolve64);
}

TEST(Mesa, ChunkLengthDoesNotChangeAnything) {
  const auto in = make(2, 3, 13, 4, 3, 10, /*with_state=*/true);
  const auto run_with = [&](int64_t chunk) { return run_kvq(in, chunk); };
  const auto base = run_with(13);
  const auto base_grads = grads_of([](const MesaInputs& x) { return run_kvq(x, 13); }, in, 17);
  for (int64_t chunk : {1, 2, 5, 64}) {
    const double out_err = output_error(run_with(chunk), base);
    const auto grads = grads_of([&](const MesaInputs& x) { return run_kvq(x, chunk); }, in, 17);
    double grad_err = 0;
    for (size_t i = 0; i < grads.size(); ++i) {
      grad_err = std::max(grad_err, max_rel_err(grads[i], base_grads[i]));
    }
    report("mesa chunk " + std::to_string(chunk) + " vs one chunk", "rel",
           std::max(out_err, grad_err));
    EXPECT_LE(out_err, kTolMatmul64);
    EXPECT_LE(grad_err, kTolMatmul64);
  }
}

TEST(Mesa, KeyPaddingEqualsDroppingTheTokens) {
  const int64_t B = 2, H = 2, T = 12;
  const auto in = make(B, H, T, 4, 3, 11, /*with_state=*/true);
  auto mask = torch::zeros({B, T}, torch::kBool);
  for (int64_t t : {2, 3, 7, 11}) mask[0][t] = true;
  for (int64_t t : {0, 5}) mask[1][t] = true;
  // Only the outputs of real tokens enter the loss.
  const auto weights =
      torch::randn({B, H, T, 3}, torch::kFloat64) * (~mask).view({B, 1, T, 1}).to(torch::kFloat64);
  MesaInputs x = in;
  for (auto* s : {&x.q, &x.k, &x.v, &x.g, &x.beta, &x.lambda, &x.kk, &x.kv}) {
    *s = s->detach().clone().requires_grad_(true);
  }
  const auto [out, kk, kv] = run_kvq(x, 5, mask);
  auto grads = torch::autograd::grad({(out * weights).sum() + kk.sum() + kv.sum()}, x.leaves());
  double worst = 0;
  for (int64_t b = 0; b < B; ++b) {
    const auto keep = (~mask[b]).nonzero().squeeze(1);
    MesaInputs y;
    const auto pick = [&](const torch::Tensor& t) {
      return t.detach()[b].unsqueeze(0).index_select(2, keep).clone().requires_grad_(true);
    };
    y.q = pick(x.q), y.k = pick(x.k), y.v = pick(x.v);
    y.g = pick(x.g.unsqueeze(-1)).squeeze(-1).detach().requires_grad_(true);
    y.beta = pick(x.beta.unsqueeze(-1)).squeeze(-1).detach().requires_grad_(true);
    y.lambda = x.lambda.detach().clone().requires_grad_(true);
    y.kk = x.kk.detach()[b].unsqueeze(0).clone().requires_grad_(true);
    y.kv = x.kv.detach()[b].unsqueeze(0).clone().requires_grad_(true);
    const auto [o2, kk2, kv2] = run_kvq(y, 5);
    const auto w2 = weights[b].unsqueeze(0).index_select(2, keep);
    worst = std::max(worst, max_rel_err(o2, out[b].unsqueeze(0).index_select(2, keep)));
    worst = std::max(
        {worst, max_rel_err(kk2, kk[b].unsqueeze(0)), max_rel_err(kv2, kv[b].unsqueeze(0))});
    auto g2 = torch::autograd::grad({(o2 * w2).sum() + kk2.sum() + kv2.sum()},
                                    {y.q, y.k, y.v, y.g, y.beta, y.kk, y.kv});
    const std::vector<torch::Tensor> full{grads[0], grads[1], grads[2], grads[3].unsqueeze(-1),
                                          grads[4].unsqueeze(-1)};
    for (size_t i = 0; i < full.size(); ++i) {
      auto mine = full[i][b].unsqueeze(0).index_select(2, keep);
      if (i >= 3) mine = mine.squeeze(-1);
      worst = std::max(worst, max_rel_err(mine, g2[i]));
    }
    worst = std::max({worst, max_rel_err(grads[6][b].unsqueeze(0), g2[5]),
                      max_rel_err(grads[7][b].unsqueeze(0), g2[6])});
    // Padded tokens: no gradient reaches k, v, g or beta there.
    const auto padded = mask[b].nonzero().squeeze(1);
    for (int i : {1, 2, 3, 4}) {
      const auto t = grads[i][b].index_select(1, padded);
      EXPECT_EQ(t.abs().max().item<double>(), 0.0) << kLeafNames[i] << " at padded tokens";
    }
  }
  report("mesa key padding vs dropped tokens", "rel", worst);
  EXPECT_LE(worst, kTolMatmul64);
}

TEST(Mesa, InitialStateEqualsRunningThePrefix) {
  const int64_t T = 17, split = 6;
  const auto in = make(2, 2, T, 4, 3, 12);
  const auto full = [](const MesaInputs& x) { return run_kvq(x, 4); };
  const auto chained = [&](const MesaInputs& x) {
    MesaInputs a = x, b = x;
    const auto first = [&](const torch::Tensor& t) { return t.narrow(2, 0, split); };
    const auto rest = [&](const torch::Tensor& t) { return t.narrow(2, split, T - split); };
    a.q = first(x.q), a.k = first(x.k), a.v = first(x.v), a.g = first(x.g), a.beta = first(x.beta);
    const auto [o1, kk1, kv1] = run_kvq(a, 4);
    b.q = rest(x.q), b.k = rest(x.k), b.v = rest(x.v), b.g = rest(x.g), b.beta = rest(x.beta);
    b.kk = kk1, b.kv = kv1;
    const auto [o2, kk2, kv2] = run_kvq(b, 4);
    return Outputs{torch::cat({o1, o2}, 2), kk2, kv2};
  };
  double err = output_error(chained(in), full(in));
  const auto g_full = grads_of(full, in, 19), g_chained = grads_of(chained, in, 19);
  for (size_t i = 0; i < g_full.size(); ++i)
    err = std::max(err, max_rel_err(g_chained[i], g_full[i]));
  report("mesa prefix + initial state vs one run", "rel", err);
  EXPECT_LE(err, kTolMatmul64);
}

TEST(Mesa, ErrorsNameTheArgument) {
  const auto in = make(2, 3, 5, 4, 3, 13);
  const auto expect_error = [&](const std::function<void()>& f, const std::string& text) {
    try {
      f();
      ADD_FAILURE() << "no error, expected one mentioning '" << text << "'";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  const auto call = [&](const MesaInputs& x, const F::MesaOptions& o = {}) {
    F::mesa(x.q, x.k, x.v, x.g, x.beta, x.lambda, o);
  };
  MesaInputs x = in;
  x.g = in.g.unsqueeze(-1);
  expect_error([&] { call(x); }, "g must have shape (B, H, T)");
  x = in, x.lambda = torch::ones({4}, torch::kFloat64);
  expect_error([&] { call(x); }, "lambda must have shape (), (H)");
  x = in, x.lambda = -in.lambda;
  expect_error([&] { call(x); }, "lambda must be > 0");
  expect_error([&] { call(in.to(torch::kFloat16)); }, "float32 or float64");
  x = in, x.beta = in.beta.to(torch::kFloat32);
  expect_error([&] { call(x); }, "beta must have the dtype of q");
  expect_error(
      [&] {
        call(in, F::MesaOptions().initial_kk(torch::zeros({2, 3, 4, 4}, torch::kFloat64)));
      },
      "both initial states");
  expect_error(
      [&] {
        call(in, F::MesaOptions()
                     .initial_kk(torch::zeros({2, 3, 4, 4}, torch::kFloat64))
                     .initial_kv(torch::zeros({2, 3, 4, 4}, torch::kFloat64)));
      },
      "initial S_kv must have shape (B, H, d, dv)");
  expect_error(
      [&] {
        call(in, F::MesaOptions().key_padding_mask(torch::zeros({2, 4}, torch::kBool)));
      },
      "key_padding_mask must have shape (B, T)");
  expect_error([&] { call(in, F::MesaOptions().chunk_size(0)); }, "chunk_size must be >= 1");
}

}  // namespace
}  // namespace kvq_test
