#include "kernels/cpu/least_squares_kernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/triangles.h"

namespace kvq {
namespace kernels {
namespace cpu {
namespace {

template <typename T>
void copy_rows(const T* src, int64_t src_ld, int64_t rows, int64_t cols, T* dst, int64_t dst_ld) {
  for (int64_t i = 0; i < rows; ++i)
    std::copy(src + i * src_ld, src + i * src_ld + cols, dst + i * dst_ld);
}

// The per-chunk saved factors of one (batch, head).
template <typename T>
struct ChunkFactors {
  const CausalLeastSquaresParams<T>& p;
  int64_t bh, num_chunks;

  ChunkFactors(const CausalLeastSquaresParams<T>& params, int64_t b, int64_t h)
      : p(params),
        bh(b * params.heads + h),
        num_chunks((params.length + params.chunk - 1) / params.chunk) {}
  int64_t index(int64_t c) const { return bh * num_chunks + c; }
  T* P(int64_t c) const { return p.p + index(c) * p.d * p.d; }
  T* R(int64_t c) const { return p.r + index(c) * p.chunk * p.d; }
  T* W0(int64_t c) const { return p.w0 + index(c) * p.d * p.dv; }
  T* E(int64_t c) const { return p.e + index(c) * p.chunk * p.dv; }
};

template <typename T>
FactorFailure intention_head(const LeastSquaresParams<T>& p, const HeadsView<T>& out, int64_t b,
                             int64_t h) {
  const int64_t d = p.d, dv = p.dv, bh = b * p.heads + h;
  const T *Q = p.q.row(b, h, 0), *K = p.k.row(b, h, 0), *V = p.v.row(b, h, 0);
  const int64_t qs = p.q.row_stride, ks = p.k.row_stride, vs = p.v.row_stride;
  T *L = p.factor + bh * d * d, *W = p.weights + bh * d * dv;
  gemm(true, false, d, d, p.n, T(1), K, ks, K, ks, T(0), L, d);
  const T alpha = p.alpha[h * p.alpha_stride];
  for (int64_t i = 0; i < d; ++i) L[i * d + i] += alpha;
  if (!cholesky(d, L, d)) return {true, b, h, 0, "K^T K + alpha I"};
  gemm(true, false, d, dv, p.n, T(1), K, ks, V, vs, T(0), W, dv);
  trsm(true, true, false, d, dv, T(1), L, d, W, dv);
  trsm(true, true, true, d, dv, T(1), L, d, W, dv);
  gemm(false, false, p.m, dv, d, T(1), Q, qs, W, dv, T(0), out.row(b, h, 0), out.row_stride);
  return {};
}

template <typename T>
void intention_backward_head(const LeastSquaresParams<T>& p, const HeadsView<const T>& grad_out,
                             const HeadsView<T>& grad_q, const HeadsView<T>& grad_k,
                             const HeadsView<T>& grad_v, T* grad_alpha, int64_t b, int64_t h,
                             std::vector<T>& scratch) {
  const int64_t d = p.d, dv = p.dv, bh = b * p.heads + h;
  const T *Q = p.q.row(b, h, 0), *K = p.k.row(b, h, 0), *V = p.v.row(b, h, 0);
  const T* dO = grad_out.row(b, h, 0);
  const int64_t qs = p.q.row_stride, ks = p.k.row_stride, vs = p.v.row_stride,
                gs = grad_out.row_stride;
  const T *L = p.factor + bh * d * d, *W = p.weights + bh * d * dv;
  scratch.resize(d * dv + d * d);
  T *G = scratch.data(), *S = G + d * dv;
  gemm(true, false, d, dv, p.m, T(1), Q, qs, dO, gs, T(0), G, dv);
  trsm(true, true, false, d, dv, T(1), L, d, G, dv);
  trsm(true, true, true, d, dv, T(1), L, d, G, dv);
  gemm(false, true, p.m, d, dv, T(1), dO, gs, W, dv, T(0), grad_q.row(b, h, 0), grad_q.row_stride);
  gemm(false, false, p.n, dv, d, T(1), K, ks, G, dv, T(0), grad_v.row(b, h, 0), grad_v.row_stride);
  gemm(false, true, d, d, dv, T(1), G, dv, W, dv, T(0), S, d);
  gemm(false, true, d, d, dv, T(1), W, dv, G, dv, T(1), S, d);
  T* dK = grad_k.row(b, h, 0);
  gemm(false, true, p.n, d, dv, T(1), V, vs, G, dv, T(0), dK, grad_k.row_stride);
  gemm(false, false, p.n, d, d, T(-1), K, ks, S, d, T(1), dK, grad_k.row_stride);
  double dalpha = 0;
  for (int64_t i = 0; i < d * dv; ++i) dalpha -= double(G[i]) * double(W[i]);
  grad_alpha[bh] = T(dalpha);
}

template <typename T>
FactorFailure forward_head(const CausalLeastSquaresParams<T>& p, const HeadsView<T>& out, int64_t b,
                           int64_t h, std::vector<T>& scratch) {
  const int64_t C = p.chunk, d = p.d, dv = p.dv;
  const bool values = dv > 0;
  const ChunkFactors<T> saved(p, b, h);
  scratch.assign(d * d + d * dv + C * d + 2 * C * C, T(0));
  T* A = scratch.data();  // alpha I + K^T K of the chunks so far
  T* Bs = A + d * d;      // K^T V of the chunks so far
  T* KP = Bs + d * dv;
  T* M = KP + C * d;
  T* X = M + C * C;
  const T alpha = p.alpha[h * p.alpha_stride];
  for (int64_t i = 0; i < d; ++i) A[i * d + i] = alpha;
  const int64_t qs = p.q.row_stride, ks = p.k.row_stride, vs = p.v.row_stride, os = out.row_stride;
  for (int64_t c = 0, t0 = 0; t0 < p.length; ++c, t0 += C) {
    const int64_t rows = std::min(C, p.length - t0);
    const T *Q = p.q.row(b, h, t0), *K = p.k.row(b, h, t0);
    T* O = out.row(b, h, t0);
    T *P = saved.P(c), *R = saved.R(c);
    std::copy(A, A + d * d, P);
    if (!cholesky(d, P, d)) return {true, b, h, c, "alpha I + K^T K of the earlier chunks"};
    T* W0 = values ? saved.W0(c) : nullptr;
    if (values) {  // W0 = A0^{-1} B0 by two triangular solves with L0
      std::copy(Bs, Bs + d * dv, W0);
      trsm(true, true, false, d, dv, T(1), P, d, W0, dv);
      trsm(true, true, true, d, dv, T(1), P, d, W0, dv);
    }
    cholesky_inverse(d, P, d);
    gemm(false, false, rows, d, d, T(1), K, ks, P, d, T(0), KP, d);
    gemm(false, true, rows, rows, d, T(1), KP, d, K, ks, T(0), M, C);
    for (int64_t i = 0; i < rows; ++i) M[i * C + i] += T(1);
    if (!cholesky(rows, M, C)) return {true, b, h, c, "I + K_c P K_c^T"};
    std::copy(KP, KP + rows * d, R);
    trsm(true, true, false, rows, d, T(1), M, C, R, d);
    gemm(false, true, rows, rows, d, T(1), Q, qs, R, d, T(0), X, C);
    keep_lower(X, rows, C);
    if (values) {
      const T* V = p.v.row(b, h, t0);
      T* E = saved.E(c);
      copy_rows(V, vs, rows, dv, E, dv);
      gemm(false, false, rows, dv, d, T(-1), K, ks, W0, dv, T(1), E, dv);
      trsm(true, true, false, rows, dv, T(1), M, C, E, dv);
      gemm(false, false, rows, dv, d, T(1), Q, qs, W0, dv, T(0), O, os);
      gemm(false, false, rows, dv, rows, T(1), X, C, E, dv, T(1), O, os);
      gemm(true, false, d, dv, rows, T(1), K, ks, V, vs, T(1), Bs, dv);
    } else {
      gemm(false, false, rows, d, d, T(1), Q, qs, P, d, T(0), O, os);
      gemm(false, false, rows, d, rows, T(-1), X, C, R, d, T(1), O, os);
    }
    gemm(true, false, d, d, rows, T(1), K, ks, K, ks, T(1), A, d);
  }
  return {};
}

template <typename T>
void backward_head(const CausalLeastSquaresParams<T>& p, const HeadsView<const T>& grad_out,
                   const HeadsView<const T>& u_in, const HeadsView<T>& grad_q,
                   const HeadsView<T>& grad_k, const HeadsView<T>& grad_v, T* grad_alpha, int64_t b,
                   int64_t h, std::vector<T>& scratch) {
  const int64_t C = p.chunk, d = p.d, dv = p.dv;
  const bool values = dv > 0;
  const ChunkFactors<T> saved(p, b, h);
  scratch.assign(d * dv + d * d + C * d + 3 * C * C, T(0));
  T* GB = scratch.data();  // sum over later chunks of U^T dO
  T* SA = GB + d * dv;     // -sum over later chunks of (U^T dQ + dQ^T U)
  T* Ubuf = SA + d * d;
  T* X = Ubuf + C * d;  // tril(Q R^T), then tril(dO E^T) or tril(dU R^T)
  T* KU = X + C * C;    // triu(K U^T)
  T* Z = KU + C * C;    // triu(V dO^T - K dQ^T)
  const int64_t qs = p.q.row_stride, ks = p.k.row_stride, vs = p.v.row_stride,
                gs = grad_out.row_stride, dqs = grad_q.row_stride, dks = grad_k.row_stride,
                dvs = grad_v.row_stride;
  double dalpha = 0;
  for (int64_t c = saved.num_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * C, rows = std::min(C, p.length - t0);
    const T *Q = p.q.row(b, h, t0), *K = p.k.row(b, h, t0), *G = grad_out.row(b, h, t0);
    const T *P = saved.P(c), *R = saved.R(c);
    T *DQ = grad_q.row(b, h, t0), *DK = grad_k.row(b, h, t0);
    const T* U = Ubuf;
    int64_t us = d;
    if (values) {  // U_c = Q_c P - tril(Q_c R^T) R
      gemm(false, true, rows, rows, d, T(1), Q, qs, R, d, T(0), X, C);
      keep_lower(X, rows, C);
      gemm(false, false, rows, d, d, T(1), Q, qs, P, d, T(0), Ubuf, d);
      gemm(false, false, rows, d, rows, T(-1), X, C, R, d, T(1), Ubuf, d);
    } else {
      U = u_in.row(b, h, t0), us = u_in.row_stride;
    }
    if (values) {  // dQ_c = dO_c W0^T + tril(dO_c E^T) R
      const T *W0 = saved.W0(c), *E = saved.E(c);
      gemm(false, true, rows, d, dv, T(1), G, gs, W0, dv, T(0), DQ, dqs);
      gemm(false, true, rows, rows, dv, T(1), G, gs, E, dv, T(0), X, C);
      keep_lower(X, rows, C);
      gemm(false, false, rows, d, rows, T(1), X, C, R, d, T(1), DQ, dqs);
    } else {  // dQ_c = dU_c P - tril(dU_c R^T) R
      gemm(false, false, rows, d, d, T(1), G, gs, P, d, T(0), DQ, dqs);
      gemm(false, true, rows, rows, d, T(1), G, gs, R, d, T(0), X, C);
      keep_lower(X, rows, C);
      gemm(false, false, rows, d, rows, T(-1), X, C, R, d, T(1), DQ, dqs);
    }
    gemm(false, true, rows, rows, d, T(1), K, ks, U, us, T(0), KU, C);
    keep_upper(KU, rows, C);
    gemm(false, true, rows, rows, d, T(-1), K, ks, DQ, dqs, T(0), Z, C);
    if (values) {
      const T* V = p.v.row(b, h, t0);
      gemm(false, true, rows, rows, dv, T(1), V, vs, G, gs, T(1), Z, C);
    }
    keep_upper(Z, rows, C);
    // dK_c = K_c SA + Z U_c - KU dQ_c (+ V_c GB^T)
    gemm(false, false, rows, d, d, T(1), K, ks, SA, d, T(0), DK, dks);
    gemm(false, false, rows, d, rows, T(1), Z, C, U, us, T(1), DK, dks);
    gemm(false, false, rows, d, rows, T(-1), KU, C, DQ, dqs, T(1), DK, dks);
    if (values) {
      const T* V = p.v.row(b, h, t0);
      T* DV = grad_v.row(b, h, t0);
      gemm(false, true, rows, d, dv, T(1), V, vs, GB, dv, T(1), DK, dks);
      // dV_c = K_c GB + KU dO_c
      gemm(false, false, rows, dv, d, T(1), K, ks, GB, dv, T(0), DV, dvs);
      gemm(false, false, rows, dv, rows, T(1), KU, C, G, gs, T(1), DV, dvs);
      gemm(true, false, d, dv, rows, T(1), U, us, G, gs, T(1), GB, dv);
    }
    for (int64_t i = 0; i < rows; ++i) {
      const T *ui = U + i * us, *dqi = DQ + i * dqs;
      for (int64_t j = 0; j < d; ++j) dalpha -= double(ui[j]) * double(dqi[j]);
    }
    gemm(true, false, d, d, rows, T(-1), U, us, DQ, dqs, T(1), SA, d);
    gemm(true, false, d, d, rows, T(-1), DQ, dqs, U, us, T(1), SA, d);
  }
  grad_alpha[b * p.heads + h] = T(dalpha);
}

}  // namespace

template <typename T>
FactorFailure intention_forward(const LeastSquaresParams<T>& p, const HeadsView<T>& out) {
  std::vector<FactorFailure> failures(p.batch * p.heads);
  at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      failures[bh] = intention_head(p, out, bh / p.heads, bh % p.heads);
    }
  });
  return first_failure(failures);
}

template <typename T>
void intention_backward(const LeastSquaresParams<T>& p, const HeadsView<const T>& grad_out,
                        const HeadsView<T>& grad_q, const HeadsView<T>& grad_k,
                        const HeadsView<T>& grad_v, T* grad_alpha) {
  at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch;
    for (int64_t bh = begin; bh < end; ++bh) {
      intention_backward_head(p, grad_out, grad_q, grad_k, grad_v, grad_alpha, bh / p.heads,
                              bh % p.heads, scratch);
    }
  });
}

template <typename T>
FactorFailure causal_least_squares_forward(const CausalLeastSquaresParams<T>& p,
                                           const HeadsView<T>& out) {
  std::vector<FactorFailure> failures(p.batch * p.heads);
  at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch;
    for (int64_t bh = begin; bh < end; ++bh) {
      failures[bh] = forward_head(p, out, bh / p.heads, bh % p.heads, scratch);
    }
  });
  return first_failure(failures);
}

template <typename T>
void causal_least_squares_backward(const CausalLeastSquaresParams<T>& p,
                                   const HeadsView<const T>& grad_out, const HeadsView<const T>& u,
                                   const HeadsView<T>& grad_q, const HeadsView<T>& grad_k,
                                   const HeadsView<T>& grad_v, T* grad_alpha) {
  at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch;
    for (int64_t bh = begin; bh < end; ++bh) {
      backward_head(p, grad_out, u, grad_q, grad_k, grad_v, grad_alpha, bh / p.heads, bh % p.heads,
                    scratch);
    }
  });
}

#define KVQ_INSTANTIATE(T)                                                                        \
  template FactorFailure intention_forward<T>(const LeastSquaresParams<T>&, const HeadsView<T>&); \
  template void intention_backward<T>(const LeastSquaresParams<T>&, const HeadsView<const T>&,    \
                                      const HeadsView<T>&, const HeadsView<T>&,                   \
                                      const HeadsView<T>&, T*);                                   \
  template FactorFailure causal_least_squares_forward<T>(const CausalLeastSquaresParams<T>&,      \
                                                         const HeadsView<T>&);                    \
  template void causal_least_squares_backward<T>(                                                 \
      const CausalLeastSquaresParams<T>&, const HeadsView<const T>&, const HeadsView<const T>&,   \
      const HeadsView<T>&, const HeadsView<T>&, const HeadsView<T>&, T*);
KVQ_INSTANTIATE(float)
KVQ_INSTANTIATE(double)
#undef KVQ_INSTANTIATE

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
