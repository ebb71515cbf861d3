#pragma once
// Argument checks at the public boundary of every functional op, and the small shape helpers the
// mechanisms share. Errors name the argument, the expected shape and what was given.
#include <torch/torch.h>

#include "kvq/functional/options.h"

namespace kvq {
namespace functional {
namespace detail {

struct Dims {
  int64_t batch, heads, m, n, d, dv;
};

// q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv): same dtype (float16/bfloat16/float32/float64)
// and device; options.key_padding_mask (B, n) bool; causal requires m == n.
Dims check_qkv(const char* op, const torch::Tensor& q, const torch::Tensor& k,
               const torch::Tensor& v, const AttentionFuncOptions& options);

// t is a floating (B, H, rows, width) tensor; the error names `name` and `layout`.
void check_heads_tensor(const char* op, const char* name, const char* layout,
                        const torch::Tensor& t);

// alpha: floating, () or (H), every entry > 0, on any device but meta (the mechanisms move it
// to the inputs' device).
void check_alpha(const char* op, const torch::Tensor& alpha, int64_t heads);

// alpha reshaped to broadcast against (B, H, x, y): () stays (), (H) becomes (1, H, 1, 1).
torch::Tensor alpha_for_heads(const torch::Tensor& alpha);

// Boolean mask broadcastable to (B, H, m, n), true = masked, from options (padding and/or causal);
// undefined when nothing is masked.
torch::Tensor score_mask(const AttentionFuncOptions& options, int64_t m, int64_t n,
                         const torch::Device& device);

// Zeroes the rows of x (B, H, n, *) that key_padding_mask marks; x itself when there is no mask.
torch::Tensor zero_padded_keys(const torch::Tensor& x, const torch::Tensor& key_padding_mask);

// Dtype in which solves run: float32 for half inputs, the input dtype otherwise.
torch::ScalarType solve_dtype(torch::ScalarType input);

double default_scale(const AttentionFuncOptions& options, int64_t d);

// Chunk length of the causal algorithms: options.chunk_size(), or the head width d when 0.
int64_t chunk_length(const AttentionFuncOptions& options, int64_t d);

}  // namespace detail
}  // namespace functional
}  // namespace kvq
