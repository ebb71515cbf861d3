#pragma once
// Building blocks of the least-squares (intention) mechanisms, without argument checks.
#include <torch/torch.h>

#include <string>

#include "kernels/cpu/least_squares_kernel.h"

namespace kvq {
namespace functional {
namespace detail {

// Lower Cholesky factor of the symmetric positive definite batch a (..., d, d). On the CPU it fails
// with a clear message, naming `op` and `what`, when a is not numerically positive definite; on
// other devices it is cholesky_or_nan (no host synchronisation).
torch::Tensor cholesky_checked(const char* op, const char* what, const torch::Tensor& a);

// Sums per-(batch, head) alpha gradients (B, H) to alpha's shape: (H) when per head, () otherwise.
torch::Tensor sum_to_alpha_shape(const torch::Tensor& per_head_grad, bool alpha_per_head);

// Raises "<op>: <matrix> is not numerically positive definite in <dtype>; <remedy>", the one
// message of every least-squares factorisation failure (the training loop recognises it).
[[noreturn]] void fail_not_positive_definite(const char* op, const std::string& matrix,
                                             torch::ScalarType dtype);

// Raises the error for a kernel's factorisation failure: the op, the matrix, where (batch, head,
// and chunk when causal), the dtype and the remedy. Does nothing when nothing failed.
void check_factorisation(const char* op, const kernels::cpu::FactorFailure& failure,
                         torch::ScalarType dtype, bool causal);

// Lower Cholesky factor of the batch a (..., d, d); the factor of a matrix that is not numerically
// positive definite is all NaN, so the failure reaches the result without a host synchronisation.
torch::Tensor cholesky_or_nan(const torch::Tensor& a);

// K^T K + alpha I: k (B, H, n, d), alpha () or (H) -> (B, H, d, d).
torch::Tensor regularised_gram(const torch::Tensor& k, const torch::Tensor& alpha);

// Non-causal intention Q (K^T K + alpha I)^{-1} K^T V by LibTorch ops with the closed-form
// backward (docs/mechanisms.md): every device and dtype without the fused CPU kernel.
torch::Tensor intention_composed(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, const torch::Tensor& alpha);

// Steps 1-4 of the chunk-parallel causal algorithm for chunks of c rows (N chunks):
//   A0 = alpha I + sum of earlier chunks' K^T K = L0 L0^T, P = A0^{-1},
//   M = I + K_c P K_c^T = L L^T, R = L^{-1} K_c P.
// By Woodbury, A_t^{-1} = P - sum_{s<=t in the chunk} R_s R_s^T for every row t of a chunk.
struct CausalChunkFactors {
  torch::Tensor qc, kc;       // (B, H, N, c, d)
  torch::Tensor a0_factor;    // L0 (B, H, N, d, d)
  torch::Tensor p;            // P (B, H, N, d, d)
  torch::Tensor m_factor;     // L (B, H, N, c, c)
  torch::Tensor r;            // R (B, H, N, c, d)
  int64_t chunk, length;
};
// The LibTorch composition (devices and dtypes without the fused kernel); factors of matrices
// that are not positive definite are NaN (cholesky_or_nan).
CausalChunkFactors causal_chunk_factors(const torch::Tensor& q, const torch::Tensor& k,
                                        const torch::Tensor& alpha, int64_t chunk);

// Causal intention o_t = q_t^T A_t^{-1} B_t, B_t = sum_{s<=t} k_s v_s^T, in the residual form
//   W0 = A0^{-1} B0,  O_c = Q_c W0 + tril(Q_c R^T) L^{-1} (V_c - K_c W0),
// algebraically equal to Q~ B0 + tril(Q~ K_c^T) V_c but free of its cancellation (in float32 it is
// as accurate as per-token solves). q, k (B, H, T, d), v (B, H, T, dv) -> (B, H, T, dv).
// CPU float32/float64 run the fused kernel (src/kernels/cpu/least_squares_kernel.h) with
// its analytic backward, reporting a factorisation failure with an error naming `op`; everything
// else runs causal_intention_composed. chunk is clamped to [1, T].
torch::Tensor causal_intention_output(const char* op, const torch::Tensor& q,
                                      const torch::Tensor& k, const torch::Tensor& v,
                                      const torch::Tensor& alpha, int64_t chunk);

// Row t of the result is q_t^T A_t^{-1}, A_t = alpha I + sum_{s<=t} k_s k_s^T, by the exact
// chunk-parallel algorithm (Woodbury inside each chunk, Cholesky of the chunk-start states):
//   P = A0^{-1}, M = I + K_c P K_c^T = L L^T, R = L^{-1} K_c P, Q~ = Q_c P - tril(Q_c R^T) R.
// q, k (B, H, T, d), alpha () or (H) -> (B, H, T, d). Time O(T (d^2 + C d + C^2) + (T/C) d^3),
// memory O((T/C) d^2): no per-token d x d matrix is formed. Dispatched like
// causal_intention_output (kernel, or causal_least_squares_queries_composed).
torch::Tensor causal_least_squares_queries(const char* op, const torch::Tensor& q,
                                           const torch::Tensor& k, const torch::Tensor& alpha,
                                           int64_t chunk);

// The LibTorch compositions of the two above (autograd backward, no host synchronisation; a
// factorisation failure gives NaN), for every device and dtype without the fused kernel.
// 1 <= chunk <= T.
torch::Tensor causal_intention_composed(const torch::Tensor& q, const torch::Tensor& k,
                                        const torch::Tensor& v, const torch::Tensor& alpha,
                                        int64_t chunk);
torch::Tensor causal_least_squares_queries_composed(const torch::Tensor& q, const torch::Tensor& k,
                                                    const torch::Tensor& alpha, int64_t chunk);

}  // namespace detail
}  // namespace functional
}  // namespace kvq
