#pragma once
// Row-major matrix products for the CPU kernels, on the BLAS LibTorch itself uses (OpenBLAS on
// Debian, through libblas.so.3). Called from inside at::parallel_for regions, where an OpenMP BLAS
// runs single-threaded. Without a BLAS at build time (KVQ_HAVE_BLAS undefined) a plain blocked
// loop stands in: correct, slower.
#include <cstdint>

namespace kvq {
namespace kernels {
namespace cpu {

// C (M x N) = alpha * op(A) op(B) + beta * C, all row-major with leading dimensions lda, ldb, ldc;
// op(X) = X^T when trans_X. op(A) is M x K, op(B) is K x N.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
          const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
          int64_t ldc);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
