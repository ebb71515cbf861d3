#pragma once
// What the naive forms of every family share (kvq/functional/naive_forms.h): the causal mask,
// per-head parameters as broadcastable views, and the units of their peak-memory model. Each
// family's folder holds its naive forms (softmax/, linear/, least_squares/naive_forms.cpp).
#include <torch/torch.h>

#include <cstdint>

#include "kvq/functional/naive_forms.h"

namespace kvq {
namespace functional {
namespace detail {

// (T, T) bool, true above the diagonal: the keys a causal query must not see.
inline torch::Tensor future_mask(int64_t length, const torch::Device& device) {
  return torch::ones({length, length}, torch::TensorOptions().dtype(torch::kBool).device(device))
      .triu(1);
}

// A per-head parameter (H) as (1, H, 1, 1).
inline torch::Tensor heads_view(const torch::Tensor& per_head) {
  return per_head.view({1, -1, 1, 1});
}

// Peak-memory model of the naive forms, in bytes. The unit tensors are one score matrix per
// batch/head (B H T^2) and one d x d (or d x dv) matrix per batch/head/token (B H T d dv); the
// multiples count the tensors alive at the peak of forward + autograd backward (saved activations
// plus the largest backward temporaries), calibrated against the peak RSS of forward + backward
// at B = 4, H = 8, d = dv = 64, T = 128..1024 with LibTorch 1.13 on CPU (within -1% .. +30%).
inline double score_bytes(const NaiveShape& s) {
  return double(s.batch) * s.heads * s.length * s.length * s.element_size;
}
inline double token_state_bytes(const NaiveShape& s, int64_t cols) {
  return double(s.batch) * s.heads * s.length * s.dim * cols * s.element_size;
}

}  // namespace detail
}  // namespace functional
}  // namespace kvq
