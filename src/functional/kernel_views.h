#pragma once
// Unpacking tensors for the kernel layer (src/kernels/cpu/): the bindings' shared helpers.
#include <torch/torch.h>

#include <algorithm>
#include <limits>

#include "kernels/cpu/heads_view.h"
#include "kvq/functional/buffer_cache.h"

namespace kvq {
namespace functional {
namespace detail {

// x itself when its rows are what HeadsView and the BLAS tile products need, else a contiguous
// copy: a contiguous last dimension, and a row stride that BLAS takes as a leading dimension
// (>= the row width, and within its 32-bit integers). Batch and head strides may be anything,
// 0 included (an input expanded over B or H is read in place); an input expanded over the rows
// (row stride 0), or a gradient that arrives that way (from out.sum(2)), is copied.
inline torch::Tensor rows_contiguous(const torch::Tensor& x) {
  const int64_t width = std::max<int64_t>(1, x.size(-1)), row_stride = x.stride(-2);
  const bool blas_rows = row_stride >= width && row_stride <= std::numeric_limits<int>::max();
  // clone, not contiguous(): a tensor with one row counts as contiguous whatever its row stride.
  return x.stride(-1) == 1 && blas_rows ? x : x.clone(at::MemoryFormat::Contiguous);
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
