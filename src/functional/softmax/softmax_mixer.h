#pragma once
#include <torch/torch.h>

#include "kvq/functional/options.h"

namespace kvq {
namespace functional {
namespace detail {

// The softmax mixer shared by softmax, kv, kv-pos and softmax-intention, without argument checks:
//   O = softmax(gain * (Q K^T) * scale + bias + mask) V, with dropout on the weights.
// Rows whose keys are all padding output zeros.
torch::Tensor softmax_mix(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const AttentionFuncOptions& options);

}  // namespace detail
}  // namespace functional
}  // namespace kvq
