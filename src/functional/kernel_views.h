#pragma once
// Unpacking tensors for the kernel layer (src/kernels/cpu/): the bindings' shared helpers.
#include <torch/torch.h>

#include "kernels/cpu/heads_view.h"

namespace kvq {
namespace functional {
namespace detail {

// x itself when its last dimension is contiguous (what HeadsView needs), else a contiguous copy.
inline torch::Tensor rows_contiguous(const torch::Tensor& x) {
  return x.stride(-1) == 1 ? x : x.contiguous();
}

// A (B, H, rows, width) tensor with a contiguous last dimension as a kernel view; T is the
// element type, const or not.
template <typename T>
kernels::cpu::HeadsView<T> heads_view(const torch::Tensor& x) {
  using Element = std::remove_const_t<T>;
  return {const_cast<Element*>(x.data_ptr<Element>()), x.stride(0), x.stride(1), x.stride(2)};
}

// Whether the CPU kernels take tensors: CPU float32/float64, all of one dtype.
inline bool cpu_kernel_dtypes(std::initializer_list<torch::Tensor> tensors) {
  const auto dtype = tensors.begin()->scalar_type();
  for (const auto& t : tensors) {
    if (!t.device().is_cpu() || t.scalar_type() != dtype) return false;
  }
  return dtype == torch::kFloat32 || dtype == torch::kFloat64;
}

}  // namespace detail
}  // namespace functional
}  // namespace kvq
