#include "kernels/cpu/causal_linear_kernel.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/parallel_heads.h"
#include "kernels/cpu/triangles.h"

namespace kvq {
namespace kernels {
namespace cpu {
namespace {

template <typename T>
int64_t num_chunks(const CausalLinearParams<T>& p) {
  return (p.length + p.chunk - 1) / p.chunk;
}

template <typename T>
T* state_of(const CausalLinearParams<T>& p, int64_t b, int64_t h, int64_t c) {
  return p.states + ((b * p.heads + h) * num_chunks(p) + c) * p.d * p.dv;
}

template <typename T>
void forward_head(const CausalLinearParams<T>& p, const HeadsView<T>& out, int64_t b, int64_t h,
                  std::vector<T>& scratch) {
  const int64_t C = p.chunk, d = p.d, dv = p.dv;
  scratch.assign(C * C + d * dv, T(0));
  T* A = scratch.data();
  T* S = A + C * C;  // running state, zero at the start
  for (int64_t c = 0, t0 = 0; t0 < p.length; ++c, t0 += C) {
    const int64_t rows = std::min(C, p.length - t0);
    const T *Q = p.q.row(b, h, t0), *K = p.k.row(b, h, t0), *V = p.v.row(b, h, t0);
    T* O = out.row(b, h, t0);
    std::copy(S, S + d * dv, state_of(p, b, h, c));
    gemm(false, false, rows, dv, d, T(1), Q, p.q.row_stride, S, dv, T(0), O, out.row_stride);
    gemm(false, true, rows, rows, d, T(1), Q, p.q.row_stride, K, p.k.row_stride, T(0), A, C);
    keep_lower(A, rows, C);
    gemm(false, false, rows, dv, rows, T(1), A, C, V, p.v.row_stride, T(1), O, out.row_stride);
    gemm(true, false, d, dv, rows, T(1), K, p.k.row_stride, V, p.v.row_stride, T(1), S, dv);
  }
}

template <typename T>
void backward_head(const CausalLinearParams<T>& p, const HeadsView<const T>& grad_out,
                   const HeadsView<T>& grad_q, const HeadsView<T>& grad_k,
                   const HeadsView<T>& grad_v, int64_t b, int64_t h, std::vector<T>& scratch) {
  const int64_t C = p.chunk, d = p.d, dv = p.dv;
  scratch.assign(2 * C * C + d * dv, T(0));
  T* A = scratch.data();       // tril(Q_c K_c^T)
  T* Ag = A + C * C;           // tril(dO_c V_c^T)
  T* G = Ag + C * C;           // sum over later chunks of Q^T dO, zero at the end
  for (int64_t c = num_chunks(p) - 1; c >= 0; --c) {
    const int64_t t0 = c * C, rows = std::min(C, p.length - t0);
    const T *Q = p.q.row(b, h, t0), *K = p.k.row(b, h, t0), *V = p.v.row(b, h, t0);
    const T* dO = grad_out.row(b, h, t0);
    T *dQ = grad_q.row(b, h, t0), *dK = grad_k.row(b, h, t0), *dV = grad_v.row(b, h, t0);
    const int64_t qs = p.q.row_stride, ks = p.k.row_stride, vs = p.v.row_stride,
                  gs = grad_out.row_stride;
    gemm(false, true, rows, rows, d, T(1), Q, qs, K, ks, T(0), A, C);
    keep_lower(A, rows, C);
    gemm(false, true, rows, rows, dv, T(1), dO, gs, V, vs, T(0), Ag, C);
    keep_lower(Ag, rows, C);
    // dQ_c = dO_c S_c^T + tril(dO_c V_c^T) K_c
    gemm(false, true, rows, d, dv, T(1), dO, gs, state_of(p, b, h, c), dv, T(0), dQ,
         grad_q.row_stride);
    gemm(false, false, rows, d, rows, T(1), Ag, C, K, ks, T(1), dQ, grad_q.row_stride);
    // dK_c = tril(dO_c V_c^T)^T Q_c + V_c G^T
    gemm(true, false, rows, d, rows, T(1), Ag, C, Q, qs, T(0), dK, grad_k.row_stride);
    gemm(false, true, rows, d, dv, T(1), V, vs, G, dv, T(1), dK, grad_k.row_stride);
    // dV_c = tril(Q_c K_c^T)^T dO_c + K_c G
    gemm(true, false, rows, dv, rows, T(1), A, C, dO, gs, T(0), dV, grad_v.row_stride);
    gemm(false, false, rows, dv, d, T(1), K, ks, G, dv, T(1), dV, grad_v.row_stride);
    // G += Q_c^T dO_c
    gemm(true, false, d, dv, rows, T(1), Q, qs, dO, gs, T(1), G, dv);
  }
}

}  // namespace

template <typename T>
void causal_linear_forward(const CausalLinearParams<T>& p, const HeadsView<T>& out) {
  for_each_head<T>(p.batch, p.heads, [&](int64_t b, int64_t h, std::vector<T>& scratch) {
    forward_head(p, out, b, h, scratch);
  });
}

template <typename T>
void causal_linear_backward(const CausalLinearParams<T>& p, const HeadsView<const T>& grad_out,
                            const HeadsView<T>& grad_q, const HeadsView<T>& grad_k,
                            const HeadsView<T>& grad_v) {
  for_each_head<T>(p.batch, p.heads, [&](int64_t b, int64_t h, std::vector<T>& scratch) {
    backward_head(p, grad_out, grad_q, grad_k, grad_v, b, h, scratch);
  });
}

template void causal_linear_forward<float>(const CausalLinearParams<float>&,
                                           const HeadsView<float>&);
template void causal_linear_forward<double>(const CausalLinearParams<double>&,
                                            const HeadsView<double>&);
template void causal_linear_backward<float>(const CausalLinearParams<float>&,
                                            const HeadsView<const float>&,
                                            const HeadsView<float>&, const HeadsView<float>&,
                                            const HeadsView<float>&);
template void causal_linear_backward<double>(const CausalLinearParams<double>&,
                                             const HeadsView<const double>&,
                                             const HeadsView<double>&, const HeadsView<double>&,
                                             const HeadsView<double>&);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
