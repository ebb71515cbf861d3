#pragma once
// Row-major dense linear algebra for the CPU kernels, on the BLAS and LAPACK LibTorch itself uses
// (OpenBLAS on Debian, through libblas.so.3 and liblapack.so.3). Called from inside
// at::parallel_for regions, where an OpenMP BLAS runs single-threaded. Without a BLAS (LAPACK) at
// build time, KVQ_HAVE_BLAS (KVQ_HAVE_LAPACK) undefined, plain loops stand in: correct, slower.
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

// Solves op(A) X = alpha B in place (B := X) for the triangular n x n matrix A (lower when lower),
// B row-major M x N; A is M x M when left, N x N otherwise (then X op(A) = alpha B).
void trsm(bool left, bool lower, bool trans_a, int64_t M, int64_t N, float alpha, const float* A,
          int64_t lda, float* B, int64_t ldb);
void trsm(bool left, bool lower, bool trans_a, int64_t M, int64_t N, double alpha,
          const double* A, int64_t lda, double* B, int64_t ldb);

// Overwrites the lower triangle of the symmetric n x n matrix A with its Cholesky factor L
// (A = L L^T); the strict upper triangle is left as it was. Returns false when A is not
// numerically positive definite (LAPACK potrf's info > 0).
bool cholesky(int64_t n, float* A, int64_t lda);
bool cholesky(int64_t n, double* A, int64_t lda);

// Given the Cholesky factor L in the lower triangle of A, overwrites all of A with the symmetric
// inverse (L L^T)^{-1} (LAPACK potri, then the upper triangle mirrored).
void cholesky_inverse(int64_t n, float* A, int64_t lda);
void cholesky_inverse(int64_t n, double* A, int64_t lda);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
