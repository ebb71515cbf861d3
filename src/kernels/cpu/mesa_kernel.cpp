#include "kernels/cpu/mesa_kernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
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
// the lower triangle is read or written. Written with GCC vector types (one vector = the W lanes
// of one element), so every operation is a vector operation whatever the auto-vectoriser
// decides; the clones of KVQ_MULTIVERSION give them AVX-512, AVX2 or SSE2 instructions.
typedef float VecF
    __attribute__((vector_size(sizeof(float) * 8), aligned(sizeof(float)), may_alias));
typedef double VecD
    __attribute__((vector_size(sizeof(double) * 4), aligned(sizeof(double)), may_alias));

// A := L with A = L L^T (row by row, Cholesky-Banachiewicz), rdiag[i] = 1 / L_ii. A lane whose
// pivot is not > 0 (or NaN) gets ok[l] = false and carries on with pivot 1. Rows go in blocks of
// four: their entries left of the block depend only on earlier rows, so the four dot products
// per column run as independent chains sharing the loads of row j (one chain alone would wait on
// the latency of each multiply-add); the triangle inside the block is done entry by entry.
#define KVQ_MESA_LANE_ROUTINES(T, W, V)                                                           \
  KVQ_MULTIVERSION void factor_lanes(T* A_data, T* rdiag_data, int64_t n, bool* ok) {             \
    V* A = reinterpret_cast<V*>(A_data);                                                          \
    V* rdiag = reinterpret_cast<V*>(rdiag_data);                                                  \
    for (int64_t i0 = 0; i0 < n; i0 += 4) {                                                       \
      const bool block = i0 + 4 <= n;                                                             \
      if (block) {                                                                                \
        V* L0 = A + i0 * n;                                                                       \
        V* L1 = L0 + n;                                                                           \
        V* L2 = L1 + n;                                                                           \
        V* L3 = L2 + n;                                                                           \
        for (int64_t j = 0; j < i0; ++j) {                                                        \
          const V* Lj = A + j * n;                                                                \
          V a0 = L0[j], a1 = L1[j], a2 = L2[j], a3 = L3[j];                                       \
          for (int64_t k = 0; k < j; ++k) {                                                       \
            const V x = Lj[k];                                                                    \
            a0 -= L0[k] * x, a1 -= L1[k] * x, a2 -= L2[k] * x, a3 -= L3[k] * x;                   \
          }                                                                                       \
          const V r = rdiag[j];                                                                   \
          L0[j] = a0 * r, L1[j] = a1 * r, L2[j] = a2 * r, L3[j] = a3 * r;                         \
        }                                                                                         \
      }                                                                                           \
      for (int64_t i = i0; i < std::min<int64_t>(i0 + 4, n); ++i) {                               \
        V* Li = A + i * n;                                                                        \
        for (int64_t j = block ? i0 : 0; j <= i; ++j) {                                           \
          const V* Lj = A + j * n;                                                                \
          V acc = Li[j];                                                                          \
          for (int64_t k = 0; k < j; ++k) acc -= Li[k] * Lj[k];                                   \
          if (j < i) {                                                                            \
            Li[j] = acc * rdiag[j];                                                               \
          } else {                                                                                \
            T lanes[W], roots[W], inverses[W];                                                    \
            std::memcpy(lanes, &acc, sizeof lanes);                                               \
            for (int l = 0; l < W; ++l) {                                                         \
              if (!(lanes[l] > T(0))) ok[l] = false, lanes[l] = T(1);                             \
              roots[l] = std::sqrt(lanes[l]);                                                     \
              inverses[l] = T(1) / roots[l];                                                      \
            }                                                                                     \
            std::memcpy(&Li[i], roots, sizeof roots);                                             \
            std::memcpy(&rdiag[i], inverses, sizeof inverses);                                    \
          }                                                                                       \
        }                                                                                         \
      }                                                                                           \
    }                                                                                             \
  }                                                                                               \
  /* x := (L L^T)^{-1} x, x lane-interleaved (n, W). */                                           \
  KVQ_MULTIVERSION void solve_lanes(const T* L_data, const T* rdiag_data, int64_t n, T* x_data) { \
    const V* L = reinterpret_cast<const V*>(L_data);                                              \
    const V* rdiag = reinterpret_cast<const V*>(rdiag_data);                                      \
    V* x = reinterpret_cast<V*>(x_data);                                                          \
    for (int64_t i = 0; i < n; ++i) {                                                             \
      const V* Li = L + i * n;                                                                    \
      V a0 = x[i], a1 = {}, a2 = {}, a3 = {};                                                     \
      int64_t k = 0;                                                                              \
      for (; k + 4 <= i; k += 4) {                                                                \
        a0 -= Li[k] * x[k], a1 -= Li[k + 1] * x[k + 1];                                           \
        a2 -= Li[k + 2] * x[k + 2], a3 -= Li[k + 3] * x[k + 3];                                   \
      }                                                                                           \
      for (; k < i; ++k) a0 -= Li[k] * x[k];                                                      \
      x[i] = ((a0 + a1) + (a2 + a3)) * rdiag[i];                                                  \
    }                                                                                             \
    for (int64_t i = n - 1; i >= 0; --i) {                                                        \
      const V* Li = L + i * n;                                                                    \
      const V xi = x[i] * rdiag[i];                                                               \
      x[i] = xi;                                                                                  \
      for (int64_t k = 0; k < i; ++k) x[k] -= Li[k] * xi;                                         \
    }                                                                                             \
  }
KVQ_MESA_LANE_ROUTINES(float, 8, VecF)
KVQ_MESA_LANE_ROUTINES(double, 4, VecD)
#undef KVQ_MESA_LANE_ROUTINES

// ---- The O(d^2) per-token work, in the same lane vectors ----
#define KVQ_MESA_STATE_ROUTINES(T, W, V)                                                           \
  /* S_kk = a S_kk + beta k k^T (lower triangle), S_kv = a S_kv + beta k v^T. */                   \
  KVQ_MULTIVERSION void step_lanes(T* Skk_data, T* Skv_data, const T* k_data, const T* v_data,     \
                                   const T* a_data, const T* beta_data, int64_t d, int64_t dv) {   \
    V *Skk = reinterpret_cast<V*>(Skk_data), *Skv = reinterpret_cast<V*>(Skv_data);                \
    const V *k = reinterpret_cast<const V*>(k_data), *v = reinterpret_cast<const V*>(v_data);      \
    const V a = *reinterpret_cast<const V*>(a_data);                                               \
    const V beta = *reinterpret_cast<const V*>(beta_data);                                         \
    for (int64_t i = 0; i < d; ++i) {                                                              \
      const V bk = beta * k[i];                                                                    \
      V* row = Skk + i * d;                                                                        \
      for (int64_t j = 0; j <= i; ++j) row[j] = a * row[j] + bk * k[j];                            \
      V* kv = Skv + i * dv;                                                                        \
      for (int64_t j = 0; j < dv; ++j) kv[j] = a * kv[j] + bk * v[j];                              \
    }                                                                                              \
  }                                                                                                \
  /* transpose: out (dv) = S^T x; else out (d) = S x, for S (d x dv). */                           \
  KVQ_MULTIVERSION void kv_lanes(const T* S_data, const T* x_data, int64_t d, int64_t dv,          \
                                 bool transpose, T* out_data) {                                    \
    const V *S = reinterpret_cast<const V*>(S_data), *x = reinterpret_cast<const V*>(x_data);      \
    V* out = reinterpret_cast<V*>(out_data);                                                       \
    if (transpose) {                                                                               \
      for (int64_t j = 0; j < dv; ++j) out[j] = V{};                                               \
      for (int64_t i = 0; i < d; ++i) {                                                            \
        const V xi = x[i];                                                                         \
        const V* row = S + i * dv;                                                                 \
        for (int64_t j = 0; j < dv; ++j) out[j] += row[j] * xi;                                    \
      }                                                                                            \
    } else {                                                                                       \
      for (int64_t i = 0; i < d; ++i) {                                                            \
        const V* row = S + i * dv;                                                                 \
        V a0 = {}, a1 = {};                                                                        \
        int64_t j = 0;                                                                             \
        for (; j + 2 <= dv; j += 2) a0 += row[j] * x[j], a1 += row[j + 1] * x[j + 1];              \
        for (; j < dv; ++j) a0 += row[j] * x[j];                                                   \
        out[i] = a0 + a1;                                                                          \
      }                                                                                            \
    }                                                                                              \
  }                                                                                                \
  /* One token of the reverse pass: D := a_next D + direct_t (D^kk symmetric, lower                \
     triangle), then dots (W) = <D^kk, P_kk> + <D^kv, P_kv> for the states P before the            \
     token, u = D^kk k, w = D^kv v. */                                                             \
  KVQ_MULTIVERSION void adjoint_lanes(T* Dkk_data, T* Dkv_data, const T* x_data, const T* y_data,  \
                                      const T* dO_data, const T* a_next_data, const T* Pkk_data,   \
                                      const T* Pkv_data, const T* k_data, const T* v_data,         \
                                      int64_t d, int64_t dv, T* u_data, T* w_data, T* dots_data) { \
    V *Dkk = reinterpret_cast<V*>(Dkk_data), *Dkv = reinterpret_cast<V*>(Dkv_data);                \
    const V *x = reinterpret_cast<const V*>(x_data), *y = reinterpret_cast<const V*>(y_data);      \
    const V* dO = reinterpret_cast<const V*>(dO_data);                                             \
    const V *Pkk = reinterpret_cast<const V*>(Pkk_data),                                           \
            *Pkv = reinterpret_cast<const V*>(Pkv_data);                                           \
    const V *k = reinterpret_cast<const V*>(k_data), *v = reinterpret_cast<const V*>(v_data);      \
    V *u = reinterpret_cast<V*>(u_data), *w = reinterpret_cast<V*>(w_data);                        \
    const V an = *reinterpret_cast<const V*>(a_next_data);                                         \
    const V half = V{} + T(0.5);                                                                   \
    V dots_off = {}, dots = {};                                                                    \
    for (int64_t i = 0; i < d; ++i) u[i] = V{};                                                    \
    for (int64_t i = 0; i < d; ++i) {                                                              \
      V* Di = Dkk + i * d;                                                                         \
      const V* Si = Pkk + i * d;                                                                   \
      const V xi = x[i], yi = y[i], ki = k[i];                                                     \
      V ui = {};                                                                                   \
      for (int64_t j = 0; j < i; ++j) {                                                            \
        const V dij = an * Di[j] - half * (yi * x[j] + xi * y[j]);                                 \
        Di[j] = dij;                                                                               \
        dots_off += dij * Si[j];                                                                   \
        ui += dij * k[j];                                                                          \
        u[j] += dij * ki;                                                                          \
      }                                                                                            \
      const V dii = an * Di[i] - yi * xi;                                                          \
      Di[i] = dii;                                                                                 \
      dots += dii * Si[i];                                                                         \
      u[i] += ui + dii * ki;                                                                       \
      V* Dv = Dkv + i * dv;                                                                        \
      const V* Sv = Pkv + i * dv;                                                                  \
      V wi = {};                                                                                   \
      for (int64_t j = 0; j < dv; ++j) {                                                           \
        const V dij = an * Dv[j] + xi * dO[j];                                                     \
        Dv[j] = dij;                                                                               \
        dots += dij * Sv[j];                                                                       \
        wi += dij * v[j];                                                                          \
      }                                                                                            \
      w[i] = wi;                                                                                   \
    }                                                                                              \
    *reinterpret_cast<V*>(dots_data) = dots + dots_off + dots_off;                                 \
  }
KVQ_MESA_STATE_ROUTINES(float, 8, VecF)
KVQ_MESA_STATE_ROUTINES(double, 4, VecD)
#undef KVQ_MESA_STATE_ROUTINES

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

// factor := the lower triangle of S_kk + diag(lambda), then its Cholesky factor.
template <typename T, int W>
void factor_system(const T* Skk, const T* lambda, int64_t d, T* factor, T* rdiag, bool* ok) {
  for (int64_t i = 0; i < d; ++i) {
    std::copy(Skk + i * d * W, Skk + (i * d + i + 1) * W, factor + i * d * W);
    for (int l = 0; l < W; ++l) factor[(i * d + i) * W + l] += lambda[i * W + l];
  }
  factor_lanes(factor, rdiag, d, ok);
}

// (dst_kk, dst_kv) := (S_kk, S_kv): the lower triangle of S_kk (all that is read), all of S_kv.
template <typename T>
void copy_state(const T* Skk, const T* Skv, int64_t d, int64_t dvw, T* dst_kk, T* dst_kv) {
  constexpr int W = Lanes<T>::W;
  for (int64_t i = 0; i < d; ++i) {
    std::copy(Skk + i * d * W, Skk + (i * d + i + 1) * W, dst_kk + i * d * W);
  }
  std::copy(Skv, Skv + dvw, dst_kv);
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
    step_lanes(Skk, Skv, k, v, a, beta, d, dv);
    factor_system<T, W>(Skk, lam, d, factor, rdiag, ok);
    for (int l = 0; l < count; ++l) {
      if (!ok[l] && !failures[G.bh(l)].failed) {
        failures[G.bh(l)] = {true, G.batch(l), G.head(l), c, "S_kk,t + diag(lambda)"};
      }
    }
    solve_lanes(factor, rdiag, d, x);
    kv_lanes(Skv, x, d, dv, /*transpose=*/true, o);
    G.scatter_row(o, dv, out, t);
  }
  G.scatter_symmetric(Skk, d, final_kk, d * d);
  G.scatter_matrix(Skv, d * dv, final_kv, d * dv);
}

template <typename T>
void backward_group(const MesaParams<T>& p, const HeadsView<const T>& grad_out,
                    const T* grad_final_kk, const T* grad_final_kv, const HeadsView<T>& grad_q,
                    const HeadsView<T>& grad_k, const HeadsView<T>& grad_v, T* grad_g, T* grad_beta,
                    T* grad_lambda, T* grad_initial_kk, T* grad_initial_kv, int64_t first,
                    int64_t count) {
  constexpr int W = Lanes<T>::W;
  const LaneGroup<T> G{p, first, count};
  const int64_t d = p.d, dv = p.dv, N = num_chunks(p), C = std::min(p.chunk, p.length);
  const int64_t dd = d * d * W, dvw = d * dv * W;
  // The chunk's states are recomputed twice: once in order (x_t, y_t, and the state every kSub
  // tokens), then kSub tokens at a time in reverse from those, so that the states the reverse
  // pass reads (kSub of them) stay in cache; one more state update per token than keeping all C.
  constexpr int64_t kSub = 4;
  const int64_t subs = (C + kSub - 1) / kSub;
  std::vector<T> ws(3 * dd + 2 * dvw + (kSub + subs) * (dd + dvw) + 2 * C * d * W + 6 * d * W +
                    2 * dv * W + 4 * W);
  T* Skk = ws.data();
  T* factor = Skk + dd;
  T* Dkk = factor + dd;  // symmetric, lower triangle
  T* Skv = Dkk + dd;
  T* Dkv = Skv + dvw;
  T* states_kk = Dkv + dvw;  // the states before each token of the current kSub tokens
  T* states_kv = states_kk + kSub * dd;
  T* sub_kk = states_kv + kSub * dvw;  // the states before tokens 0, kSub, 2 kSub, ... of the chunk
  T* sub_kv = sub_kk + subs * dd;
  T* xs = sub_kv + subs * dvw;  // x_t of the chunk
  T* ys = xs + C * d * W;       // y_t of the chunk
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
        Dkk[(i * d + j) * W + l] =
            T(0.5) * (factor[(i * d + j) * W + l] + factor[(j * d + i) * W + l]);
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
      if (r % kSub == 0)
        copy_state(Skk, Skv, d, dvw, sub_kk + r / kSub * dd, sub_kv + r / kSub * dvw);
      G.gather_row(p.k, t, d, k);
      G.gather_row(p.v, t, dv, v);
      G.gather_scalar(p.g, t, T(0), a);
      G.gather_scalar(p.beta, t, T(0), beta);
      for (int l = 0; l < W; ++l) a[l] = std::exp(a[l]);
      step_lanes(Skk, Skv, k, v, a, beta, d, dv);
      factor_system<T, W>(Skk, lam, d, factor, rdiag, ok);
      T *x = xs + r * d * W, *y = ys + r * d * W;
      G.gather_row(p.q, t, d, x);
      solve_lanes(factor, rdiag, d, x);
      G.gather_row(grad_out, t, dv, dO);
      kv_lanes(Skv, dO, d, dv, /*transpose=*/false, y);
      solve_lanes(factor, rdiag, d, y);
    }
    // Backward over the chunk, kSub tokens at a time.
    for (int64_t r0 = (rows - 1) / kSub * kSub; r0 >= 0; r0 -= kSub) {
      const int64_t r1 = std::min(rows, r0 + kSub);
      copy_state(sub_kk + r0 / kSub * dd, sub_kv + r0 / kSub * dvw, d, dvw, Skk, Skv);
      for (int64_t r = r0; r < r1; ++r) {
        copy_state(Skk, Skv, d, dvw, states_kk + (r - r0) * dd, states_kv + (r - r0) * dvw);
        G.gather_row(p.k, t0 + r, d, k);
        G.gather_row(p.v, t0 + r, dv, v);
        G.gather_scalar(p.g, t0 + r, T(0), a);
        G.gather_scalar(p.beta, t0 + r, T(0), beta);
        for (int l = 0; l < W; ++l) a[l] = std::exp(a[l]);
        step_lanes(Skk, Skv, k, v, a, beta, d, dv);
      }
      for (int64_t r = r1 - 1; r >= r0; --r) {
        const int64_t t = t0 + r;
        const T *x = xs + r * d * W, *y = ys + r * d * W;
        G.gather_row(p.k, t, d, k);
        G.gather_row(p.v, t, dv, v);
        G.gather_row(grad_out, t, dv, dO);
        G.gather_scalar(p.g, t, T(0), a);
        G.gather_scalar(p.beta, t, T(0), beta);
        for (int l = 0; l < W; ++l) a[l] = std::exp(a[l]);
        // D_t = a_t+1 D_t+1 + direct_t; dg_t = a_t (<D^kk_t, S_kk,t-1> + <D^kv_t, S_kv,t-1>);
        // u = D^kk_t k_t, w = D^kv_t v_t.
        adjoint_lanes(Dkk, Dkv, x, y, dO, a_next, states_kk + (r - r0) * dd,
                      states_kv + (r - r0) * dvw, k, v, d, dv, u, w, scalar);
        for (int64_t i = 0; i < d; ++i) {
          for (int l = 0; l < W; ++l)
            dlam[i * W + l] -= double(y[i * W + l]) * double(x[i * W + l]);
        }
        G.scatter_row(y, d, grad_q, t);
        for (int l = 0; l < W; ++l) scalar[l] *= a[l];
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
        kv_lanes(Dkv, k, d, dv, /*transpose=*/true, dO);
        for (int64_t j = 0; j < dv; ++j) {
          for (int l = 0; l < W; ++l) dO[j * W + l] *= beta[l];
        }
        G.scatter_row(dO, dv, grad_v, t);
        std::copy(a, a + W, a_next);
      }
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

#define KVQ_INSTANTIATE(T)                                                                   \
  template FactorFailure mesa_forward<T>(const MesaParams<T>&, const HeadsView<T>&, T*, T*); \
  template void mesa_backward<T>(const MesaParams<T>&, const HeadsView<const T>&, const T*,  \
                                 const T*, const HeadsView<T>&, const HeadsView<T>&,         \
                                 const HeadsView<T>&, T*, T*, T*, T*, T*);
KVQ_INSTANTIATE(float)
KVQ_INSTANTIATE(double)
#undef KVQ_INSTANTIATE

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
