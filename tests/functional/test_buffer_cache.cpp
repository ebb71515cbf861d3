// The CPU kernels' buffer cache (kvq/functional/buffer_cache.h): freed buffers come back, the
// limit holds, the tensors are ordinary ones, and no kernel reads memory it did not write.
#include "kvq/functional/buffer_cache.h"
#include "kvq/functional/mesa.h"

#include "test_utils.h"

namespace kvq_test {
namespace {

namespace F = kvq::functional;
constexpr int64_t kMiB = int64_t(1) << 20;

// Restores the limit and empties the cache around a test.
struct CacheScope {
  int64_t limit = F::buffer_cache_limit();
  explicit CacheScope(int64_t test_limit) {
    F::empty_buffer_cache();
    F::set_buffer_cache_limit(test_limit);
  }
  ~CacheScope() {
    F::detail::set_buffer_cache_poison(false);
    F::set_buffer_cache_limit(limit);
    F::empty_buffer_cache();
  }
};

torch::Tensor floats(int64_t n) {
  return F::detail::cached_empty({n}, torch::TensorOptions().dtype(torch::kFloat32));
}

TEST(BufferCache, AFreedBufferIsHandedOutAgain) {
  CacheScope scope(64 * kMiB);
  auto t = floats(kMiB);  // 4 MiB
  const void* ptr = t.data_ptr();
  t = torch::Tensor();
  EXPECT_EQ(F::buffer_cache_bytes(), 4 * kMiB);
  auto again = floats(kMiB - 1000);  // a little smaller fits the same buffer
  EXPECT_EQ(again.data_ptr(), ptr);
  EXPECT_EQ(F::buffer_cache_bytes(), 0);
  auto larger = floats(2 * kMiB);  // needs a new one
  EXPECT_NE(larger.data_ptr(), ptr);
}

TEST(BufferCache, SmallBuffersAndBuffersBeyondTheLimitGoBackToTheSystem) {
  CacheScope scope(6 * kMiB);
  floats(1000);  // 4 KB: malloc's business
  EXPECT_EQ(F::buffer_cache_bytes(), 0);
  auto a = floats(kMiB), b = floats(kMiB);  // 4 MiB each; only one fits under 6 MiB
  a = torch::Tensor();
  b = torch::Tensor();
  EXPECT_EQ(F::buffer_cache_bytes(), 4 * kMiB);
  F::empty_buffer_cache();
  EXPECT_EQ(F::buffer_cache_bytes(), 0);
  F::set_buffer_cache_limit(0);  // off
  floats(kMiB);
  EXPECT_EQ(F::buffer_cache_bytes(), 0);
  EXPECT_THROW(F::set_buffer_cache_limit(-1), c10::Error);
}

TEST(BufferCache, TensorsAreOrdinaryResizableTensors) {
  CacheScope scope(64 * kMiB);
  auto t = floats(kMiB);
  t.copy_(torch::arange(kMiB, torch::kFloat32));
  t.resize_({3 * kMiB});  // through the cache again; the values move along
  EXPECT_TRUE(torch::equal(t.slice(0, 0, kMiB), torch::arange(kMiB, torch::kFloat32)));
  EXPECT_EQ(F::buffer_cache_bytes(), 4 * kMiB);  // the old buffer came back
  auto leaf = t.view({-1, 1024}).requires_grad_();
  leaf.sum().backward();
  EXPECT_EQ(leaf.grad().sum().item<double>(), double(3 * kMiB));
}

// Every mechanism, causal or not, padded or not, run three times in float64 with inputs of
// 1.2 MiB: first from fresh memory, then twice from buffers of the cache filled with NaN. The
// outputs and gradients are bit for bit the first run's.
TEST(BufferCache, KernelsWriteEverythingTheyRead) {
  CacheScope scope(int64_t(1) << 30);
  std::vector<std::string> composed;  // the cases LibTorch's ops compute, not a kvq kernel
  for (Mech mech : all_mechs()) {
    for (bool causal : {false, true}) {
      for (MaskKind mask : {MaskKind::None, MaskKind::Scattered}) {
        SCOPED_TRACE(mech_name(mech) + (causal ? " causal" : "") +
                     (mask == MaskKind::None ? "" : " padded"));
        Case c;
        c.B = 2, c.H = 4, c.m = c.n = 384, c.d = c.dv = 48, c.causal = causal, c.chunk = 64;
        c.mask = mask;
        const auto in = make_inputs(c, 7);
        const auto grad_out = torch::randn({c.B, c.H, c.m, c.dv}, torch::kFloat64);
        auto run = [&] {
          Inputs x = in;
          x.q = in.q.clone().requires_grad_();
          x.k = in.k.clone().requires_grad_();
          x.v = in.v.clone().requires_grad_();
          auto out = run_impl(mech, x, make_options(causal, in.mask, c.chunk));
          out.backward(grad_out);
          std::vector<torch::Tensor> results{out.detach().clone()};
          for (const auto& t : {x.q, x.k, x.v}) {
            results.push_back(t.grad().defined() ? t.grad().clone() : torch::zeros({1}));
          }
          return results;
        };
        F::detail::set_buffer_cache_poison(false);
        F::empty_buffer_cache();
        const auto fresh = run();
        if (F::buffer_cache_bytes() == 0) {  // no kernel of kvq's ran: nothing to check
          composed.push_back(mech_name(mech) + (causal ? " causal" : ""));
          continue;
        }
        F::detail::set_buffer_cache_poison(true);
        for (int repeat = 0; repeat < 2; ++repeat) {
          const auto reused = run();
          for (size_t i = 0; i < fresh.size(); ++i) {
            EXPECT_TRUE(torch::equal(reused[i], fresh[i])) << "result " << i;
          }
        }
      }
    }
  }
  // kernel-intention is LibTorch's products and solves, non-causal linear-identity two LibTorch
  // products: every other case runs a kernel of kvq's, padded or not.
  EXPECT_EQ(composed,
            (std::vector<std::string>{"linear-identity", "linear-identity", "kernel-intention",
                                      "kernel-intention", "kernel-intention causal",
                                      "kernel-intention causal"}));
}

// The same for Mesa (not a registry row): three runs, the last two from NaN-filled buffers.
TEST(BufferCache, MesaWritesEverythingItReads) {
  CacheScope scope(int64_t(1) << 30);
  torch::manual_seed(8);
  const auto o = torch::TensorOptions().dtype(torch::kFloat64);
  const int64_t B = 2, H = 4, T = 384, d = 48;
  const auto q = torch::randn({B, H, T, d}, o), k = torch::randn({B, H, T, d}, o),
             v = torch::randn({B, H, T, d}, o), grad_out = torch::randn({B, H, T, d}, o);
  const auto g = -torch::rand({B, H, T}, o), beta = torch::rand({B, H, T}, o);
  const auto lambda = torch::full({H}, 0.5, o);
  auto run = [&] {
    std::vector<torch::Tensor> x{q.clone().requires_grad_(), k.clone().requires_grad_(),
                                 v.clone().requires_grad_(), g.clone().requires_grad_(),
                                 beta.clone().requires_grad_()};
    auto out = F::mesa(x[0], x[1], x[2], x[3], x[4], lambda);
    out.backward(grad_out);
    std::vector<torch::Tensor> results{out.detach().clone()};
    for (const auto& t : x) results.push_back(t.grad().clone());
    return results;
  };
  const auto fresh = run();
  ASSERT_GT(F::buffer_cache_bytes(), 0);
  F::detail::set_buffer_cache_poison(true);
  for (int repeat = 0; repeat < 2; ++repeat) {
    const auto reused = run();
    for (size_t i = 0; i < fresh.size(); ++i) {
      EXPECT_TRUE(torch::equal(reused[i], fresh[i])) << "result " << i;
    }
  }
}

}  // namespace
}  // namespace kvq_test
