// Attention dropout inside the tiled softmax kernel (src/kernels/cpu/attention_dropout.h, philox.h):
// Philox against its published known answers; the kernel with dropout against a dense
// composition given the same mask (exposed for tests by tiled_softmax_dropout_mask), its
// gradients against autograd through that composition and against central differences; the
// keep rate and the independence of mask entries; invariance to tile sizes and thread counts;
// and which calls of the functional API take the tiled path.
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "functional/softmax/tiled_softmax.h"
#include "kernels/cpu/philox.h"
#include "test_utils.h"

namespace kvq_test {
namespace {

namespace detail = kvq::functional::detail;
namespace cpu = kvq::kernels::cpu;
using detail::TiledSoftmaxOptions;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

TiledSoftmaxOptions dropout_options(double p, uint64_t seed, uint32_t offset = 0,
                                    int64_t query_block = 0, int64_t key_block = 0) {
  TiledSoftmaxOptions t;
  t.dropout = p, t.dropout_seed = seed, t.dropout_offset = offset;
  t.query_block = query_block, t.key_block = key_block;
  return t;
}

// The dense composition with a given keep mask (B, H, m, n):
// (softmax(scale Q K^T, masked) * keep / (1 - p)) V, rows without a visible key output zeros.
torch::Tensor dense_with_mask(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& padding, bool causal, double scale,
                              const torch::Tensor& keep, double p) {
  const int64_t m = q.size(2), n = k.size(2);
  auto hidden = torch::zeros({q.size(0), 1, m, n}, torch::kBool);
  if (padding.defined()) hidden = hidden.logical_or(padding.view({-1, 1, 1, n}));
  if (causal) hidden = hidden.logical_or(torch::ones({m, n}, torch::kBool).triu(1));
  const auto empty_rows = hidden.all(-1, /*keepdim=*/true);
  auto scores = (torch::matmul(q, k.transpose(-2, -1)) * scale)
                    .masked_fill(hidden.logical_and(empty_rows.logical_not()),
                                 -std::numeric_limits<double>::infinity());
  auto weights = torch::softmax(scores, -1).masked_fill(empty_rows, 0);
  return torch::matmul(weights * keep.to(weights.scalar_type()) / (1.0 - p), v);
}

// A padded value row is zeroed before the kernel, as softmax_mix does.
torch::Tensor tiled(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                    const torch::Tensor& padding, bool causal, double scale,
                    const TiledSoftmaxOptions& t) {
  return detail::tiled_softmax_attention(q, k, v, {}, padding, scale, causal, t);
}

struct OutAndGrads {
  std::vector<torch::Tensor> tensors;  // out, dq, dk, dv
};

template <typename Run>
OutAndGrads out_and_grads(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& grad_out, Run run) {
  std::vector<torch::Tensor> leaves;
  for (const auto& t : {q, k, v}) leaves.push_back(t.detach().clone().requires_grad_(true));
  auto out = run(leaves[0], leaves[1], leaves[2]);
  auto grads = torch::autograd::grad({out}, leaves, {grad_out}, false, false, true);
  OutAndGrads r;
  r.tensors.push_back(out.detach());
  for (size_t i = 0; i < grads.size(); ++i) {
    r.tensors.push_back(grads[i].defined() ? grads[i] : torch::zeros_like(leaves[i]));
  }
  return r;
}

const char* kNames[] = {"out", "dq", "dk", "dv"};

// Random123's known-answer vectors for Philox 4x32-10 (kat_vectors in the Random123 release).
TEST(AttentionDropout, PhiloxKnownAnswers) {
  using W = cpu::PhiloxCounter;
  EXPECT_EQ(cpu::philox4x32_10({0, 0, 0, 0}, {0, 0}),
            (W{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
  EXPECT_EQ(cpu::philox4x32_10({~0u, ~0u, ~0u, ~0u}, {~0u, ~0u}),
            (W{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
  EXPECT_EQ(cpu::philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                               {0xa4093822u, 0x299f31d0u}),
            (W{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
}

// The tiled kernel with dropout equals the dense composition given the same mask, output and
// gradients of q, k, v, in float64: causal or not, padding that leaves rows empty, lengths on
// both sides of the default tiles (128 x 256), cross shapes, and small tiles that do not divide T.
TEST(AttentionDropout, TiledEqualsDenseWithTheSameMask) {
  struct Shape { int64_t B, H, m, n, qb, kb; };
  const std::vector<Shape> shapes = {{2, 2, 17, 17, 0, 0},   {1, 2, 300, 300, 0, 0},
                                     {3, 2, 65, 65, 16, 24}, {2, 1, 45, 45, 7, 5},
                                     {2, 2, 33, 70, 0, 0},   {1, 1, 130, 9, 32, 4}};
  double worst = 0;
  for (const auto& s : shapes) {
    for (bool causal : {false, true}) {
      if (causal && s.m != s.n) continue;
      for (bool padded : {false, true}) {
        for (double p : {0.1, 0.5}) {
          torch::manual_seed(11 + s.m + s.n);
          const auto q = torch::randn({s.B, s.H, s.m, 8}, kF64);
          const auto k = torch::randn({s.B, s.H, s.n, 8}, kF64);
          auto v = torch::randn({s.B, s.H, s.n, 5}, kF64);
          torch::Tensor padding;
          if (padded) {
            padding = torch::zeros({s.B, s.n}, torch::kBool);
            padding[0].narrow(0, 0, std::min<int64_t>(3, s.n)).fill_(true);  // causal rows 0..2 empty
            if (s.B > 1) padding[1].slice(0, 1, s.n, 3).fill_(true);
            v = v.masked_fill(padding.view({s.B, 1, s.n, 1}), 0);
          }
          const auto grad_out = torch::randn({s.B, s.H, s.m, 5}, kF64);
          const auto t = dropout_options(p, 1234567 + s.m, 3, s.qb, s.kb);
          const auto keep = detail::tiled_softmax_dropout_mask(s.B, s.H, s.m, s.n, t);
          const double scale = 1 / std::sqrt(8.0);
          const auto ours = out_and_grads(q, k, v, grad_out, [&](auto q_, auto k_, auto v_) {
            return tiled(q_, k_, v_, padding, causal, scale, t);
          });
          const auto ref = out_and_grads(q, k, v, grad_out, [&](auto q_, auto k_, auto v_) {
            return dense_with_mask(q_, k_, v_, padding, causal, scale, keep, p);
          });
          std::ostringstream label;
          label << "B=" << s.B << " H=" << s.H << " m=" << s.m << " n=" << s.n << " tiles=" << s.qb
                << "x" << s.kb << (causal ? " causal" : "") << (padded ? " padded" : "")
                << " p=" << p;
          SCOPED_TRACE(label.str());
          for (size_t i = 0; i < 4; ++i) {
            const double err = max_rel_err(ours.tensors[i], ref.tensors[i]);
            EXPECT_LE(err, kTolMatmul64) << kNames[i];
            worst = std::max(worst, err);
          }
        }
      }
    }
  }
  report("tiled dropout vs dense with the same mask fp64 out+grads", "relerr", worst);
}

// The dropout changes the output: the mask is applied (a test that would pass with no dropout
// at all if the dense composition ignored the mask is caught here).
TEST(AttentionDropout, MaskChangesTheOutput) {
  torch::manual_seed(3);
  const auto q = torch::randn({1, 2, 40, 8}, kF64), k = torch::randn({1, 2, 40, 8}, kF64);
  const auto v = torch::randn({1, 2, 40, 8}, kF64);
  const auto plain = tiled(q, k, v, {}, true, 0.3, {});
  const auto dropped = tiled(q, k, v, {}, true, 0.3, dropout_options(0.2, 99));
  EXPECT_GT((plain - dropped).abs().max().item<double>(), 1e-3);
  // Another seed or another offset: another mask.
  const auto keep = detail::tiled_softmax_dropout_mask(1, 2, 40, 40, dropout_options(0.2, 99));
  EXPECT_FALSE(keep.equal(
      detail::tiled_softmax_dropout_mask(1, 2, 40, 40, dropout_options(0.2, 100))));
  EXPECT_FALSE(keep.equal(
      detail::tiled_softmax_dropout_mask(1, 2, 40, 40, dropout_options(0.2, 99, 1))));
}

// Gradients of q, k, v by central differences in float64, the mask fixed by the seed:
// d<out, G>/dx_e ~ (f(x + h e) - f(x - h e)) / 2h, every element, with tiles that cut the rows.
TEST(AttentionDropout, GradientsMatchCentralDifferences) {
  for (bool causal : {false, true}) {
    torch::manual_seed(21);
    const int64_t B = 2, H = 1, T = 11, d = 3;
    std::vector<torch::Tensor> x = {torch::randn({B, H, T, d}, kF64),
                                    torch::randn({B, H, T, d}, kF64),
                                    torch::randn({B, H, T, d}, kF64)};
    const auto G = torch::randn({B, H, T, d}, kF64);
    const auto t = dropout_options(0.3, 777, 0, 4, 3);
    auto loss = [&](const std::vector<torch::Tensor>& in) {
      return (tiled(in[0], in[1], in[2], {}, causal, 0.7, t) * G).sum().item<double>();
    };
    const auto analytic = out_and_grads(x[0], x[1], x[2], G, [&](auto q_, auto k_, auto v_) {
      return tiled(q_, k_, v_, {}, causal, 0.7, t);
    });
    const double h = 1e-6;
    double worst = 0;
    for (size_t which = 0; which < 3; ++which) {
      auto numeric = torch::zeros_like(x[which]);
      auto flat = x[which].view({-1});
      auto num_flat = numeric.view({-1});
      for (int64_t e = 0; e < flat.numel(); ++e) {
        const double saved = flat[e].item<double>();
        flat[e] = saved + h;
        const double up = loss(x);
        flat[e] = saved - h;
        const double down = loss(x);
        flat[e] = saved;
        num_flat[e] = (up - down) / (2 * h);
      }
      const double err = max_rel_err(analytic.tensors[which + 1], numeric);
      EXPECT_LE(err, kTolGrad) << kNames[which + 1] << (causal ? " causal" : "");
      worst = std::max(worst, err);
    }
    report(std::string("tiled dropout central differences fp64") + (causal ? " causal" : ""),
           "relerr", worst);
  }
}

// Pearson correlation of two equally shaped bool tensors.
double correlation(const torch::Tensor& a, const torch::Tensor& b) {
  const auto x = a.to(torch::kFloat64).flatten(), y = b.to(torch::kFloat64).flatten();
  const auto xc = x - x.mean(), yc = y - y.mean();
  return ((xc * yc).sum() / (xc.pow(2).sum() * yc.pow(2).sum()).sqrt()).item<double>();
}

// Keep rate within 4 standard errors of 1 - p over ~4M entries, for several p; correlations
// between horizontal neighbours (inside and across Philox's 4-word groups), vertical neighbours,
// neighbouring heads, two offsets and two seeds within 4 standard errors (1 / sqrt(N)) of 0.
TEST(AttentionDropout, KeepRateAndIndependence) {
  const int64_t B = 2, H = 4, T = 512;
  for (double p : {0.1, 0.25, 0.5, 0.9}) {
    const auto keep = detail::tiled_softmax_dropout_mask(B, H, T, T, dropout_options(p, 42));
    const double N = static_cast<double>(keep.numel());
    const double rate = keep.to(torch::kFloat64).mean().item<double>();
    const double se = std::sqrt(p * (1 - p) / N);
    EXPECT_LE(std::abs(rate - (1 - p)), 4 * se) << "p=" << p << " rate=" << rate;
    report("dropout keep rate p=" + std::to_string(p), "(rate-(1-p))/se", (rate - (1 - p)) / se);

    const double bound = 4 / std::sqrt(N / 2);  // the pairs below use about half the entries
    const auto other_offset =
        detail::tiled_softmax_dropout_mask(B, H, T, T, dropout_options(p, 42, 1));
    const auto other_seed = detail::tiled_softmax_dropout_mask(B, H, T, T, dropout_options(p, 43));
    const std::vector<std::pair<std::string, double>> pairs = {
        {"key j, j+1", correlation(keep.narrow(3, 0, T - 1), keep.narrow(3, 1, T - 1))},
        {"key j, j+4", correlation(keep.narrow(3, 0, T - 4), keep.narrow(3, 4, T - 4))},
        {"query i, i+1", correlation(keep.narrow(2, 0, T - 1), keep.narrow(2, 1, T - 1))},
        {"head h, h+1", correlation(keep.narrow(1, 0, H - 1), keep.narrow(1, 1, H - 1))},
        {"batch 0, 1", correlation(keep[0], keep[1])},
        {"offset 0, 1", correlation(keep, other_offset)},
        {"seed 42, 43", correlation(keep, other_seed)}};
    for (const auto& [name, r] : pairs) {
      EXPECT_LE(std::abs(r), bound) << "p=" << p << " " << name;
    }
  }
  // Over many seeds, one entry's keep rate (not only the mean over entries of one seed).
  int64_t kept = 0;
  const int draws = 20000;
  for (int s = 0; s < draws; ++s) {
    kept += detail::tiled_softmax_dropout_mask(1, 1, 1, 3, dropout_options(0.1, 1000 + s))[0][0][0][2]
                .item<bool>();
  }
  EXPECT_LE(std::abs(kept / double(draws) - 0.9), 4 * std::sqrt(0.09 / draws));
}

// The mask depends on (seed, offset, b, h, i, j) only: outputs and gradients agree across tile
// sizes (to float64 rounding: the online sums run in another order) and are bit-identical across
// thread counts.
TEST(AttentionDropout, InvariantToTilesAndThreads) {
  torch::manual_seed(8);
  const int64_t B = 2, H = 3, T = 300;
  const auto q = torch::randn({B, H, T, 16}, kF64), k = torch::randn({B, H, T, 16}, kF64);
  const auto v = torch::randn({B, H, T, 16}, kF64), G = torch::randn({B, H, T, 16}, kF64);
  for (bool causal : {false, true}) {
    auto run = [&](int64_t qb, int64_t kb) {
      const auto t = dropout_options(0.1, 2024, 0, qb, kb);
      return out_and_grads(q, k, v, G, [&](auto q_, auto k_, auto v_) {
        return tiled(q_, k_, v_, {}, causal, 0.25, t);
      });
    };
    const int threads = at::get_num_threads();
    at::set_num_threads(1);
    const auto one_thread = run(0, 0);
    at::set_num_threads(std::max(2, threads));
    const auto many_threads = run(0, 0);
    at::set_num_threads(threads);
    for (size_t i = 0; i < 4; ++i) {
      EXPECT_TRUE(one_thread.tensors[i].equal(many_threads.tensors[i]))
          << kNames[i] << (causal ? " causal" : "");
    }
    double worst = 0;
    for (const auto& [qb, kb] : std::vector<std::pair<int64_t, int64_t>>{
             {1, 1}, {7, 5}, {64, 33}, {300, 300}, {512, 1024}}) {
      const auto other = run(qb, kb);
      for (size_t i = 0; i < 4; ++i) {
        const double err = max_rel_err(other.tensors[i], one_thread.tensors[i]);
        EXPECT_LE(err, kTolMatmul64) << kNames[i] << " tiles " << qb << "x" << kb;
        worst = std::max(worst, err);
      }
    }
    report(std::string("tiled dropout across tile sizes fp64") + (causal ? " causal" : ""),
           "relerr", worst);
  }
}

// softmax_attention in training with dropout takes the tiled path on CPU float32/float64: its
// output is the tiled kernel's with the seed drawn from torch's generator after manual_seed, so
// manual_seed reproduces it. Evaluation ignores dropout. float16 keeps the dense path.
TEST(AttentionDropout, FunctionalPathDrawsItsSeedFromTorch) {
  const auto q = torch::randn({2, 2, 50, 8}, kF64), k = torch::randn({2, 2, 50, 8}, kF64);
  const auto v = torch::randn({2, 2, 50, 8}, kF64);
  const auto opt = make_options(true, {}).dropout(0.1).training(true);
  torch::manual_seed(5);
  const auto first = F::softmax_attention(q, k, v, opt);
  torch::manual_seed(5);
  const auto again = F::softmax_attention(q, k, v, opt);
  EXPECT_TRUE(first.equal(again));
  torch::manual_seed(5);
  const uint64_t seed = detail::draw_dropout_seed();
  const auto expected = tiled(q, k, v, {}, true, 1 / std::sqrt(8.0), dropout_options(0.1, seed));
  EXPECT_LE(max_rel_err(first, expected), kTolMatmul64);
  // The next call draws a new seed: another mask.
  EXPECT_FALSE(F::softmax_attention(q, k, v, opt).equal(first));
  const auto eval = F::softmax_attention(q, k, v, make_options(true, {}).dropout(0.1));
  EXPECT_LE(max_rel_err(eval, tiled(q, k, v, {}, true, 1 / std::sqrt(8.0), {})), kTolMatmul64);

  const auto half = F::softmax_attention(q.to(torch::kHalf), k.to(torch::kHalf),
                                         v.to(torch::kHalf), opt);
  EXPECT_EQ(half.scalar_type(), torch::kHalf);
  EXPECT_TRUE(torch::isfinite(half).all().item<bool>());
}

}  // namespace
}  // namespace kvq_test
