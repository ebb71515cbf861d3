#include "kvq/registry.h"

#include <algorithm>
#include <cmath>

#include "kvq/functional/intention.h"
#include "kvq/functional/kernel_intention.h"
#include "kvq/functional/linear_attention.h"
#include "kvq/functional/softmax_attention.h"
#include "kvq/util/join_names.h"

namespace kvq {
namespace {

using functional::AttentionFuncOptions;
using torch::Tensor;

Tensor softmax_fn(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor&,
                  const AttentionFuncOptions& o) {
  return functional::softmax_attention(q, k, v, o);
}
Tensor linear_fn(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor&,
                 const AttentionFuncOptions& o) {
  return functional::linear_attention(q, k, v, o);
}
Tensor linear_identity_fn(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor&,
                          const AttentionFuncOptions& o) {
  return functional::linear_identity_attention(q, k, v, o);
}

// The decoding functions of the mechanisms whose prefill or step takes no alpha, behind the
// registry's uniform signatures (kvq/functional/decoding.h).
using functional::DecodeState;
using Prefilled = std::pair<Tensor, DecodeState>;
template <Prefilled (*Prefill)(const Tensor&, const Tensor&, const Tensor&,
                               const AttentionFuncOptions&)>
Prefilled prefill_without_alpha(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor&,
                                const AttentionFuncOptions& o) {
  return Prefill(q, k, v, o);
}
template <Tensor (*Step)(DecodeState&, const Tensor&, const Tensor&, const Tensor&,
                         const AttentionFuncOptions&)>
Tensor step_without_alpha(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor&, const AttentionFuncOptions& o) {
  return Step(s, q, k, v, o);
}
const auto softmax_prefill = prefill_without_alpha<functional::softmax_prefill>;
const auto softmax_step = step_without_alpha<functional::softmax_step>;

// The FLOP formulas, per (batch, head), with n = T, C = min(chunk, T), N = ceil(n / C):
//   softmax, kv, kv-pos    non-causal 2 n^2 (d + dv)            Q K^T and P V
//                          causal     n (n + 1) (d + dv)        only the pairs s <= t (as
//                                     FlashAttention's benchmarks count; the tiled kernel skips
//                                     the blocks above the diagonal)
//   linear (dv' = dv + 1, the normaliser is one more value column), linear-identity (dv' = dv)
//                          non-causal 4 n d dv'                 phi(K)^T V, phi(Q) S
//                          causal     4 n d dv' + 2 n C (d + dv')  chunk states + the C x C blocks
//   intention              non-causal 2 n d^2 + 4 n d dv + d^3/3 + 2 d^2 dv
//                                     K^T K, K^T V and Q W, Cholesky, cholesky_solve
//                          causal     per chunk (the fused kernel's forward): d^3 (Cholesky and
//                                     inverse of A0) + C^3/3 (Cholesky of M) + 2 d^2 dv (W0)
//                                     + 4 C d^2 (K P, K^T K) + 5 C^2 d (M, R, Q R^T)
//                                     + 6 C d dv (K W0, Q W0, K^T V) + 2 C^2 dv (E, (.) E)
//   softmax-intention      non-causal 4 n d^2 + d^3/3 + 2 n^2 (d + dv)   (solve for n queries)
//                          causal     per chunk d^3 + C^3/3 + 6 C d^2 + 7 C^2 d,
//                                     plus causal softmax n (n + 1) (d + dv)
//   kernel-intention       non-causal 4 n^2 d + n^3/3 + 4 n^2 dv   kappas, Cholesky, solve, product
//                          causal     4 n^2 d + 4 n^3/3 + 3 n^2 dv (L^{-1} kappa(K, Q) is n^3)
struct Terms {
  double n, d, dv, C, chunks, heads;
  Terms(const ProblemSize& s, int64_t chunk)
      : n(double(s.length)),
        d(double(s.dim)),
        dv(double(s.value_dim)),
        C(double(std::max<int64_t>(1, std::min(chunk, s.length)))),
        chunks(std::ceil(n / C)),
        heads(double(s.batch) * double(s.heads)) {}
  double softmax_mix(bool causal) const {
    return causal ? n * (n + 1) * (d + dv) : 2 * n * n * (d + dv);
  }
  double chunk_queries() const { return d * d * d + C * C * C / 3 + 6 * C * d * d + 7 * C * C * d; }
};

double softmax_flops(const ProblemSize& s, bool causal, int64_t chunk) {
  const Terms t(s, chunk);
  return t.heads * t.softmax_mix(causal);
}
double linear_product_flops(const Terms& t, double dvp, bool causal) {
  return t.heads * (4 * t.n * t.d * dvp + (causal ? 2 * t.n * t.C * (t.d + dvp) : 0));
}
double linear_flops(const ProblemSize& s, bool causal, int64_t chunk) {
  const Terms t(s, chunk);
  return linear_product_flops(t, t.dv + 1, causal);
}
double linear_identity_flops(const ProblemSize& s, bool causal, int64_t chunk) {
  const Terms t(s, chunk);
  return linear_product_flops(t, t.dv, causal);
}
double intention_flops(const ProblemSize& s, bool causal, int64_t chunk) {
  const Terms t(s, chunk);
  const double n = t.n, d = t.d, dv = t.dv, C = t.C;
  return t.heads * (causal ? t.chunks * (d * d * d + C * C * C / 3 + 2 * d * d * dv +
                                         4 * C * d * d + 5 * C * C * d + 6 * C * d * dv +
                                         2 * C * C * dv)
                           : 2 * n * d * d + 4 * n * d * dv + d * d * d / 3 + 2 * d * d * dv);
}
double softmax_intention_flops(const ProblemSize& s, bool causal, int64_t chunk) {
  const Terms t(s, chunk);
  const double n = t.n, d = t.d;
  return t.heads * (t.softmax_mix(causal) +
                    (causal ? t.chunks * t.chunk_queries() : 4 * n * d * d + d * d * d / 3));
}
double kernel_intention_flops(const ProblemSize& s, bool causal, int64_t chunk) {
  const Terms t(s, chunk);
  const double n = t.n, d = t.d, dv = t.dv;
  return t.heads * (causal ? 4 * n * n * d + 4 * n * n * n / 3 + 3 * n * n * dv
                           : 4 * n * n * d + n * n * n / 3 + 4 * n * n * dv);
}

}  // namespace

std::pair<MechanismPrefillFn, MechanismStepFn> cached_decoding(MechanismFn fn) {
  auto mix_of = [](const MechanismFn& f, const Tensor& alpha) {
    return [f, alpha](const Tensor& q, const Tensor& k, const Tensor& v,
                      const AttentionFuncOptions& o) { return f(q, k, v, alpha, o); };
  };
  MechanismPrefillFn prefill = [fn, mix_of](const Tensor& q, const Tensor& k, const Tensor& v,
                                            const Tensor& alpha, const AttentionFuncOptions& o) {
    return functional::cached_prefill(mix_of(fn, alpha), q, k, v, o);
  };
  MechanismStepFn step = [fn, mix_of](DecodeState& s, const Tensor& q, const Tensor& k,
                                      const Tensor& v, const Tensor& alpha,
                                      const AttentionFuncOptions& o) {
    return functional::cached_step(mix_of(fn, alpha), s, q, k, v, o);
  };
  return {prefill, step};
}

std::string family_name(Family family) {
  switch (family) {
    case Family::Softmax:
      return "softmax family";
    case Family::Linear:
      return "linear";
    case Family::LeastSquares:
      return "least squares";
  }
  return "?";
}

const std::vector<MechanismInfo>& mechanisms() {
  // name, projection, traits; inner mechanism, functional form; summary, family, op, FLOPs;
  // decoding prefill and step; naive forms.
  // kv and kv-pos are the softmax mechanism behind Borji's projections.
  namespace F = functional;
  const MechanismTraits none;
  static const std::vector<MechanismInfo> table = {
      {"softmax", Projection::QKV, none.softmax(), softmax_fn,
       [](const MechanismArgs& a, const AttentionFuncOptions& o) {
         return F::softmax_attention(a.q, a.k, a.v, o);
       },
       "softmax(Q K^T scale) V (Vaswani et al. 2017)", Family::Softmax, "kvq::softmax",
       softmax_flops, softmax_prefill, softmax_step, F::naive_softmax_forms()},
      {"kv", Projection::KV, none.softmax(), softmax_fn,
       [](const MechanismArgs& a, const AttentionFuncOptions& o) {
         return F::kv_attention(a.k, a.v, o);
       },
       "softmax(K K^T scale) V: tied query and key projections (Borji 2023)", Family::Softmax,
       "kvq::kv", softmax_flops, softmax_prefill, softmax_step, F::naive_softmax_forms()},
      {"kv-pos", Projection::KVPos, none.softmax(), softmax_fn,
       [](const MechanismArgs& a, const AttentionFuncOptions& o) {
         return F::kv_pos_attention(a.k, a.v, a.pos_weight, a.pos_bias, o);
       },
       "kv plus the learned map of a 2D sinusoidal table in the scores (Borji 2023)",
       Family::Softmax, "kvq::kv_pos", softmax_flops, softmax_prefill, softmax_step,
       F::naive_kv_pos_forms()},
      {"linear", Projection::QKV, none.chunked_causal(), linear_fn,
       [](const MechanismArgs& a, const AttentionFuncOptions& o) {
         return F::linear_attention(a.q, a.k, a.v, o);
       },
       "phi(Q) phi(K)^T V / normaliser, phi = elu + 1 (Katharopoulos et al. 2020)",
       Family::Linear, "kvq::linear", linear_flops, prefill_without_alpha<F::linear_prefill>,
       step_without_alpha<F::linear_step>, F::naive_linear_forms(/*normalised=*/true)},
      {"linear-identity", Projection::QKV, none.chunked_causal(), linear_identity_fn,
       [](const MechanismArgs& a, const AttentionFuncOptions& o) {
         return F::linear_identity_attention(a.q, a.k, a.v, o);
       },
       "Q K^T V, unnormalised", Family::Linear, "kvq::linear_identity", linear_identity_flops,
       prefill_without_alpha<F::linear_identity_prefill>,
       step_without_alpha<F::linear_identity_step>, F::naive_linear_forms(/*normalised=*/false)},
      {"intention", Projection::QKV, none.alpha().chunked_causal(), F::intention,
       [](const MechanismArgs& a, const AttentionFuncOptions& o) {
         return F::intention(a.q, a.k, a.v, a.alpha, o);
       },
       "Q (K^T K + alpha I)^{-1} K^T V (Garnelo & Czarnecki 2023)", Family::LeastSquares,
       "kvq::intention", intention_flops, F::intention_prefill,
       step_without_alpha<F::intention_step>, F::naive_intention_forms()},
      {"softmax-intention", Projection::QKV, none.alpha().softmax().chunked_causal(), F::softmax_intention,
       [](const MechanismArgs& a, const AttentionFuncOptions& o) {
         return F::softmax_intention(a.q, a.k, a.v, a.alpha, o);
       },
       "softmax(Q (K^T K + alpha I)^{-1} K^T scale) V", Family::LeastSquares,
       "kvq::softmax_intention", softmax_intention_flops, F::softmax_intention_prefill,
       step_without_alpha<F::softmax_intention_step>, F::naive_softmax_intention_forms()},
      {"kernel-intention", Projection::QKV, none.alpha(), F::kernel_intention,
       [](const MechanismArgs& a, const AttentionFuncOptions& o) {
         return F::kernel_intention(a.q, a.k, a.v, a.alpha, o);
       },
       "exp(Q K^T scale) (exp(K K^T scale) + alpha I)^{-1} V, O(n^3)", Family::LeastSquares,
       "kvq::kernel_intention", kernel_intention_flops, F::kernel_intention_prefill,
       F::kernel_intention_step, F::naive_kernel_intention_forms()},
  };
  return table;
}

std::vector<std::string> mechanism_names() {
  std::vector<std::string> names;
  for (const auto& info : mechanisms()) names.push_back(info.name);
  return names;
}

const MechanismInfo& find_mechanism(const std::string& name) {
  for (const auto& info : mechanisms()) {
    if (info.name == name) return info;
  }
  TORCH_CHECK(false, "unknown mechanism '", name, "'; valid mechanisms: ", util::join_names(mechanism_names()));
}

std::string projection_name(Projection projection) {
  switch (projection) {
    case Projection::QKV: return "qkv";
    case Projection::KV: return "kv";
    case Projection::KVPos: return "kv-pos";
  }
  TORCH_INTERNAL_ASSERT(false, "unhandled projection");
}

Projection parse_projection(const std::string& name) {
  for (auto p : {Projection::QKV, Projection::KV, Projection::KVPos}) {
    if (projection_name(p) == name) return p;
  }
  TORCH_CHECK(false, "unknown projection '", name, "'; valid projections: qkv, kv, kv-pos");
}

}  // namespace kvq
