#pragma once
// Triangular masks of the chunked kernels' square tiles (tril / triu with the diagonal kept).
#include <algorithm>
#include <cstdint>

namespace kvq {
namespace kernels {
namespace cpu {

// Zeroes the strict upper triangle of the rows x rows block A with row stride ld: tril.
template <typename T>
void keep_lower(T* A, int64_t rows, int64_t ld) {
  for (int64_t i = 0; i < rows; ++i) std::fill(A + i * ld + i + 1, A + i * ld + rows, T(0));
}

// Zeroes the strict lower triangle of the rows x rows block A with row stride ld: triu.
template <typename T>
void keep_upper(T* A, int64_t rows, int64_t ld) {
  for (int64_t i = 0; i < rows; ++i) std::fill(A + i * ld, A + i * ld + i, T(0));
}

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
