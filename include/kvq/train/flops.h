#pragma once
// Model FLOP utilisation (MFU, as nanoGPT and PaLM report it): the model FLOPs a run does per
// second over the machine's dense-matmul rate. The model FLOPs of an update are 3 x its forward
// FLOPs (the backward costs twice the forward), counted from the model's matrix products: its
// Linear layers and its attention (the registry's analytic formula of each mechanism, which
// counts what kvq computes); a multiply-add is 2 FLOPs, elementwise work is not counted.
#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace kvq {
namespace train {

// Forward FLOPs of the torch::nn::Linear layers of `model` (its submodules, recursively) for one
// position that passes through all of them: 2 x in_features x out_features summed over them.
double linear_flops_per_position(const torch::nn::Module& model);

// Forward FLOPs of one self-attention call of `mechanism` over one sequence: `heads` heads of
// width `head_dim`, `length` queries and keys, causal or not, chunk length `chunk` (0 = the head
// width) for the chunk-parallel mechanisms (MechanismInfo::forward_flops at batch 1).
double attention_flops(const std::string& mechanism, int64_t heads, int64_t length,
                       int64_t head_dim, bool causal, int64_t chunk);

// The dense-matmul rate of `device` in FLOP/s: the best of `repeats` products of two `size` x
// `size` matrices of `dtype` with torch::mm (after one warm-up), at the current thread count.
// Draws no random numbers (a run's generator state is left as it was).
double measure_gemm_flops(torch::ScalarType dtype, const torch::Device& device, int64_t size,
                          int repeats);

}  // namespace train
}  // namespace kvq
