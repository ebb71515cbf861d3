// The fused least-squares kernels (src/kernels/cpu/least_squares_kernel.cpp: non-causal and causal
// intention and the preconditioner of causal softmax-intention on CPU float32/float64) and their
// analytic backwards: against autograd through the float64 per-token oracle, against the LibTorch
// composition other devices run, in float32 against that composition's accuracy, and its
// factorisation error.
#include "functional/checks.h"
#include "functional/least_squares/least_squares.h"
#include "test_utils.h"

namespace kvq_test {
namespace {

namespace D = kvq::functional::detail;

// The three causal least-squares outputs the kernel computes.
enum class Output { Intention, SoftmaxIntention, Queries };

std::string output_name(Output o) {
  switch (o) {
    case Output::Intention:
      return "intention";
    case Output::SoftmaxIntention:
      return "softmax-intention";
    default:
      return "least_squares_queries";
  }
}

// The output computed by kvq (the fused kernel on the CPU), by the LibTorch composition other
// devices run (what every input ran before the kernel), or by the per-token float64 oracle.
enum class Path { Kernel, Composition, Oracle };

torch::Tensor run_output(Output o, const Inputs& in, int64_t chunk, Path path) {
  if (path == Path::Oracle) {
    switch (o) {
      case Output::Intention:
        return run_oracle("intention", in, true, in.mask);
      case Output::SoftmaxIntention:
        return run_oracle("softmax-intention", in, true, in.mask);
      default:
        return kvq_ref::least_squares_queries(in.q, in.k, in.alpha, true, in.mask);
    }
  }
  if (path == Path::Kernel) {
    switch (o) {
      case Output::Intention:
        return run_impl("intention", in, make_options(true, in.mask, chunk));
      case Output::SoftmaxIntention:
        return run_impl("softmax-intention", in, make_options(true, in.mask, chunk));
      default:
        return F::least_squares_queries(in.q, in.k, in.alpha, make_options(true, in.mask, chunk));
    }
  }
  const auto k = D::zero_padded_keys(in.k, in.mask);
  chunk = std::min(chunk, in.q.size(2));
  if (o == Output::Intention) {
    return D::causal_intention_composed(in.q, k, D::zero_padded_keys(in.v, in.mask), in.alpha, chunk);
  }
  const auto u = D::causal_least_squares_queries_composed(in.q, k, in.alpha, chunk);
  return o == Output::Queries ? u
                              : F::softmax_attention(u, in.k, in.v, make_options(true, in.mask));
}

// The output and the gradients of <out, W> w.r.t. q, k, v (zeros when unused) and alpha.
std::vector<torch::Tensor> output_and_grads(const std::function<torch::Tensor(const Inputs&)>& f,
                                            const Inputs& in, uint64_t seed) {
  std::vector<torch::Tensor> leaves;
  for (const auto& t : {in.q, in.k, in.v, in.alpha}) {
    leaves.push_back(t.detach().clone().requires_grad_(true));
  }
  Inputs x = in;
  x.q = leaves[0], x.k = leaves[1], x.v = leaves[2], x.alpha = leaves[3];
  const auto out = f(x);
  torch::manual_seed(seed);
  const auto weights = torch::randn_like(out.detach());
  auto grads = torch::autograd::grad({(out * weights).sum()}, leaves, {}, false, false, true);
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].defined()) grads[i] = torch::zeros_like(leaves[i]);
  }
  grads.insert(grads.begin(), out.detach());
  return grads;
}

double worst_rel_err(const std::vector<torch::Tensor>& got,
                     const std::vector<torch::Tensor>& want) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, max_rel_err(got[i], want[i]));
  return worst;
}

Case kernel_case(int64_t T, int64_t chunk, double alpha, bool per_head, bool padded) {
  Case c;
  c.B = 2, c.H = 2, c.m = c.n = T, c.d = 5, c.dv = 3, c.causal = true, c.chunk = chunk;
  c.alpha_base = alpha, c.alpha_per_head = per_head;
  c.mask = padded ? MaskKind::Scattered : MaskKind::None;
  return c;
}

std::string case_label(Output o, const Case& c) {
  std::ostringstream s;
  s << output_name(o) << " fused causal T=" << c.m << " chunk=" << c.chunk
    << (c.mask == MaskKind::None ? "" : " pad(scattered)") << " alpha"
    << (c.alpha_per_head ? "(H)=" : "()=") << c.alpha_base;
  return s.str();
}

// d<out, W>/d alpha in long double (kvq_ref::causal_least_squares_grad_alpha). For
// softmax-intention, dL/dq~ comes from autograd through the oracle's softmax mixer.
torch::Tensor extended_grad_alpha(Output o, const Inputs& in, const torch::Tensor& weights) {
  if (o != Output::SoftmaxIntention) {
    return kvq_ref::causal_least_squares_grad_alpha(
        in.q, in.k, o == Output::Intention ? in.v : torch::Tensor(), in.alpha, in.mask, weights);
  }
  auto qt =
      kvq_ref::least_squares_queries(in.q, in.k, in.alpha, true, in.mask).requires_grad_(true);
  const auto out = kvq_ref::softmax_attention(qt, in.k, in.v, true, in.mask,
                                              1.0 / std::sqrt(double(in.q.size(3))));
  const auto grad_qt = torch::autograd::grad({(out * weights).sum()}, {qt})[0];
  return kvq_ref::causal_least_squares_grad_alpha(in.q, in.k, {}, in.alpha, in.mask, grad_qt);
}

// fp64: the output and the gradients of q, k and v against autograd through the per-token
// oracle (one dense solve of A_t per token), the gradient of alpha against the long-double
// reference, within the fp64 solve tolerance 1e-10 - except at alpha = 1e-4 for intention's dalpha
// and softmax-intention's dk and dalpha. There the conditioning is ~cond(A_t)^2 ~ 1e9 for t < d
// (u_t = A_t^{-1} q_t is O(1/alpha) off the span of the keys and the analytic backward sums
// products of it that cancel): the kernel measures up to ~4e-9 (intention dalpha) and ~6e-7
// (softmax-intention dk), where autograd through the LibTorch composition measures ~2e-9 and
// ~2e-11 at chunk >= 5 (~3e-7 at chunk 1), and autograd through the float64 oracle is itself off
// by ~2e-7 for dalpha. Those quantities are held to 1e-6, a regression guard that is NOT the
// policy's 1e-10; both figures are printed.
TEST(CausalLeastSquaresKernel, MatchesOracleAndItsGradients) {
  for (Output o : {Output::Intention, Output::SoftmaxIntention, Output::Queries}) {
    double worst = 0, worst_alpha = 0, worst_ill = 0, worst_ill_composed = 0;
    for (int64_t T : {1, 17, 65, 130}) {
      for (int64_t chunk : {1, 5, 64}) {
        for (double alpha : {1e-4, 1e-2, 1.0}) {
          const auto c = kernel_case(T, chunk, alpha, T % 2 == 1, alpha == 1e-2);
          const auto in = make_inputs(c, 300 + uint64_t(T));
          auto results = [&](Path path) {
            return output_and_grads(
                [&](const Inputs& x) { return run_output(o, x, chunk, path); }, in, 7);
          };
          const auto got = results(Path::Kernel);
          auto want = results(Path::Oracle);
          torch::manual_seed(7);
          want.back() = extended_grad_alpha(o, in, torch::randn_like(got[0]));
          std::vector<double> errs;
          for (size_t i = 0; i < got.size(); ++i) errs.push_back(max_rel_err(got[i], want[i]));
          const bool ill = alpha == 1e-4;
          std::vector<double> composed_errs(errs.size(), 0);
          if (ill) {
            const auto composed = results(Path::Composition);
            for (size_t i = 0; i < got.size(); ++i)
              composed_errs[i] = max_rel_err(composed[i], want[i]);
          }
          for (size_t i = 0; i < errs.size(); ++i) {
            const bool is_alpha = i + 1 == errs.size();
            const bool exempt = ill && o != Output::Queries &&
                                (is_alpha || (o == Output::SoftmaxIntention && i == 2));
            if (exempt) {
              EXPECT_LE(errs[i], 1e-6) << case_label(o, c) << " quantity " << i;
              worst_ill = std::max(worst_ill, errs[i]);
              worst_ill_composed = std::max(worst_ill_composed, composed_errs[i]);
            } else {
              EXPECT_LE(errs[i], kTolSolve64) << case_label(o, c) << " quantity " << i;
              (is_alpha ? worst_alpha : worst) = std::max(is_alpha ? worst_alpha : worst, errs[i]);
            }
          }
        }
      }
    }
    const std::string label = output_name(o) +
                              " fused causal vs oracle, T in {1,17,65,130}, chunk in "
                              "{1,5,64}, alpha in {1e-4,1e-2,1}, fp64";
    report(label + " out+grads(q,k,v)", "relerr", worst);
    report(label + " dalpha vs long double", "relerr", worst_alpha);
    if (o != Output::Queries) {
      report(label + " alpha=1e-4 exceptions, fused", "relerr", worst_ill);
      report(label + " alpha=1e-4 exceptions, composition", "relerr", worst_ill_composed);
    }
  }
}

// The kernel against the LibTorch composition (the path of other devices, and of every input
// before the kernel existed): same outputs and gradients in fp64.
TEST(CausalLeastSquaresKernel, MatchesTheComposition) {
  for (Output o : {Output::Intention, Output::Queries}) {
    const auto c = kernel_case(150, 32, 0.5, true, false);
    auto in = make_inputs(c, 11);
    auto ours = [&](const Inputs& x) {
      return o == Output::Intention
                 ? D::causal_intention_output("test", x.q, x.k, x.v, x.alpha, 32)
                 : D::causal_least_squares_queries("test", x.q, x.k, x.alpha, 32);
    };
    auto composed = [&](const Inputs& x) {
      return o == Output::Intention
                 ? D::causal_intention_composed(x.q, x.k, x.v, x.alpha, 32)
                 : D::causal_least_squares_queries_composed(x.q, x.k, x.alpha, 32);
    };
    const double err =
        worst_rel_err(output_and_grads(ours, in, 3), output_and_grads(composed, in, 3));
    report(output_name(o) + " fused causal vs LibTorch composition T=150 chunk=32 fp64 out+grads",
           "relerr", err);
    EXPECT_LE(err, kTolSolve64);
  }
}

// The non-causal fused kernel against the LibTorch closed form, cross-attention with alpha (H).
TEST(LeastSquaresKernel, NonCausalMatchesTheComposition) {
  Case c;
  c.B = 2, c.H = 3, c.m = 9, c.n = 23, c.d = 6, c.dv = 4, c.alpha_per_head = true;
  c.alpha_base = 0.01;
  const auto in = make_inputs(c, 12);
  auto ours = [&](const Inputs& x) { return F::intention(x.q, x.k, x.v, x.alpha, {}); };
  auto composed = [&](const Inputs& x) { return D::intention_composed(x.q, x.k, x.v, x.alpha); };
  const double err =
      worst_rel_err(output_and_grads(ours, in, 5), output_and_grads(composed, in, 5));
  report(
      "intention fused non-causal vs LibTorch closed form cross(m=9,n=23) alpha(H) fp64 "
      "out+grads",
      "relerr", err);
  EXPECT_LE(err, kTolSolve64);
}

// float32: the kernel is at least as accurate as the composition's residual form against the fp64
// oracle (normalised RMSE of the output), for alpha down to 1e-4 with unit-scale keys, T = 512,
// d = 32, chunk 32, in the geometric mean over 8 draws of the inputs. One draw says little where
// conditioning dominates: at alpha = 1e-4 the ratio of the two errors spans 0.25-1.6 over draws,
// and which side of 1 a draw lands moved when LibTorch's matmuls changed from OpenBLAS (Debian's
// LibTorch) to MKL (PyPI's). At alpha = 1 every draw also meets the fp32 policy (1e-5).
TEST(CausalLeastSquaresKernel, Float32AtLeastAsAccurateAsTheComposition) {
  constexpr int kDraws = 8;
  for (Output o : {Output::Intention, Output::Queries}) {
    for (double alpha : {1e-4, 1e-2, 1.0}) {
      const std::string label =
          output_name(o) + " fp32 T=512 d=32 chunk=32 alpha=" + std::to_string(alpha);
      double log_ratio_sum = 0, worst_ratio = 0;
      for (int draw = 0; draw < kDraws; ++draw) {
        Case c;
        c.B = 1, c.H = 2, c.m = c.n = 512, c.d = 32, c.dv = 16, c.causal = true, c.chunk = 32;
        c.alpha_base = alpha;
        const auto in64 = make_inputs(c, 21 + draw);
        const auto in32 = in64.to(torch::kFloat32);
        torch::Tensor ref, ours, composed;
        if (o == Output::Intention) {
          ref = kvq_ref::intention(in64.q, in64.k, in64.v, in64.alpha, true, {});
          ours = D::causal_intention_output("test", in32.q, in32.k, in32.v, in32.alpha, 32);
          composed = D::causal_intention_composed(in32.q, in32.k, in32.v, in32.alpha, 32);
        } else {
          ref = kvq_ref::least_squares_queries(in64.q, in64.k, in64.alpha, true, {});
          ours = D::causal_least_squares_queries("test", in32.q, in32.k, in32.alpha, 32);
          composed = D::causal_least_squares_queries_composed(in32.q, in32.k, in32.alpha, 32);
        }
        const double err = nrmse(ours, ref), base = nrmse(composed, ref);
        log_ratio_sum += std::log(err / base);
        worst_ratio = std::max(worst_ratio, err / base);
        if (alpha == 1.0) {
          EXPECT_LE(err, kTolNrmse32) << label << " draw " << draw;
        }
      }
      const double geometric_mean = std::exp(log_ratio_sum / kDraws);
      report(label + " fused / composition error, geometric mean of 8 draws", "ratio",
             geometric_mean);
      report(label + " fused / composition error, worst of 8 draws", "ratio", worst_ratio);
      EXPECT_LE(geometric_mean, 1.0) << label;
    }
  }
}

// A system that is not positive definite in float32 (huge rank-one keys, tiny alpha) is reported
// with the op, the matrix and where, not returned as garbage.
TEST(CausalLeastSquaresKernel, ReportsAFactorisationFailure) {
  const auto dir = torch::randn({1, 1, 1, 8});
  const auto k = (dir * 1e6).expand({1, 1, 40, 8}).contiguous() *
                 torch::linspace(1, 2, 40).view({1, 1, 40, 1});
  const auto q = torch::randn({1, 1, 40, 8}), v = torch::randn({1, 1, 40, 4});
  const auto alpha = torch::full({}, 1e-6);
  try {
    F::intention(q, k, v, alpha, F::AttentionFuncOptions().causal(true).chunk_size(8));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find("intention"), std::string::npos) << msg;
    EXPECT_NE(msg.find("not numerically positive definite in Float"), std::string::npos) << msg;
    EXPECT_NE(msg.find("increase alpha"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace kvq_test
