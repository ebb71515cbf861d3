#include "kvq/registry.h"

#include <sstream>

#include "kvq/functional/intention.h"
#include "kvq/functional/kernel_intention.h"
#include "kvq/functional/linear_attention.h"
#include "kvq/functional/softmax_attention.h"

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

std::string joined(const std::vector<std::string>& names) {
  std::ostringstream out;
  for (size_t i = 0; i < names.size(); ++i) out << (i ? ", " : "") << names[i];
  return out.str();
}

}  // namespace

const std::vector<MechanismInfo>& mechanisms() {
  // name, projection, uses_alpha, has_softmax, inner mechanism, summary.
  // kv and kv-pos are the softmax mechanism behind Borji's projections.
  static const std::vector<MechanismInfo> table = {
      {"softmax", Projection::QKV, false, true, softmax_fn,
       "softmax(Q K^T scale) V (Vaswani et al. 2017)"},
      {"kv", Projection::KV, false, true, softmax_fn,
       "softmax(K K^T scale) V: tied query and key projections (Borji 2023)"},
      {"kv-pos", Projection::KVPos, false, true, softmax_fn,
       "kv plus the learned map of a 2D sinusoidal table in the scores (Borji 2023)"},
      {"linear", Projection::QKV, false, false, linear_fn,
       "phi(Q) phi(K)^T V / normaliser, phi = elu + 1 (Katharopoulos et al. 2020)"},
      {"linear-identity", Projection::QKV, false, false, linear_identity_fn,
       "Q K^T V, unnormalised"},
      {"intention", Projection::QKV, true, false, functional::intention,
       "Q (K^T K + alpha I)^{-1} K^T V (Garnelo & Czarnecki 2023)"},
      {"softmax-intention", Projection::QKV, true, true, functional::softmax_intention,
       "softmax(Q (K^T K + alpha I)^{-1} K^T scale) V"},
      {"kernel-intention", Projection::QKV, true, false, functional::kernel_intention,
       "exp(Q K^T scale) (exp(K K^T scale) + alpha I)^{-1} V, O(n^3)"},
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
  TORCH_CHECK(false, "unknown mechanism '", name, "'; valid mechanisms: ", joined(mechanism_names()));
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
