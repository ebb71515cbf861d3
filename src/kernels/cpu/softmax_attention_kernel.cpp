#include "kernels/cpu/softmax_attention_kernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/vector_math.h"

namespace kvq {
namespace kernels {
namespace cpu {
namespace {

template <typename T>
constexpr T kInf = std::numeric_limits<T>::infinity();

// Number of keys query block [i0, i0 + rows) looks at.
int64_t visible_keys(bool causal, int64_t n, int64_t i0, int64_t rows) {
  return causal ? std::min(n, i0 + rows) : n;
}

// Scores of query rows [i0, i0 + rows) against keys [j0, j0 + cols) into S (row stride ld):
// S = scale * Q K^T + bias, then -inf where a key is padding or (causal) in the future.
template <typename T>
void score_tile(const SoftmaxAttentionParams<T>& p, int64_t b, int64_t h, int64_t i0,
                int64_t rows, int64_t j0, int64_t cols, T* S, int64_t ld) {
  gemm(false, true, rows, cols, p.d, p.scale, p.q.row(b, h, i0), p.q.row_stride, p.k.row(b, h, j0),
       p.k.row_stride, T(0), S, ld);
  if (p.bias) {
    const int64_t* st = p.bias_strides;
    const T* base = p.bias + b * st[0] + h * st[1] + j0 * st[3];
    for (int64_t r = 0; r < rows; ++r) {
      add_strided(S + r * ld, base + (i0 + r) * st[2], st[3], cols);
    }
  }
  if (p.key_padding) {
    const bool* pad = p.key_padding + b * p.key_padding_batch_stride + j0;
    for (int64_t r = 0; r < rows; ++r) mask_where(S + r * ld, pad, cols, -kInf<T>);
  }
  if (p.causal && j0 + cols - 1 > i0) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t first_future = std::max<int64_t>(i0 + r + 1 - j0, 0);
      for (int64_t c = first_future; c < cols; ++c) S[r * ld + c] = -kInf<T>;
    }
  }
}

// Multiplies the rows x cols tile X (row stride ld) of query rows i0.. and keys j0.. by their
// dropout factors Z, using factors (cols entries) as scratch.
template <typename T>
void apply_dropout(const SoftmaxAttentionParams<T>& p, int64_t b, int64_t h, int64_t i0,
                   int64_t rows, int64_t j0, int64_t cols, T* X, int64_t ld, T* factors) {
  const auto head = static_cast<uint32_t>(b * p.heads + h);
  for (int64_t r = 0; r < rows; ++r) {
    dropout_factors(p.dropout, head, static_cast<uint32_t>(i0 + r), j0, cols, factors);
    T* x = X + r * ld;
    for (int64_t c = 0; c < cols; ++c) x[c] *= factors[c];
  }
}

template <typename T>
void forward_block(const SoftmaxAttentionParams<T>& p, const SoftmaxAttentionForwardOutputs<T>& o,
                   int64_t b, int64_t h, int64_t i0, std::vector<T>& scratch) {
  const int64_t query_block = p.query_block, key_block = p.key_block;
  const int64_t rows = std::min(query_block, p.m - i0), dv = p.dv;
  scratch.resize(query_block * key_block + query_block * dv + 2 * query_block + key_block);
  T* S = scratch.data();
  T* acc = S + query_block * key_block;
  T* row_max = acc + query_block * dv;
  T* row_sum = row_max + query_block;
  T* factors = row_sum + query_block;
  std::fill(acc, acc + rows * dv, T(0));
  std::fill(row_max, row_max + rows, -kInf<T>);
  std::fill(row_sum, row_sum + rows, T(0));

  const int64_t keys = visible_keys(p.causal, p.n, i0, rows);
  for (int64_t j0 = 0; j0 < keys; j0 += key_block) {
    const int64_t cols = std::min(key_block, keys - j0);
    score_tile(p, b, h, i0, rows, j0, cols, S, key_block);
    for (int64_t r = 0; r < rows; ++r) {
      T* s = S + r * key_block;
      const T new_max = std::max(row_max[r], max_of(s, cols));
      if (new_max == -kInf<T>) {  // no visible key so far, or only NaN scores (max_of skips NaN)
        if (std::any_of(s, s + cols, [](T x) { return std::isnan(x); })) {
          row_max[r] = row_sum[r] = std::numeric_limits<T>::quiet_NaN();  // stays NaN
        }
        std::fill(s, s + cols, T(0));
        continue;
      }
      const T correction = std::exp(row_max[r] - new_max);  // 0 on the first visible block
      row_sum[r] = row_sum[r] * correction + exp_shifted_sum(s, cols, new_max);
      if (correction != T(1)) scale_in_place(acc + r * dv, dv, correction);
      row_max[r] = new_max;
    }
    // The row sums above are of the undropped weights: dropout applies after normalisation.
    if (p.dropout.active()) apply_dropout(p, b, h, i0, rows, j0, cols, S, key_block, factors);
    gemm(false, false, rows, dv, cols, T(1), S, key_block, p.v.row(b, h, j0), p.v.row_stride, T(1),
         acc, dv);
  }
  T* lse = o.lse + (b * p.heads + h) * p.m + i0;
  for (int64_t r = 0; r < rows; ++r) {
    T* out = o.out.row(b, h, i0 + r);
    // A row that saw a key has row_sum >= 1, or NaN when a score or value was NaN (or a score
    // +inf): NaN then reaches its output and, through the log-sum-exp, its gradients.
    if (row_max[r] != -kInf<T>) {
      const T inv = T(1) / row_sum[r];
      for (int64_t c = 0; c < dv; ++c) out[c] = acc[r * dv + c] * inv;
      lse[r] = row_max[r] + std::log(row_sum[r]);
    } else {
      std::fill(out, out + dv, T(0));
      lse[r] = kInf<T>;
    }
  }
}

template <typename T>
void zero_rows(const HeadsView<T>& x, int64_t b, int64_t h, int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; ++r) std::fill(x.row(b, h, r), x.row(b, h, r) + width, T(0));
}

template <typename T>
void backward_head(const SoftmaxAttentionBackwardParams<T>& g, int64_t b, int64_t h,
                   std::vector<T>& scratch) {
  const auto& p = g.forward;
  const int64_t m = p.m, n = p.n, d = p.d, dv = p.dv;
  const int64_t query_block = p.query_block, key_block = p.key_block;
  const bool dropout = p.dropout.active();
  const int64_t tile = query_block * key_block;
  scratch.resize((dropout ? 3 : 2) * tile + m + key_block);
  T* P = scratch.data();
  T* dP = P + tile;
  T* delta = dP + tile;
  T* factors = delta + m;
  T* dropped_P = factors + key_block;  // P * Z, with dropout
  for (int64_t i = 0; i < m; ++i) delta[i] = dot(g.grad_out.row(b, h, i), g.out.row(b, h, i), dv);
  zero_rows(g.grad_q, b, h, m, d);
  zero_rows(g.grad_k, b, h, n, d);
  zero_rows(g.grad_v, b, h, n, dv);
  const T* lse = g.lse + (b * p.heads + h) * m;
  T* grad_bias =
      g.grad_bias ? g.grad_bias + (b * p.heads + h) * g.bias_rows * g.bias_cols : nullptr;

  for (int64_t i0 = 0; i0 < m; i0 += query_block) {
    const int64_t rows = std::min(query_block, m - i0);
    const int64_t keys = visible_keys(p.causal, n, i0, rows);
    const T* dO = g.grad_out.row(b, h, i0);
    for (int64_t j0 = 0; j0 < keys; j0 += key_block) {
      const int64_t cols = std::min(key_block, keys - j0);
      score_tile(p, b, h, i0, rows, j0, cols, P, key_block);
      for (int64_t r = 0; r < rows; ++r) exp_shifted(P + r * key_block, cols, lse[i0 + r]);
      // dV_J += (P * Z)^T dO_I;  dP = (dO_I V_J^T) * Z
      gemm(false, true, rows, cols, dv, T(1), dO, g.grad_out.row_stride, p.v.row(b, h, j0),
           p.v.row_stride, T(0), dP, key_block);
      const T* weights = P;
      if (dropout) {
        const auto head = static_cast<uint32_t>(b * p.heads + h);
        for (int64_t r = 0; r < rows; ++r) {
          dropout_factors(p.dropout, head, static_cast<uint32_t>(i0 + r), j0, cols, factors);
          const T *pr = P + r * key_block;
          T *dp = dP + r * key_block, *pz = dropped_P + r * key_block;
          for (int64_t c = 0; c < cols; ++c) {
            dp[c] *= factors[c];
            pz[c] = pr[c] * factors[c];
          }
        }
        weights = dropped_P;
      }
      gemm(true, false, cols, dv, rows, T(1), weights, key_block, dO, g.grad_out.row_stride, T(1),
           g.grad_v.row(b, h, j0), g.grad_v.row_stride);
      // dS = P * (dP - delta), stored over dP.
      for (int64_t r = 0; r < rows; ++r) {
        softmax_grad(P + r * key_block, dP + r * key_block, cols, delta[i0 + r]);
      }
      if (grad_bias) {
        for (int64_t r = 0; r < rows; ++r) {
          const T* ds = dP + r * key_block;
          T* out = grad_bias + (g.bias_rows > 1 ? (i0 + r) * g.bias_cols : 0);
          if (g.bias_cols > 1) {
            for (int64_t c = 0; c < cols; ++c) out[j0 + c] += ds[c];
          } else {
            out[0] += sum_of(ds, cols);
          }
        }
      }
      // dQ_I += scale dS K_J;  dK_J += scale dS^T Q_I
      gemm(false, false, rows, d, cols, p.scale, dP, key_block, p.k.row(b, h, j0), p.k.row_stride,
           T(1), g.grad_q.row(b, h, i0), g.grad_q.row_stride);
      gemm(true, false, cols, d, rows, p.scale, dP, key_block, p.q.row(b, h, i0), p.q.row_stride,
           T(1), g.grad_k.row(b, h, j0), g.grad_k.row_stride);
    }
  }
}

}  // namespace

template <typename T>
void softmax_attention_forward(const SoftmaxAttentionParams<T>& p,
                               const SoftmaxAttentionForwardOutputs<T>& o) {
  const int64_t blocks = (p.m + p.query_block - 1) / p.query_block;
  at::parallel_for(0, p.batch * p.heads * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / blocks, block = task % blocks;
      forward_block(p, o, bh / p.heads, bh % p.heads, block * p.query_block, scratch);
    }
  });
}

template <typename T>
void softmax_attention_backward(const SoftmaxAttentionBackwardParams<T>& g) {
  const auto& p = g.forward;
  if (g.grad_bias) {
    std::fill(g.grad_bias, g.grad_bias + p.batch * p.heads * g.bias_rows * g.bias_cols, T(0));
  }
  at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch;
    for (int64_t bh = begin; bh < end; ++bh) backward_head(g, bh / p.heads, bh % p.heads, scratch);
  });
}

template void softmax_attention_forward<float>(const SoftmaxAttentionParams<float>&,
                                               const SoftmaxAttentionForwardOutputs<float>&);
template void softmax_attention_forward<double>(const SoftmaxAttentionParams<double>&,
                                                const SoftmaxAttentionForwardOutputs<double>&);
template void softmax_attention_backward<float>(const SoftmaxAttentionBackwardParams<float>&);
template void softmax_attention_backward<double>(const SoftmaxAttentionBackwardParams<double>&);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
