// Google Benchmark micro-benchmarks: forward+backward of every registered mechanism at small sizes
// (B = 2, H = 4, d = dv = 64, T in {256, 1024}, causal and not). The full comparison against the
// naive LibTorch forms, with correctness checks and FLOP rates, is `kvq bench`.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "kvq/kvq.h"

namespace {

constexpr int64_t kBatch = 2, kHeads = 4, kDim = 64, kPosChannels = 10;

// Forward of `info` on random unit-scale inputs, then autograd gradients of <out, dO> with respect
// to every input (q is k for the tied kv projections; alpha = 1; kv-pos gets the score terms of a
// random (H, 10) positional map). Items processed = tokens (B T per iteration).
void fwd_bwd(benchmark::State& state, const kvq::MechanismInfo* info) {
  const int64_t length = state.range(0);
  const bool causal = state.range(1) != 0;
  torch::manual_seed(0);
  auto leaf = [](torch::Tensor t) { return t.requires_grad_(true); };
  auto k = leaf(torch::randn({kBatch, kHeads, length, kDim}));
  auto v = leaf(torch::randn({kBatch, kHeads, length, kDim}));
  auto q = info->projection == kvq::Projection::QKV
               ? leaf(torch::randn({kBatch, kHeads, length, kDim}))
               : k;
  std::vector<torch::Tensor> inputs = {k, v};
  if (info->projection == kvq::Projection::QKV) inputs.push_back(q);
  torch::Tensor alpha, pos_weight, pos_bias;
  if (info->traits.uses_alpha) inputs.push_back(alpha = leaf(torch::ones({kHeads})));
  if (info->projection == kvq::Projection::KVPos) {
    inputs.push_back(pos_weight = leaf(torch::randn({kHeads, kPosChannels}) * 0.3));
    inputs.push_back(pos_bias = leaf(torch::randn({kHeads})));
  }
  auto grad_out = torch::randn({kBatch, kHeads, length, kDim});

  for (auto _ : state) {
    kvq::functional::AttentionFuncOptions options;
    options.causal(causal);
    if (pos_weight.defined()) {
      options = kvq::functional::with_kv_pos_terms(options, pos_weight, pos_bias, length,
                                                   k.scalar_type());
    }
    auto out = info->fn(q, k, v, alpha, options);
    auto grads = torch::autograd::grad({out}, inputs, {grad_out});
    benchmark::DoNotOptimize(grads.front().data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * kBatch * length);
}

}  // namespace

int main(int argc, char** argv) {
  // All logical cores, as `kvq bench` (LibTorch's default counts physical cores only).
  at::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  for (const auto& info : kvq::mechanisms()) {
    benchmark::RegisterBenchmark(("fwd_bwd/" + info.name).c_str(), fwd_bwd, &info)
        ->ArgsProduct({{256, 1024}, {0, 1}})
        ->ArgNames({"T", "causal"})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
