// The fused non-causal linear kernel (src/kernels/cpu/linear_kernel.cpp, used by non-causal linear
// attention on CPU float32/float64) and its analytic backward: against the float64 oracle and
// autograd through it, against central differences, with key padding, eps > 0, dv != d, lengths
// on both sides of the kernel's 256-row blocks, non-contiguous inputs, and in float32.
#include "test_utils.h"

namespace kvq_test {
namespace {

struct LinearCase {
  int64_t B = 2, H = 2, m = 9, n = 9, d = 5, dv = 3;
  MaskKind mask = MaskKind::None;
  double eps = 1e-6;
};

std::string case_label(const LinearCase& c) {
  static const char* masks[] = {"", " pad(trailing)", " pad(scattered)", " pad(none set)"};
  std::ostringstream s;
  s << "fused linear m=" << c.m << " n=" << c.n << " d=" << c.d << " dv=" << c.dv
    << " eps=" << c.eps << masks[static_cast<int>(c.mask)];
  return s.str();
}

Inputs linear_inputs(const LinearCase& c, uint64_t seed) {
  Case x;
  x.B = c.B, x.H = c.H, x.m = c.m, x.n = c.n, x.d = c.d, x.dv = c.dv, x.mask = c.mask;
  return make_inputs(x, seed);
}

torch::Tensor run_linear(const Inputs& in, double eps) {
  return F::linear_attention(in.q, in.k, in.v, make_options(false, in.mask).eps(eps));
}

torch::Tensor run_linear_oracle(const Inputs& in, double eps) {
  return kvq_ref::linear_attention(in.q, in.k, in.v, false, in.mask, eps);
}

// Fixed random weights W (B, H, m, dv) of the loss <out, W>, in float64.
torch::Tensor loss_weights(const LinearCase& c, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({c.B, c.H, c.m, c.dv}, torch::kFloat64);
}

// The output of f and the gradients of <out, W> w.r.t. q, k, v, from fresh leaves (W in the
// inputs' dtype).
std::vector<torch::Tensor> output_and_grads(const std::function<torch::Tensor(const Inputs&)>& f,
                                            const Inputs& in, const torch::Tensor& weights) {
  Inputs x = in;
  x.q = in.q.detach().clone().requires_grad_(true);
  x.k = in.k.detach().clone().requires_grad_(true);
  x.v = in.v.detach().clone().requires_grad_(true);
  const auto out = f(x);
  const auto loss = (out * weights.to(out.scalar_type())).sum();
  auto grads = torch::autograd::grad({loss}, {x.q, x.k, x.v});
  grads.insert(grads.begin(), out.detach());
  return grads;
}

// fp64: output against the oracle, gradients against autograd through it, all within the plain
// matmul tolerance 1e-12. Lengths 300 and 520 cross the kernel's 256-row blocks; n >= 3 keeps at
// least two visible keys per query (with one, the exact dq and dk are O(eps) and their relative
// error measures cancellation, not the kernel).
TEST(LinearKernel, MatchesOracleAndAutogradThroughIt) {
  std::vector<LinearCase> cases;
  for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{
           {2, 3}, {17, 17}, {300, 300}, {7, 520}, {520, 6}}) {
    for (MaskKind mask : {MaskKind::None, MaskKind::Trailing, MaskKind::Scattered}) {
      LinearCase c;
      c.m = m, c.n = n, c.mask = mask, c.eps = mask == MaskKind::Trailing ? 0.5 : 1e-6;
      cases.push_back(c);
    }
  }
  LinearCase wide;  // dv > d
  wide.m = wide.n = 33, wide.d = 3, wide.dv = 8, wide.mask = MaskKind::Scattered;
  cases.push_back(wide);
  LinearCase no_eps;  // eps = 0
  no_eps.m = no_eps.n = 40, no_eps.eps = 0, no_eps.mask = MaskKind::Trailing;
  cases.push_back(no_eps);
  uint64_t seed = 500;
  for (const auto& c : cases) {
    const auto label = case_label(c);
    SCOPED_TRACE(label);
    const auto in = linear_inputs(c, ++seed);
    const auto weights = loss_weights(c, seed);
    const auto ours =
        output_and_grads([&](const Inputs& x) { return run_linear(x, c.eps); }, in, weights);
    const auto ref = output_and_grads(
        [&](const Inputs& x) { return run_linear_oracle(x, c.eps); }, in, weights);
    const char* names[] = {"out", "dq", "dk", "dv"};
    double worst = 0;
    for (size_t i = 0; i < ours.size(); ++i) {
      const double err = max_rel_err(ours[i], ref[i]);
      EXPECT_LE(err, kTolMatmul64) << names[i];
      worst = std::max(worst, err);
    }
    report(label + " fp64 out+grads vs oracle autograd", "relerr", worst);
  }
}

// The analytic backward against central differences of <out, W> in fp64 (policy: 1e-6), with
// padding, a large eps and dv != d (the block boundaries are covered above, against autograd).
TEST(LinearKernel, GradientsMatchCentralDifferences) {
  LinearCase more_keys, more_queries;
  more_keys.m = 6, more_keys.n = 11, more_keys.d = 3, more_keys.dv = 4;
  more_keys.mask = MaskKind::Scattered, more_keys.eps = 0.5;
  more_queries.m = 13, more_queries.n = 5, more_queries.d = 4, more_queries.dv = 2;
  more_queries.mask = MaskKind::Trailing;
  for (const auto& c : {more_keys, more_queries}) {
    const auto label = case_label(c);
    SCOPED_TRACE(label);
    auto in = linear_inputs(c, 77);
    const auto weights = loss_weights(c, 78);
    auto loss = [&] { return (run_linear(in, c.eps) * weights).sum().item<double>(); };
    const auto analytic = output_and_grads([&](const Inputs& x) { return run_linear(x, c.eps); },
                                           in, weights);
    const std::vector<std::pair<const char*, torch::Tensor*>> inputs = {
        {"q", &in.q}, {"k", &in.k}, {"v", &in.v}};
    double worst = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const auto numeric = central_differences(loss, *inputs[i].second);
      const double err = grad_rel_err(analytic[i + 1], numeric);
      EXPECT_LE(err, kTolGrad) << "d/d" << inputs[i].first;
      worst = std::max(worst, err);
    }
    report("grad-fd " + label, "relerr", worst);
  }
}

// Padded keys and values that hold NaN change nothing: the output and the gradients equal those
// with zeros there, and the padded rows of dk and dv are exactly zero.
TEST(LinearKernel, PaddedNaNsDoNotLeak) {
  LinearCase c;
  c.m = 11, c.n = 270, c.mask = MaskKind::Scattered;
  const auto in = linear_inputs(c, 91);
  const auto padded_rows = in.mask.view({c.B, 1, c.n, 1});
  auto with = [&](double fill) {
    Inputs x = in;
    x.k = in.k.masked_fill(padded_rows, fill);
    x.v = in.v.masked_fill(padded_rows, fill);
    return output_and_grads([&](const Inputs& y) { return run_linear(y, c.eps); }, x,
                            loss_weights(c, 92));
  };
  const auto nan = with(std::nan("")), zero = with(0.0);
  for (size_t i = 0; i < nan.size(); ++i) {
    EXPECT_TRUE(torch::isfinite(nan[i]).all().item<bool>()) << "result " << i;
    EXPECT_TRUE(torch::equal(nan[i], zero[i])) << "result " << i;
  }
  for (size_t i : {2, 3}) {  // dk, dv
    EXPECT_EQ(nan[i].masked_select(padded_rows).abs().max().item<double>(), 0.0) << "result " << i;
  }
}

// Views the kernel reads in place (rows strided by H * d, a value tensor expanded over the batch)
// or copies (a transposed last dimension), and a gradient expanded over the rows (from
// out.sum(2)): the same results as contiguous inputs, and as the oracle.
TEST(LinearKernel, NonContiguousInputsMatchContiguous) {
  const int64_t B = 2, H = 3, m = 13, n = 290, d = 4, dv = 6;
  const auto mask = make_mask(MaskKind::Trailing, B, n);
  // The output summed over the queries and the gradients of <that, W> w.r.t. the leaves.
  auto run = [&](bool contiguous, bool oracle) {
    torch::manual_seed(95);
    const auto f64 = torch::dtype(torch::kFloat64);
    auto q = torch::randn({B, m, H, d}, f64).requires_grad_(true);
    auto k = torch::randn({B, H, d, n}, f64).requires_grad_(true);
    auto v = torch::randn({1, H, n, dv}, f64).requires_grad_(true);
    Inputs x;
    x.q = q.transpose(1, 2);          // row stride H * d
    x.k = k.transpose(2, 3);          // column stride n
    x.v = v.expand({B, H, n, dv});    // batch stride 0
    x.mask = mask;
    EXPECT_FALSE(x.q.is_contiguous() || x.k.is_contiguous() || x.v.is_contiguous());
    if (contiguous) x.q = x.q.contiguous(), x.k = x.k.contiguous(), x.v = x.v.contiguous();
    const auto summed = (oracle ? run_linear_oracle(x, 1e-6) : run_linear(x, 1e-6)).sum(2);
    const auto weights = torch::randn_like(summed);
    auto grads = torch::autograd::grad({(summed * weights).sum()}, {q, k, v});
    grads.insert(grads.begin(), summed.detach());
    return grads;
  };
  const auto strided = run(false, false), dense = run(true, false), ref = run(true, true);
  double worst = 0;
  for (size_t i = 0; i < strided.size(); ++i) {
    EXPECT_LE(max_rel_err(strided[i], dense[i]), kTolMatmul64) << "result " << i;
    EXPECT_LE(max_rel_err(strided[i], ref[i]), kTolMatmul64) << "result " << i;
    worst = std::max(worst, max_rel_err(strided[i], ref[i]));
  }
  report("fused linear non-contiguous q, k, v and grad_out fp64 out+grads vs oracle autograd",
         "relerr", worst);
}

// float32 against the float64 oracle within the tolerance policy (unit-scale N(0, 1) inputs), and
// the float32 gradients against the float64 ones by the same measure.
TEST(LinearKernel, Float32WithinPolicy) {
  Case c;
  c.B = 2, c.H = 2, c.m = c.n = 300, c.d = 16, c.dv = 8, c.mask = MaskKind::Trailing;
  c.label = "fused non-causal m=n=300 d=16 dv=8 mask(trailing)";
  check_against_oracle("linear", c, torch::kFloat32);
  LinearCase lc;
  lc.m = lc.n = 300, lc.d = 16, lc.dv = 8, lc.mask = MaskKind::Trailing;
  const auto in = linear_inputs(lc, 1234);
  auto run = [&](const Inputs& x) { return run_linear(x, lc.eps); };
  const auto weights = loss_weights(lc, 5);
  const auto f32 = output_and_grads(run, in.to(torch::kFloat32), weights);
  const auto f64 = output_and_grads(run, in, weights);
  double worst = 0;
  for (size_t i = 0; i < f32.size(); ++i) worst = std::max(worst, nrmse(f32[i], f64[i]));
  report("fused linear m=n=300 d=16 dv=8 mask(trailing) fp32 out+grads vs fp64", "nrmse", worst);
  EXPECT_LE(worst, kTolNrmse32);
}

}  // namespace
}  // namespace kvq_test
