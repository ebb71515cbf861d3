// Decoding of the softmax family (softmax, kv, kv-pos): the KV cache, each step a softmax row.
#include "functional/decoding_buffers.h"
#include "functional/softmax/softmax_mixer.h"

namespace kvq {
namespace functional {

using torch::Tensor;
using namespace detail;

std::pair<Tensor, DecodeState> softmax_prefill(const Tensor& q, const Tensor& k, const Tensor& v,
                                               const AttentionFuncOptions& options) {
  return kv_cache_prefill("softmax_prefill", "softmax", softmax_mix, q, k, v, options);
}

Tensor softmax_step(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                    const AttentionFuncOptions& options) {
  return kv_cache_step("softmax_step", "softmax", softmax_mix, s, q, k, v, options);
}

}  // namespace functional
}  // namespace kvq
