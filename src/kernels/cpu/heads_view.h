#pragma once
#include <cstdint>

namespace kvq {
namespace kernels {
namespace cpu {

// A (B, H, rows, width) operand: element (b, h, r, c) at data[b * batch_stride + h * head_stride +
// r * row_stride + c] (the last dimension is contiguous).
template <typename T>
struct HeadsView {
  T* data = nullptr;
  int64_t batch_stride = 0, head_stride = 0, row_stride = 0;

  T* row(int64_t b, int64_t h, int64_t r) const {
    // An empty operand (a zero-length sequence) has no data: offsetting its null pointer would
    // be undefined behaviour even though nothing is read (clang's UBSan reports it).
    if (data == nullptr) return nullptr;
    return data + b * batch_stride + h * head_stride + r * row_stride;
  }
};

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
