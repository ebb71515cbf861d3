#pragma once
#include <torch/torch.h>

namespace kvq {
namespace functional {

// Rank-1 Cholesky update: the lower Cholesky factor of L L^T + x x^T, in O(d^2).
//   for k = 0 .. d-1:
//     r = sqrt(L_kk^2 + x_k^2),  c = L_kk / r,  s = x_k / r,  L_kk = r
//     for i > k:  (L_ik, x_i) = (c L_ik + s x_i,  c x_i - s L_ik)
// The classic LINPACK update (dchud): d Givens rotations of the columns of [L | x], which rotate x
// into L. Orthogonal, hence backward stable; positive by construction, since every new diagonal
// entry r = sqrt(L_kk^2 + x_k^2) >= L_kk > 0. Causal intention's decoding step updates the factor
// of A_t = alpha I + sum_{s<=t} k_s k_s^T with it (docs/mechanisms.md, "Incremental decoding").
//
// factor (..., d, d) lower triangular with a positive diagonal (the strictly upper triangle is
// neither read nor changed), x (..., d) with the same leading dimensions, one floating dtype and
// device. CPU float32/float64 run the kernel of src/kernels/cpu/cholesky_rank1_update.h (parallel
// over the leading dimensions); other tensors the same rotations as batched LibTorch ops (slower:
// d steps of a few small ops). No autograd: inputs may not require gradients while grad mode is on.
torch::Tensor cholesky_rank1_update(const torch::Tensor& factor, const torch::Tensor& x);

// The same, writing the new factor into `factor` (its lower triangle).
void cholesky_rank1_update_(torch::Tensor& factor, const torch::Tensor& x);

// The LibTorch-op form that non-CPU tensors run, on any device; exposed so that it can be checked
// against the kernel. Same arguments, out of place.
torch::Tensor cholesky_rank1_update_composite(const torch::Tensor& factor, const torch::Tensor& x);

}  // namespace functional
}  // namespace kvq
