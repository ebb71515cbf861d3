#include "kernels/cpu/linear_kernel.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/parallel_heads.h"
#include "kernels/cpu/vector_math.h"

namespace kvq {
namespace kernels {
namespace cpu {
namespace {

// Rows of phi(Q) or phi(K) (and [V 1]) held in scratch at a time: small enough to stay in cache,
// long enough for the BLAS products to run at speed.
constexpr int64_t kBlockRows = 256;

// The per-(batch, head) pieces shared by forward and backward.
template <typename T>
struct Head {
  const LinearAttentionParams<T>& p;
  int64_t b, h;

  int64_t width() const { return p.dv + 1; }  // of [V 1], [S z], [num den], [dnum dden]
  int64_t block() const { return std::min(kBlockRows, std::max(p.m, p.n)); }
  T* key_state() const { return p.key_state + (b * p.heads + h) * p.d * width(); }
  T* denominators() const { return p.denominators + (b * p.heads + h) * p.m; }
  bool padded(int64_t j) const {
    return p.key_padding != nullptr && p.key_padding[b * p.key_padding_batch_stride + j];
  }

  // phi(Q) of query rows [i0, i0 + rows) into phi_q (rows x d).
  void load_queries(int64_t i0, int64_t rows, T* phi_q) const {
    for (int64_t i = 0; i < rows; ++i) elu_plus_one(p.q.row(b, h, i0 + i), phi_q + i * p.d, p.d);
  }

  // phi(K) and [V 1] of key rows [j0, j0 + rows) into phi_k (rows x d) and v_ones
  // (rows x (dv + 1)); the rows of padded keys are zero (so a NaN there reaches nothing).
  void load_keys(int64_t j0, int64_t rows, T* phi_k, T* v_ones) const {
    const int64_t d = p.d, dv = p.dv, w = width();
    for (int64_t i = 0; i < rows; ++i) {
      T *phi_row = phi_k + i * d, *v_row = v_ones + i * w;
      if (padded(j0 + i)) {
        std::fill(phi_row, phi_row + d, T(0));
        std::fill(v_row, v_row + w, T(0));
        continue;
      }
      elu_plus_one(p.k.row(b, h, j0 + i), phi_row, d);
      const T* v = p.v.row(b, h, j0 + i);
      std::copy(v, v + dv, v_row);
      v_row[dv] = T(1);
    }
  }
};

template <typename T>
void forward_head(const Head<T>& head, const HeadsView<T>& out, std::vector<T>& scratch) {
  const auto& p = head.p;
  const int64_t d = p.d, dv = p.dv, w = head.width(), block = head.block();
  scratch.resize(block * (d + w));
  T* phi = scratch.data();
  T* rows_w = phi + block * d;  // [V 1] of a key block, then [num den - eps] of a query block
  T* state = head.key_state();
  std::fill(state, state + d * w, T(0));
  for (int64_t j0 = 0; j0 < p.n; j0 += block) {
    const int64_t rows = std::min(block, p.n - j0);
    head.load_keys(j0, rows, phi, rows_w);
    gemm(true, false, d, w, rows, T(1), phi, d, rows_w, w, T(1), state, w);
  }
  T* den = head.denominators();
  for (int64_t i0 = 0; i0 < p.m; i0 += block) {
    const int64_t rows = std::min(block, p.m - i0);
    head.load_queries(i0, rows, phi);
    gemm(false, false, rows, w, d, T(1), phi, d, state, w, T(0), rows_w, w);
    for (int64_t i = 0; i < rows; ++i) {
      const T* num = rows_w + i * w;
      const T den_i = num[dv] + p.eps;
      den[i0 + i] = den_i;
      T* o = out.row(head.b, head.h, i0 + i);
      for (int64_t c = 0; c < dv; ++c) o[c] = num[c] / den_i;
    }
  }
}

template <typename T>
void backward_head(const Head<T>& head, const HeadsView<const T>& out,
                   const HeadsView<const T>& grad_out, const HeadsView<T>& grad_q,
                   const HeadsView<T>& grad_k, const HeadsView<T>& grad_v,
                   std::vector<T>& scratch) {
  const auto& p = head.p;
  const int64_t b = head.b, h = head.h, d = p.d, dv = p.dv, w = head.width(),
                block = head.block();
  scratch.resize(block * (d + w) + d * w);
  T* phi = scratch.data();
  T* rows_w = phi + block * d;  // [dnum dden] of a query block, then [V 1] of a key block
  T* grad_state = rows_w + block * w;  // [dS dz]
  std::fill(grad_state, grad_state + d * w, T(0));
  const T* state = head.key_state();
  const T* den = head.denominators();
  for (int64_t i0 = 0; i0 < p.m; i0 += block) {
    const int64_t rows = std::min(block, p.m - i0);
    head.load_queries(i0, rows, phi);
    for (int64_t i = 0; i < rows; ++i) {
      const T *dO = grad_out.row(b, h, i0 + i), *O = out.row(b, h, i0 + i);
      const T den_i = den[i0 + i];
      T* g = rows_w + i * w;
      for (int64_t c = 0; c < dv; ++c) g[c] = dO[c] / den_i;
      g[dv] = -dot(dO, O, dv) / den_i;
    }
    T* dQ = grad_q.row(b, h, i0);
    gemm(false, true, rows, d, w, T(1), rows_w, w, state, w, T(0), dQ, grad_q.row_stride);
    gemm(true, false, d, w, rows, T(1), phi, d, rows_w, w, T(1), grad_state, w);
    for (int64_t i = 0; i < rows; ++i) {
      elu_grad_in_place(p.q.row(b, h, i0 + i), phi + i * d, dQ + i * grad_q.row_stride, d);
    }
  }
  for (int64_t j0 = 0; j0 < p.n; j0 += block) {
    const int64_t rows = std::min(block, p.n - j0);
    head.load_keys(j0, rows, phi, rows_w);
    T *dK = grad_k.row(b, h, j0), *dV = grad_v.row(b, h, j0);
    gemm(false, true, rows, d, w, T(1), rows_w, w, grad_state, w, T(0), dK, grad_k.row_stride);
    gemm(false, false, rows, dv, d, T(1), phi, d, grad_state, w, T(0), dV, grad_v.row_stride);
    for (int64_t i = 0; i < rows; ++i) {
      T *dK_row = dK + i * grad_k.row_stride, *dV_row = dV + i * grad_v.row_stride;
      if (head.padded(j0 + i)) {  // zero even where [dS dz] holds a NaN from some query
        std::fill(dK_row, dK_row + d, T(0));
        std::fill(dV_row, dV_row + dv, T(0));
      } else {
        elu_grad_in_place(p.k.row(b, h, j0 + i), phi + i * d, dK_row, d);
      }
    }
  }
}

}  // namespace

template <typename T>
void linear_attention_forward(const LinearAttentionParams<T>& p, const HeadsView<T>& out) {
  for_each_head<T>(p.batch, p.heads, [&](int64_t b, int64_t h, std::vector<T>& scratch) {
    forward_head(Head<T>{p, b, h}, out, scratch);
  });
}

template <typename T>
void linear_attention_backward(const LinearAttentionParams<T>& p, const HeadsView<const T>& out,
                               const HeadsView<const T>& grad_out, const HeadsView<T>& grad_q,
                               const HeadsView<T>& grad_k, const HeadsView<T>& grad_v) {
  for_each_head<T>(p.batch, p.heads, [&](int64_t b, int64_t h, std::vector<T>& scratch) {
    backward_head(Head<T>{p, b, h}, out, grad_out, grad_q, grad_k, grad_v, scratch);
  });
}

#define KVQ_INSTANTIATE(T)                                                                        \
  template void linear_attention_forward<T>(const LinearAttentionParams<T>&, const HeadsView<T>&); \
  template void linear_attention_backward<T>(                                                     \
      const LinearAttentionParams<T>&, const HeadsView<const T>&, const HeadsView<const T>&,      \
      const HeadsView<T>&, const HeadsView<T>&, const HeadsView<T>&);
KVQ_INSTANTIATE(float)
KVQ_INSTANTIATE(double)
#undef KVQ_INSTANTIATE

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
