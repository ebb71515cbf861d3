#include "kvq/train/flops.h"

#include <algorithm>
#include <chrono>
#include <limits>

#include "kvq/registry.h"

namespace kvq {
namespace train {

double linear_flops_per_position(const torch::nn::Module& model) {
  double flops = 0;
  for (const auto& module : model.modules(/*include_self=*/true)) {
    if (const auto* linear = module->as<torch::nn::Linear>()) {
      flops += 2.0 * static_cast<double>(linear->options.in_features()) *
               static_cast<double>(linear->options.out_features());
    }
  }
  return flops;
}

double attention_flops(const std::string& mechanism, int64_t heads, int64_t length,
                       int64_t head_dim, bool causal, int64_t chunk) {
  const auto& info = find_mechanism(mechanism);
  return info.forward_flops(ProblemSize{1, heads, length, head_dim, head_dim}, causal,
                            chunk > 0 ? chunk : head_dim);
}

double measure_gemm_flops(torch::ScalarType dtype, const torch::Device& device, int64_t size,
                          int repeats) {
  TORCH_CHECK(size >= 1 && repeats >= 1, "measure_gemm_flops: size and repeats must be >= 1, got ",
              size, " and ", repeats);
  const auto options = torch::TensorOptions().dtype(dtype).device(device);
  const auto a = torch::full({size, size}, 0.5, options);
  const auto b = torch::full({size, size}, 0.25, options);
  const auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize(device.index());
  };
  torch::mm(a, b);
  sync();
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    torch::mm(a, b);
    sync();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return 2.0 * static_cast<double>(size) * static_cast<double>(size) * static_cast<double>(size) /
         best;
}

}  // namespace train
}  // namespace kvq
