#pragma once
// `kvq bench`: forward+backward time of every registered mechanism against its naive LibTorch
// form (the registry row's, kvq/functional/naive_forms.h), after checking that both agree, and
// beside PyTorch's scaled_dot_product_attention on the same inputs.
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace kvq {
namespace app {

struct BenchOptions {
  /// Batch size B. Default: 4.
  int64_t batch = 4;
  /// Heads H. Default: 8.
  int64_t heads = 8;
  /// Query/key width d. Default: 64.
  int64_t dim = 64;
  /// Value width dv; 0 = dim. Default: 0.
  int64_t value_dim = 0;
  /// Sequence lengths T. Default: 256, 512, 1024, 2048, 4096.
  std::vector<int64_t> lengths = {256, 512, 1024, 2048, 4096};
  /// Mechanism names; empty = every registered mechanism. Default: empty.
  std::vector<std::string> mechanisms;
  /// "both", "on" or "off". Default: "both".
  std::string causal = "both";
  /// "float32" or "float64". Default: "float32".
  std::string dtype = "float32";
  /// Each timing repeats forward+backward until this many seconds have passed (at least once) and
  /// reports the minimum. Default: 0.3.
  double min_time = 0.3;
  /// Naive forms whose estimated peak memory exceeds this are not timed (they are checked on one
  /// batch element and head instead). Default: 6 GiB.
  double max_naive_gib = 6.0;
  /// kernel-intention (O(T^3)) runs only up to this length. Default: 1024.
  int64_t kernel_max_len = 1024;
  /// Normalised RMSE above which ours and naive disagree; 0 = 1e-4 (float32) or 1e-9 (float64).
  /// Default: 0.
  double tolerance = 0.0;
  /// Seed of the random inputs. Default: 0.
  uint64_t seed = 0;
  /// Attention dropout in training mode in the timings of ours (mechanisms with a softmax); the
  /// check against the naive form runs without it. Default: 0.
  double dropout = 0.0;
  /// Also time PyTorch's own attention, at::scaled_dot_product_attention, on the same q, k, v
  /// (causal or not) beside every row: what a user would otherwise call. Default: true.
  bool sdpa = true;
  /// Write the table and machine information as JSON to this file; empty = none. Default: empty.
  std::string json_path;
  /// Where the inputs live and everything runs: the CPU kernels on the CPU, the composite ATen
  /// forms (and, for softmax, PyTorch's fused attention) on a GPU. Times on a GPU are taken after
  /// a device synchronisation. Default: CPU.
  torch::Device device = torch::kCPU;
};

// Runs the benchmark: progress on stderr, the table on stdout, JSON if asked.
// Returns false when a mechanism disagreed with its naive form or failed to run.
bool run_bench(const BenchOptions& options);

// Registers the `bench` subcommand on `app`. Its callback throws CLI::RuntimeError(2) when
// run_bench fails, after printing the reason.
void add_bench_command(CLI::App& app);

}  // namespace app
}  // namespace kvq
