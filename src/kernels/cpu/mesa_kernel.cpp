#include "kernels/cpu/mesa_kernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/multiversion.h"

namespace kvq {
namespace kernels {
namespace cpu {
namespace {

// Heads factorised in lockstep: one AVX2 register of each type.
template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  static constexpr int W = 8;
};
template <>
struct Lanes<double> {
  static constexpr int W = 4;
};

// ---- The hot lane routines: Cholesky and the two triangular solves, W heads at once ----
// Matrices are lane-interleaved n x n, element (i, j) of lane l at [(i * n + j) * W + l]; only
// the lower triangle is read or written.

// A := L with A = L L^T (row by row, Cholesky-Banachiewicz), rdiag[i] = 1 / L_ii. A lane whose
// pivot is not > 0 (or NaN) gets ok[l] = false and carries on with pivot 1.
#define KVQ_MESA_LANE_ROUTINES(T, W)                                                        \
  KVQ_MULTIVERSION void factor_lanes(T* A, T* rdiag, int64_t n, bool* ok) {                \
    for (int64_t i = 0; i < n; ++i) {                                                       \
      T* Li = A + i * n * W;                                                                \
      for (int64_t j = 0; j <= i; ++j) {                                                    \
        const T* Lj = A + j * n * W;                                                        \
        T acc[W];                                                                           \
        for (int l = 0; l < W; ++l) acc[l] = Li[j * W + l];                                 \
        for (int64_t k = 0; k < j; ++k) {                                                   \
          for (int l = 0; l < W; ++l) acc[l] -= Li[k * W + l] * Lj[k * W + l];              \
        }                                                                                   \
        if (j < i) {                                                                        \
          for (int l = 0; l < W; ++l) Li[j * W + l] = acc[l] * rdiag[j * W + l];            \
        } else {                                                                            \
          for (int l = 0; l < W; ++l) {                                                     \
            if (!(acc[l] > T(0))) ok[l] = false, acc[l] = T(1);                             \
          }                                                                                 \
          for (int l = 0; l < W; ++l) {                                                     \
            const T root = std::sqrt(acc[l]);                                               \
            Li[i * W + l] = root;                                                           \
            rdiag[i * W + l] = T(1) / root;                                                 \
          }                                                                                 \
        }                                                                                   \
      }                                                                                     \
    }                                                                                       \
  }                                                                                         \
  /* x := (L L^T)^{-1} x, x lane-interleaved (n, W). */                                     \
  KVQ_MULTIVERSION void solve_lanes(const T* L, const T* rdiag, int64_t n, T* x) {          \
    for (int64_t i = 0; i < n; ++i) {                                                       \
      const T* Li = L + i * n * W;                                                          \
      T acc[W];                                                                             \
      for (int l = 0; l < W; ++l) acc[l] = x[i * W + l];                                    \
      for (int64_t k = 0; k < i; ++k) {                                                     \
        for (int l = 0; l < W; ++l) acc[l] -= Li[k * W + l] * x[k * W + l];                 \
      }                                                                                     \
      for (int l = 0; l < W; ++l) x[i * W + l] = acc[l] * rdiag[i * W + l];                 \
    }                                                                                       \
    for (int64_t i = n - 1; i >= 0; --i) {                                                  \
      const T* Li = L + i * n * W;                                                          \
      for (int l = 0; l < W; ++l) x[i * W + l] *= rdiag[i * W + l];                         \
      for (int64_t k = 0; k < i; ++k) {                                                     \
        for (int l = 0; l < W; ++l) x[k * W + l] -= Li[k * W + l] * x[i * W + l];           \
      }                                                                                     \
    }                                                                                       \
  }
KVQ_MESA_LANE_ROUTINES(float, 8)
KVQ_MESA_LANE_ROUTINES(double, 4)
#undef KVQ_MESA_LANE_ROUTINES

// One lane group: heads first .. first + count - 1 of the flattened (batch, head) index, their
// inputs gathered into lane-interleaved buffers and their results scattered back.
template <typename T>
struct LaneGroup {
  static constexpr int W = Lanes<T>::W;
  const MesaParams<T>& p;
  int64_t first, count;

  int64_t bh(int l) const { return first + l; }
  int64_t batch(int l) const { return (first + l) / p.heads; }
  int64_t head(int l) const { return (first + l) % p.heads; }

  // dst (width, W) = row t of view for every lane; zeros in padding lanes.
  void gather_row(const HeadsView<const T>& view, int64_t t, int64_t width, T* dst) const {
    std::fill(dst, dst + width * W, T(0));
    for (int l = 0; l < count; ++l) {
      const T* row = view.row(batch(l), head(l), t);
      for (int64_t i = 0; i < width; ++i) dst[i * W + l] = row[i];
    }
  }
  void scatter_row(const T* src, int64_t width, const HeadsView<T>& view, int64_t t) const {
    for (int l = 0; l < count; ++l) {
      T* row = view.row(batch(l), head(l), t);
      for (int64_t i = 0; i < width; ++i) row[i] = src[i * W + l];
    }
  }
  // dst (W) = x[bh * T + t] of a (B, H, T) input; fill in padding lanes.
  void gather_scalar(const T* x, int64_t t, T fill, T* dst) const {
    for (int l = 0; l < W; ++l) dst[l] = l < count ? x[bh(l) * p.length + t] : fill;
  }
  void scatter_scalar(const T* src, T* x, int64_t t) const {
    for (int l = 0; l < count; ++l) x[bh(l) * p.length + t] = src[l];
  }
  // dst (rows x cols, interleaved) = the rows x cols matrix at base + bh * stride (zeros when base
  // is null or in padding lanes).
  void gather_matrix(const T* base, int64_t stride, int64_t size, T* dst) const {
    std::fill(dst, dst + size * W, T(0));
    if (base == nullptr) return;
    for (int l = 0; l < count; ++l) {
      const T* m = base + bh(l) * stride;
      for (int64_t i = 0; i < size; ++i) dst[i * W + l] = m[i];
    }
  }
  void scatter_matrix(const T* src, int64_t size, T* base, int64_t stride) const {
    for (int l = 0; l < count; ++l) {
      T* m = base + bh(l) * stride;
      for (int64_t i = 0; i < size; ++i) m[i] = src[i * W + l];
    }
  }
  // The lower triangle of the interleaved n x n src mirrored to a full symmetric matrix per lane.
  void scatter_symmetric(const T* src, int64_t n, T* base, int64_t stride) const {
    for (int l = 0; l < count; ++l) {
      T* m = base + bh(l) * stride;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j <= i; ++j) m[i * n + j] = m[j * n + i] = src[(i * n + j) * W + l];
      }
    }
  }
};

// S_kk = a S_kk + beta k k^T (lower triangle), S_kv = a S_kv + beta k v^T.
template <typename T, int W>
void step_state(T* Skk, T* Skv, const T* k, const T* v, const T* a, const T* beta, int64_t d,
                int64_t dv) {
  for (int64_t i = 0; i < d; ++i) {
    T bk[W];
    for (int l = 0; l < W; ++l) bk[l] = beta[l] * k[i * W + l];
    T* row = Skk + i * d * W;
    for (int64_t j = 0; j <= i; ++j) {
      for (int l = 0; l < W; ++l) row[j * W + l] = a[l] * row[j * W + l] + bk[l] * k[j * W + l];
    }
    T* kv = Skv + i * dv * W;
    for (int64_t j = 0; j < dv; ++j) {
      for (int l = 0; l < W; ++l) kv[j * W + l] = a[l] * kv[j * W + l] + bk[l] * v[j * W + l];
    }
  }
}

// factor := the lower triangle of S_kk + diag(lambda), then its Cholesky factor.
template <typename T, int W>
void factor_system(const T* Skk, const T* lambda, int64_t d, T* factor, T* rdiag, bool* ok) {
  for (int64_t i = 0; i < d; ++i) {
    std::copy(Skk + i * d * W, Skk + (i * d + i + 1) * W, factor + i * d * W);
    for (int l = 0; l < W; ++l) factor[(i * d + i) * W + l] += lambda[i * W + l];
  }
  factor_lanes(factor, rdiag, d, ok);
}

// out (dv) = S_kv^T x; out (d) = S_kv y for the transpose flag.
template <typename T, int W>
void kv_times(const T* Skv, const T* x, int64_t d, int64_t dv, bool transpose, T* out) {
  if (transpose) {
    std::fill(out, out + dv * W, T(0));
    for (int64_t i = 0; i < d; ++i) {
      const T* row = Skv + i * dv * W;
      for (int64_t j = 0; j < dv; ++j) {
        for (int l = 0; l < W; ++l) out[j * W + l] += row[j * W + l] * x[i * W + l];
      }
    }
  } else {
    for (int64_t i = 0; i < d; ++i) {
      const T* row = Skv + i * dv * W;
      T acc[W] = {};
      for (int64_t j = 0; j < dv; ++j) {
        for (int l = 0; l < W; ++l) acc[l] += row[j * W + l] * x[j * W + l];
      }
      for (int l = 0; l < W; ++l) out[i * W + l] = acc[l];
    }
  }
}

template <typename T>
int64_t num_chunks(const MesaParams<T>& p) {
  return (p.length + p.chunk - 1) / p.chunk;
}

template <typename T>
void forward_group(const MesaParams<T>& p, const HeadsView<T>& out, T* final_kk, T* final_kv,
                   int64_t first, int64_t count, std::vector<FactorFailure>& failures) {
  constexpr int W = Lanes<T>::W;
  const LaneGroup<T> G{p, first, count};
  const int64_t d = p.d, dv = p.dv, N = num_chunks(p);
  std::vector<T> ws(2 * d * d * W + d * dv * W + 5 * d * W + 2 * dv * W + 2 * W);
  T* Skk = ws.data();
  T* factor = Skk + d * d * W;
  T* Skv = factor + d * d * W;
  T *rdiag = Skv + d * dv * W, *lam = rdiag + d * W, *k = lam + d * W, *x = k + d * W;
  T *spare = x + d * W, *v = spare + d * W, *o = v + dv * W, *a = o + dv * W, *beta = a + W;
  (void)spare;
  for (int l = 0; l < W; ++l) {
    for (int64_t i = 0; i < d; ++i) lam[i * W + l] = l < count ? p.lambda[G.head(l) * d + i] : T(1);
  }
  G.gather_matrix(p.initial_kk, d * d, d * d, Skk);
  G.gather_matrix(p.initial_kv, d * dv, d * dv, Skv);
  bool ok[W];
  std::fill(ok, ok + W, true);
  for (int64_t t = 0; t < p.length; ++t) {
    const int64_t c = t / p.chunk;
    if (t % p.chunk == 0) {
      G.scatter_symmetric(Skk, d, p.checkpoint_kk + c * d * d, N * d * d);
      G.scatter_matrix(Skv, d * dv, p.checkpoint_kv + c * d * dv, N * d * dv);
    }
    G.gather_row(p.k, t, d, k);
    G.gather_row(p.v, t, dv, v);
    G.gather_row(p.q, t, d, x);
    G.gather_scalar(p.g, t, T(0), a);
    G.gather_scalar(p.beta, t, T(0), beta);
    for (int l = 0; l < W; ++l) a[l] = std::exp(a[l]);
    step_state<T, W>(Skk, Skv, k, v, a, beta, d, dv);
    factor_system<T, W>(Skk, lam, d, factor, rdiag, ok);
    for (int l = 0; l < count; ++l) {
      if (!ok[l] && !failures[G.bh(l)].failed) {
        failures[G.bh(l)] = {true, G.batch(l), G.head(l), c, "S_kk,t + diag(lambda)"};
      }
    }
    solve_lanes(factor, rdiag, d, x);
    kv_times<T, W>(Skv, x, d, dv, /*transpose=*/true, o);
    G.scatter_row(o, dv, out, t);
  }
  G.scatter_symmetric(Skk, d, final_kk, d * d);
  G.scatter_matrix(Skv, d * dv, final_kv, d * dv);
}

template <typename T>
void backward_group(const MesaParams<T>& p, const HeadsView<const T>& grad_out,
                    const T* grad_final_kk, const T* grad_final_kv, const HeadsView<T>& grad_q,
                    const HeadsView<T>& grad_k, const HeadsView<T>& grad_v, T* grad_g,
                    T* grad_beta, T* grad_lambda, T* grad_initial_kk, T* grad_initial_kv,
                    int64_t first, int64_t count) {
  constexpr int W = Lanes<T>::W;
  const LaneGroup<T> G{p, first, count};
  const int64_t d = p.d, dv = p.dv, N = num_chunks(p), C = std::min(p.chunk, p.length);
  const int64_t dd = d * d * W, dvw = d * dv * W;
  std::vector<T> ws(3 * dd + 2 * dvw + C * (dd + dvw) + 2 * C * d * W + 6 * d * W +
                    2 * dv * W + 4 * W);
  T* Skk = ws.data();
  T* factor = Skk + dd;
  T* Dkk = factor + dd;  // symmetric, lower triangle
  T* Skv = Dkk + dd;
  T* Dkv = Skv + dvw;
  T* states_kk = Dkv + dvw;          // the states before each token of the chunk
  T* states_kv = states_kk + C * dd;
  T* xs = states_kv + C * dvw;       // x_t of the chunk
  T* ys = xs + C * d * W;            // y_t of the chunk
  T *rdiag = ys + C * d * W, *lam = rdiag + d * W, *k = lam + d * W, *u = k + d * W;
  T *w = u + d * W, *dk = w + d * W, *v = dk + d * W, *dO = v + dv * W;
  T *a = dO + dv * W, *beta = a + W, *a_next = beta + W, *scalar = a_next + W;
  std::vector<double> dlam(d * W, 0.0);
  for (int l = 0; l < W; ++l) {
    for (int64_t i = 0; i < d; ++i) lam[i * W + l] = l < count ? p.lambda[G.head(l) * d + i] : T(1);
  }
  // D after the last token: the gradients of the final states (symmetric part for S_kk).
  G.gather_matrix(grad_final_kk, d * d, d * d, factor);
  for (int64_t i = 0; i < d; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      for (int l = 0; l < W; ++l) {
        Dkk[(i * d + j) * W + l] = T(0.5) * (factor[(i * d + j) * W + l] + factor[(j * d + i) * W + l]);
      }
    }
  }
  G.gather_matrix(grad_final_kv, d * dv, d * dv, Dkv);
  std::fill(a_next, a_next + W, T(1));
  bool ok[W];
  std::fill(ok, ok + W, true);
  for (int64_t c = N - 1; c >= 0; --c) {
    const int64_t t0 = c * p.chunk, rows = std::min(p.chunk, p.length - t0);
    G.gather_matrix(p.checkpoint_kk + c * d * d, N * d * d, d * d, Skk);
    G.gather_matrix(p.checkpoint_kv + c * d * dv, N * d * dv, d * dv, Skv);
    // Forward over the chunk: the states before each token, x_t and y_t = A_t^{-1} S_kv,t do_t.
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = t0 + r;
      std::copy(Skk, Skk + dd, states_kk + r * dd);
      std::copy(Skv, Skv + dvw, states_kv + r * dvw);
      G.gather_row(p.k, t, d, k);
      G.gather_row(p.v, t, dv, v);
      G.gather_scalar(p.g, t, T(0), a);
      G.gather_scalar(p.beta, t, T(0), beta);
      for (int l = 0; l < W; ++l) a[l] = std::exp(a[l]);
      step_state<T, W>(Skk, Skv, k, v, a, beta, d, dv);
      factor_system<T, W>(Skk, lam, d, factor, rdiag, ok);
      T *x = xs + r * d * W, *y = ys + r * d * W;
      G.gather_row(p.q, t, d, x);
      solve_lanes(factor, rdiag, d, x);
      G.gather_row(grad_out, t, dv, dO);
      kv_times<T, W>(Skv, dO, d, dv, /*transpose=*/false, y);
      solve_lanes(factor, rdiag, d, y);
    }
    // Backward over the chunk.
    for (int64_t r = rows - 1; r >= 0; --r) {
      const int64_t t = t0 + r;
      const T *x = xs + r * d * W, *y = ys + r * d * W;
      G.gather_row(p.k, t, d, k);
      G.gather_row(p.v, t, dv, v);
      G.gather_row(grad_out, t, dv, dO);
      G.gather_scalar(p.g, t, T(0), a);
      G.gather_scalar(p.beta, t, T(0), beta);
      for (int l = 0; l < W; ++l) a[l] = std::exp(a[l]);
      // D_t = a_t+1 D_t+1 + direct_t.
      for (int64_t i = 0; i < d; ++i) {
        T* row = Dkk + i * d * W;
        for (int64_t j = 0; j <= i; ++j) {
          for (int l = 0; l < W; ++l) {
            row[j * W + l] = a_next[l] * row[j * W + l] -
                             T(0.5) * (y[i * W + l] * x[j * W + l] + x[i * W + l] * y[j * W + l]);
          }
        }
        T* kv = Dkv + i * dv * W;
        for (int64_t j = 0; j < dv; ++j) {
          for (int l = 0; l < W; ++l) kv[j * W + l] = a_next[l] * kv[j * W + l] + x[i * W + l] * dO[j * W + l];
        }
        for (int l = 0; l < W; ++l) dlam[i * W + l] -= double(y[i * W + l]) * double(x[i * W + l]);
      }
      G.scatter_row(y, d, grad_q, t);
      // dg_t = a_t (<D^kk_t, S_kk,t-1> + <D^kv_t, S_kv,t-1>) (the symmetric inner product from the
      // lower triangles); u = D^kk k, w = D^kv v.
      const T *Pkk = states_kk + r * dd, *Pkv = states_kv + r * dvw;
      T acc[W] = {};
      std::fill(u, u + d * W, T(0));
      for (int64_t i = 0; i < d; ++i) {
        const T *Di = Dkk + i * d * W, *Si = Pkk + i * d * W;
        for (int64_t j = 0; j < i; ++j) {
          for (int l = 0; l < W; ++l) {
            acc[l] += T(2) * Di[j * W + l] * Si[j * W + l];
            u[i * W + l] += Di[j * W + l] * k[j * W + l];
            u[j * W + l] += Di[j * W + l] * k[i * W + l];
          }
        }
        for (int l = 0; l < W; ++l) {
          acc[l] += Di[i * W + l] * Si[i * W + l];
          u[i * W + l] += Di[i * W + l] * k[i * W + l];
        }
        const T *Dv = Dkv + i * dv * W, *Sv = Pkv + i * dv * W;
        T wi[W] = {};
        for (int64_t j = 0; j < dv; ++j) {
          for (int l = 0; l < W; ++l) {
            acc[l] += Dv[j * W + l] * Sv[j * W + l];
            wi[l] += Dv[j * W + l] * v[j * W + l];
          }
        }
        for (int l = 0; l < W; ++l) w[i * W + l] = wi[l];
      }
      for (int l = 0; l < W; ++l) scalar[l] = a[l] * acc[l];
      G.scatter_scalar(scalar, grad_g, t);
      // dbeta_t = k^T u + k^T w, dk_t = beta (2 u + w), dv_t = beta D^kv^T k.
      T kb[W] = {};
      for (int64_t i = 0; i < d; ++i) {
        for (int l = 0; l < W; ++l) {
          kb[l] += k[i * W + l] * (u[i * W + l] + w[i * W + l]);
          dk[i * W + l] = beta[l] * (T(2) * u[i * W + l] + w[i * W + l]);
        }
      }
      G.scatter_scalar(kb, grad_beta, t);
      G.scatter_row(dk, d, grad_k, t);
      kv_times<T, W>(Dkv, k, d, dv, /*transpose=*/true, dO);
      for (int64_t j = 0; j < dv; ++j) {
        for (int l = 0; l < W; ++l) dO[j * W + l] *= beta[l];
      }
      G.scatter_row(dO, dv, grad_v, t);
      std::copy(a, a + W, a_next);
    }
  }
  // d initial state = a_1 D_1 (a_next is 1 when T = 0).
  for (int64_t i = 0; i < d * d; ++i) {
    for (int l = 0; l < W; ++l) Dkk[i * W + l] *= a_next[l];
  }
  for (int64_t i = 0; i < d * dv; ++i) {
    for (int l = 0; l < W; ++l) Dkv[i * W + l] *= a_next[l];
  }
  G.scatter_symmetric(Dkk, d, grad_initial_kk, d * d);
  G.scatter_matrix(Dkv, d * dv, grad_initial_kv, d * dv);
  for (int l = 0; l < count; ++l) {
    for (int64_t i = 0; i < d; ++i) grad_lambda[G.bh(l) * d + i] = T(dlam[i * W + l]);
  }
}

// The first failure in (batch, head) order.
FactorFailure first_failure(const std::vector<FactorFailure>& failures) {
  for (const auto& f : failures) {
    if (f.failed) return f;
  }
  return {};
}

}  // namespace

template <typename T>
FactorFailure mesa_forward(const MesaParams<T>& p, const HeadsView<T>& out, T* final_kk,
                           T* final_kv) {
  constexpr int W = Lanes<T>::W;
  const int64_t heads = p.batch * p.heads, groups = (heads + W - 1) / W;
  std::vector<FactorFailure> failures(heads);
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t gi = begin; gi < end; ++gi) {
      forward_group(p, out, final_kk, final_kv, gi * W, std::min<int64_t>(W, heads - gi * W),
                    failures);
    }
  });
  return first_failure(failures);
}

template <typename T>
void mesa_backward(const MesaParams<T>& p, const HeadsView<const T>& grad_out,
                   const T* grad_final_kk, const T* grad_final_kv, const HeadsView<T>& grad_q,
                   const HeadsView<T>& grad_k, const HeadsView<T>& grad_v, T* grad_g, T* grad_beta,
                   T* grad_lambda, T* grad_initial_kk, T* grad_initial_kv) {
  constexpr int W = Lanes<T>::W;
  const int64_t heads = p.batch * p.heads, groups = (heads + W - 1) / W;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t gi = begin; gi < end; ++gi) {
      backward_group(p, grad_out, grad_final_kk, grad_final_kv, grad_q, grad_k, grad_v, grad_g,
                     grad_beta, grad_lambda, grad_initial_kk, grad_initial_kv, gi * W,
                     std::min<int64_t>(W, heads - gi * W));
    }
  });
}

#define KVQ_INSTANTIATE(T)                                                                    \
  template FactorFailure mesa_forward<T>(const MesaParams<T>&, const HeadsView<T>&, T*, T*); \
  template void mesa_backward<T>(const MesaParams<T>&, const HeadsView<const T>&, const T*,   \
                                 const T*, const HeadsView<T>&, const HeadsView<T>&,          \
                                 const HeadsView<T>&, T*, T*, T*, T*, T*);
KVQ_INSTANTIATE(float)
KVQ_INSTANTIATE(double)
#undef KVQ_INSTANTIATE

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
