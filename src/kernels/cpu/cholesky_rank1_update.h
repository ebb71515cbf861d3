#pragma once
// The rank-1 Cholesky update on the CPU (kernel layer: parameter structs, never tensors; the
// binding is src/functional/least_squares/cholesky_update.cpp). Decoding with causal intention keeps the lower
// Cholesky factor L of A_t = alpha I + sum_{s<=t} k_s k_s^T and moves it to A_{t+1} = A_t + x x^T
// in O(d^2) per token (docs/mechanisms.md, "Incremental decoding").
//
// The classic LINPACK update (dchud; Golub & Van Loan, "Matrix Computations", 6.5.4): find the
// lower factor L' of L L^T + x x^T. [L' | 0] = [L | x] G with G a product of d Givens rotations,
// the k-th one zeroing x_k against the diagonal L_kk:
//   for k = 0 .. d-1:
//     r = sqrt(L_kk^2 + x_k^2),  c = L_kk / r,  s = x_k / r,  L_kk = r
//     for i = k+1 .. d-1:  (L_ik, x_i) = (c L_ik + s x_i,  c x_i - s L_ik)
// G is orthogonal, so L' L'^T = [L | x] [L | x]^T = L L^T + x x^T, and the update is backward
// stable. Positive definite by construction: every new diagonal r = sqrt(L_kk^2 + x_k^2) >= L_kk
// > 0, so the factor of A_t (alpha > 0) never loses definiteness, however many keys are added.
// (The recursive-least-squares update of A^{-1} by Sherman-Morrison instead subtracts, drifts,
// and can become indefinite.)
#include <cstdint>

namespace kvq {
namespace kernels {
namespace cpu {

template <typename T>
struct CholeskyRank1Params {
  int64_t count = 0;  // independent updates (batch x heads)
  int64_t d = 0;      // matrix order
  // Update u: the lower factor at factor + u * factor_stride, element (i, k) at [i * ld + k]
  // (only the lower triangle is read and written); x_u at x + u * x_stride, contiguous.
  T* factor = nullptr;
  int64_t factor_stride = 0, ld = 0;
  const T* x = nullptr;
  int64_t x_stride = 0;
};

// In place: factor_u becomes the lower Cholesky factor of factor_u factor_u^T + x_u x_u^T, for
// every u, in parallel over u (at::parallel_for). Every diagonal entry must be > 0.
template <typename T>
void cholesky_rank1_update(const CholeskyRank1Params<T>& params);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
