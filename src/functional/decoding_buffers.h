#pragma once
// What the incremental decoding of every mechanism shares (kvq/functional/decoding.h): the
// options of a prefill and of a step, row buffers that double when full, the KV cache, and the
// checks of a prefill and of a step. Each family's folder (softmax/, linear/, least_squares/)
// holds its mechanisms' prefill and step; src/functional/decoding.cpp defines these.
#include <torch/torch.h>

#include <initializer_list>
#include <utility>

#include "functional/checks.h"
#include "kvq/functional/decoding.h"

namespace kvq {
namespace functional {
namespace detail {

// A prefill is the batched causal forward, without dropout.
AttentionFuncOptions prefill_options(AttentionFuncOptions o);
// A step's one query sees every cached key (rows 0 .. rows - 1), the padded prefix keys masked.
AttentionFuncOptions step_options(AttentionFuncOptions o, const DecodeState& s, int64_t rows);

// The buffer length for `rows` rows: 16, doubled until it holds them.
int64_t capacity_for(int64_t rows);
// The leading `rows` along each of `dims` (undefined stays undefined).
torch::Tensor leading(const torch::Tensor& x, std::initializer_list<int64_t> dims, int64_t rows);
// A zero buffer with `capacity` rows along each of `dims` that starts with x (detached).
torch::Tensor with_capacity(const torch::Tensor& x, std::initializer_list<int64_t> dims,
                            int64_t capacity);
// The KV cache of a prefix: keys (B, H, n, d), values (B, H, n, dv) or undefined, mask (B, n).
void cache_prefix(DecodeState& s, const torch::Tensor& k, const torch::Tensor& v,
                  const torch::Tensor& mask);
// Writes row `length` of the KV cache (the caller advances the length once the step is done).
void cache_row(DecodeState& s, const torch::Tensor& k, const torch::Tensor& v);

// An empty state of `mechanism` for the prefill's sizes (length n).
DecodeState new_state(const char* mechanism, const Dims& dims);
// The prefill's q, k, v and options, checked as a causal forward's.
Dims check_prefill(const char* op, const torch::Tensor& q, const torch::Tensor& k,
                   const torch::Tensor& v, const AttentionFuncOptions& options);
// q_t, k_t (B, H, 1, d) and v_t (B, H, 1, dv) of the state's sizes, for a state that
// `mechanism`'s prefill built.
void check_step(const char* op, const char* mechanism, const DecodeState& s, const torch::Tensor& q,
                const torch::Tensor& k, const torch::Tensor& v);
// The output of an empty prefix: (B, H, 0, dv).
torch::Tensor empty_output(const torch::Tensor& q, const Dims& dims);

// A state named `mechanism` holding the prefix's keys and values; the prefix's causal output
// mix(q, k, v).
std::pair<torch::Tensor, DecodeState> kv_cache_prefill(const char* op, const char* mechanism,
                                                       const MixFn& mix, const torch::Tensor& q,
                                                       const torch::Tensor& k,
                                                       const torch::Tensor& v,
                                                       const AttentionFuncOptions& options);
// Appends (k_t, v_t) and runs `mix` for q_t over every cached key.
torch::Tensor kv_cache_step(const char* op, const char* mechanism, const MixFn& mix,
                            DecodeState& s, const torch::Tensor& q, const torch::Tensor& k,
                            const torch::Tensor& v, const AttentionFuncOptions& options);

}  // namespace detail
}  // namespace functional
}  // namespace kvq
