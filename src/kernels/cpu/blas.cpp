#include "kernels/cpu/blas.h"

#include <cmath>
#include <vector>

#ifdef KVQ_HAVE_BLAS
extern "C" {
// Fortran BLAS (column-major), as exported by every BLAS implementation.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
}
#endif

#ifdef KVQ_HAVE_LAPACK
extern "C" {
// Fortran BLAS level 3 and LAPACK (column-major).
void strsm_(const char* side, const char* uplo, const char* transa, const char* diag, const int* m,
            const int* n, const float* alpha, const float* a, const int* lda, float* b,
            const int* ldb);
void dtrsm_(const char* side, const char* uplo, const char* transa, const char* diag, const int* m,
            const int* n, const double* alpha, const double* a, const int* lda, double* b,
            const int* ldb);
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info);
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info);
void spotri_(const char* uplo, const int* n, float* a, const int* lda, int* info);
void dpotri_(const char* uplo, const int* n, double* a, const int* lda, int* info);
}
#endif

namespace kvq {
namespace kernels {
namespace cpu {
namespace {

#ifdef KVQ_HAVE_BLAS
void fortran_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                  const float* alpha, const float* a, const int* lda, const float* b,
                  const int* ldb, const float* beta, float* c, const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void fortran_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                  const double* alpha, const double* a, const int* lda, const double* b,
                  const int* ldb, const double* beta, double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
#endif

template <typename T>
void gemm_impl(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
               int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
#ifdef KVQ_HAVE_BLAS
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  fortran_gemm(&ta, &tb, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
#else
  for (int64_t i = 0; i < M; ++i) {
    T* c = C + i * ldc;
    for (int64_t j = 0; j < N; ++j) c[j] = beta == T(0) ? T(0) : beta * c[j];
    for (int64_t p = 0; p < K; ++p) {
      const T a = alpha * (trans_a ? A[p * lda + i] : A[i * lda + p]);
      if (trans_b) {
        for (int64_t j = 0; j < N; ++j) c[j] += a * B[j * ldb + p];
      } else {
        const T* b = B + p * ldb;
        for (int64_t j = 0; j < N; ++j) c[j] += a * b[j];
      }
    }
  }
#endif
}

#ifdef KVQ_HAVE_LAPACK
void fortran_trsm(const char* s, const char* u, const char* t, const int* m, const int* n,
                  const float* alpha, const float* a, const int* lda, float* b, const int* ldb) {
  strsm_(s, u, t, "N", m, n, alpha, a, lda, b, ldb);
}
void fortran_trsm(const char* s, const char* u, const char* t, const int* m, const int* n,
                  const double* alpha, const double* a, const int* lda, double* b,
                  const int* ldb) {
  dtrsm_(s, u, t, "N", m, n, alpha, a, lda, b, ldb);
}
void fortran_potrf(const int* n, float* a, const int* lda, int* info) {
  spotrf_("U", n, a, lda, info);
}
void fortran_potrf(const int* n, double* a, const int* lda, int* info) {
  dpotrf_("U", n, a, lda, info);
}
void fortran_potri(const int* n, float* a, const int* lda, int* info) {
  spotri_("U", n, a, lda, info);
}
void fortran_potri(const int* n, double* a, const int* lda, int* info) {
  dpotri_("U", n, a, lda, info);
}
#endif

template <typename T>
void trsm_impl(bool left, bool lower, bool trans_a, int64_t M, int64_t N, T alpha, const T* A,
               int64_t lda, T* B, int64_t ldb) {
  if (M == 0 || N == 0) return;
#ifdef KVQ_HAVE_LAPACK
  // Row-major op(A) X = B is column-major X^T op(A)^T = B^T, with A's memory read as A^T: the
  // side and the triangle swap, the transposition stays.
  const char side = left ? 'R' : 'L', uplo = lower ? 'U' : 'L', ta = trans_a ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M);
  const int la = static_cast<int>(lda), lb = static_cast<int>(ldb);
  fortran_trsm(&side, &uplo, &ta, &m, &n, &alpha, A, &la, B, &lb);
#else
  auto a = [&](int64_t i, int64_t j) { return trans_a ? A[j * lda + i] : A[i * lda + j]; };
  const bool op_lower = lower != trans_a;
  for (int64_t r = 0; r < M; ++r) {
    for (int64_t c = 0; c < N; ++c) B[r * ldb + c] *= alpha;
  }
  if (left) {  // rows of X in dependency order
    for (int64_t s = 0; s < M; ++s) {
      const int64_t i = op_lower ? s : M - 1 - s;
      T* x = B + i * ldb;
      for (int64_t j = 0; j < M; ++j) {
        if (j == i || (op_lower ? j > i : j < i)) continue;
        for (int64_t c = 0; c < N; ++c) x[c] -= a(i, j) * B[j * ldb + c];
      }
      for (int64_t c = 0; c < N; ++c) x[c] /= a(i, i);
    }
  } else {  // columns of X in dependency order, row by row
    for (int64_t r = 0; r < M; ++r) {
      T* x = B + r * ldb;
      for (int64_t s = 0; s < N; ++s) {
        const int64_t j = op_lower ? N - 1 - s : s;
        for (int64_t i = 0; i < N; ++i) {
          if (i != j && (op_lower ? i > j : i < j)) x[j] -= x[i] * a(i, j);
        }
        x[j] /= a(j, j);
      }
    }
  }
#endif
}

template <typename T>
bool cholesky_impl(int64_t n, T* A, int64_t lda) {
  if (n == 0) return true;
#ifdef KVQ_HAVE_LAPACK
  // The row-major lower triangle is the column-major upper one.
  const int nn = static_cast<int>(n), la = static_cast<int>(lda);
  int info = 0;
  fortran_potrf(&nn, A, &la, &info);
  return info == 0;
#else
  for (int64_t j = 0; j < n; ++j) {
    T diag = A[j * lda + j];
    for (int64_t p = 0; p < j; ++p) diag -= A[j * lda + p] * A[j * lda + p];
    if (!(diag > T(0))) return false;
    diag = std::sqrt(diag);
    A[j * lda + j] = diag;
    for (int64_t i = j + 1; i < n; ++i) {
      T x = A[i * lda + j];
      for (int64_t p = 0; p < j; ++p) x -= A[i * lda + p] * A[j * lda + p];
      A[i * lda + j] = x / diag;
    }
  }
  return true;
#endif
}

template <typename T>
void cholesky_inverse_impl(int64_t n, T* A, int64_t lda) {
  if (n == 0) return;
#ifdef KVQ_HAVE_LAPACK
  const int nn = static_cast<int>(n), la = static_cast<int>(lda);
  int info = 0;
  fortran_potri(&nn, A, &la, &info);  // info != 0 only for a zero diagonal, excluded by potrf
#else
  // L^{-1} column by column, then A^{-1} = L^{-T} L^{-1} (lower triangle).
  std::vector<T> inv(n * n, T(0));
  for (int64_t c = 0; c < n; ++c) {
    for (int64_t i = c; i < n; ++i) {
      T x = i == c ? T(1) : T(0);
      for (int64_t p = c; p < i; ++p) x -= A[i * lda + p] * inv[p * n + c];
      inv[i * n + c] = x / A[i * lda + i];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      T x = 0;
      for (int64_t p = i; p < n; ++p) x += inv[p * n + i] * inv[p * n + j];
      A[i * lda + j] = x;
    }
  }
#endif
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i + 1; j < n; ++j) A[i * lda + j] = A[j * lda + i];
  }
}

}  // namespace

void trsm(bool left, bool lower, bool trans_a, int64_t M, int64_t N, float alpha, const float* A,
          int64_t lda, float* B, int64_t ldb) {
  trsm_impl(left, lower, trans_a, M, N, alpha, A, lda, B, ldb);
}
void trsm(bool left, bool lower, bool trans_a, int64_t M, int64_t N, double alpha,
          const double* A, int64_t lda, double* B, int64_t ldb) {
  trsm_impl(left, lower, trans_a, M, N, alpha, A, lda, B, ldb);
}
bool cholesky(int64_t n, float* A, int64_t lda) { return cholesky_impl(n, A, lda); }
bool cholesky(int64_t n, double* A, int64_t lda) { return cholesky_impl(n, A, lda); }
void cholesky_inverse(int64_t n, float* A, int64_t lda) { cholesky_inverse_impl(n, A, lda); }
void cholesky_inverse(int64_t n, double* A, int64_t lda) { cholesky_inverse_impl(n, A, lda); }

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_impl(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
          const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
          int64_t ldc) {
  gemm_impl(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
