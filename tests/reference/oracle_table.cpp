#include "reference/oracle_table.h"

#include <map>

#include "reference/oracles.h"

namespace kvq_ref {

const Oracle* find_oracle(const std::string& name) {
  using kvq::MechanismArgs;
  using torch::Tensor;
  static const std::map<std::string, Oracle> table = {
      {"softmax",
       [](const MechanismArgs& a, bool causal, const Tensor& mask) {
         return softmax_attention(a.q, a.k, a.v, causal, mask);
       }},
      {"kv",
       [](const MechanismArgs& a, bool causal, const Tensor& mask) {
         return softmax_attention(a.k, a.k, a.v, causal, mask);
       }},
      {"kv-pos",
       [](const MechanismArgs& a, bool causal, const Tensor& mask) {
         return kv_pos_attention(a.k, a.v, a.pos_weight, a.pos_bias, causal, mask);
       }},
      {"linear",
       [](const MechanismArgs& a, bool causal, const Tensor& mask) {
         return linear_attention(a.q, a.k, a.v, causal, mask);
       }},
      {"linear-identity",
       [](const MechanismArgs& a, bool causal, const Tensor& mask) {
         return linear_identity_attention(a.q, a.k, a.v, causal, mask);
       }},
      {"intention",
       [](const MechanismArgs& a, bool causal, const Tensor& mask) {
         return intention(a.q, a.k, a.v, a.alpha, causal, mask);
       }},
      {"softmax-intention",
       [](const MechanismArgs& a, bool causal, const Tensor& mask) {
         return softmax_intention(a.q, a.k, a.v, a.alpha, causal, mask);
       }},
      {"kernel-intention",
       [](const MechanismArgs& a, bool causal, const Tensor& mask) {
         return kernel_intention(a.q, a.k, a.v, a.alpha, causal, mask);
       }},
  };
  const auto it = table.find(name);
  return it == table.end() ? nullptr : &it->second;
}

}  // namespace kvq_ref
