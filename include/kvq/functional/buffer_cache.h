#pragma once
// The buffer cache of kvq's CPU kernels. Their outputs, saved state and input gradients of 1 MiB
// or more come from a cache of buffers that kvq tensors freed before, as PyTorch's CUDA caching
// allocator does on a GPU: a training step or a repeated call reuses memory already mapped
// instead of asking the system for fresh pages, which it maps and zeroes page by page. glibc's
// malloc hands every block of 32 MiB or more back to the system when it is freed, so without the
// cache a causal intention step at T = 4096 (B 4, H 8, d 64) faults in 256 MiB on every call
// (docs/kernels.md, "Fresh memory"). The cache keeps at most its limit in idle buffers.
#include <torch/torch.h>

#include <cstdint>

namespace kvq {
namespace functional {

// Bytes held in idle buffers now (not in use by any tensor).
int64_t buffer_cache_bytes();

// The most bytes the cache keeps idle; a freed buffer beyond it goes back to the system. The
// default is 2 GiB, or KVQ_BUFFER_CACHE_MIB from the environment when the process first uses the
// cache. 0 turns the cache off.
int64_t buffer_cache_limit();
void set_buffer_cache_limit(int64_t bytes);

// Returns every idle buffer to the system (as torch.cuda.empty_cache() does on a GPU).
void empty_buffer_cache();

namespace detail {

// A contiguous CPU tensor of `sizes` with `options` (dtype; CPU), uninitialised, its storage from
// the cache: an ordinary resizable tensor whose memory returns to the cache when freed.
torch::Tensor cached_empty(at::IntArrayRef sizes, const torch::TensorOptions& options);

// For tests: fill every buffer handed out again with 0xFF bytes (NaN in float32 and float64),
// so that a kernel reading memory it did not write shows up.
void set_buffer_cache_poison(bool on);

}  // namespace detail
}  // namespace functional
}  // namespace kvq
