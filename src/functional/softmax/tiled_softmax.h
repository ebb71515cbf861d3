#pragma once
// The binding of the tiled CPU softmax-attention kernel (src/kernels/cpu/): checks and unpacks
// tensors into the kernel's parameter structs, and wraps forward and backward in one autograd
// function (the backward recomputes the scores from the saved log-sum-exp).
#include <torch/torch.h>

namespace kvq {
namespace functional {
namespace detail {

// Whether the tiled kernel takes a call with these inputs: CPU float32/float64 tensors.
bool tiled_softmax_supports(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

// Dropout on the normalised attention weights and the tile sizes of one call. Weight (b, h, i, j)
// is kept, and scaled by 1 / (1 - dropout), when Philox 4x32-10 keyed by dropout_seed says so at
// counter (j / 4, i, b * H + h, dropout_offset) (src/kernels/cpu/attention_dropout.h): the mask is
// a function of these numbers alone, regenerated in the backward, independent of tiles and
// threads. Tile sizes are for tests; the defaults are the kernel's.
struct TiledSoftmaxOptions {
  double dropout = 0.0;  // in [0, 1); 0 = none
  uint64_t dropout_seed = 0;
  uint32_t dropout_offset = 0;
  int64_t query_block = 0, key_block = 0;  // 0 = the kernel's default
};

// A fresh dropout seed: one 64-bit draw from torch's default CPU generator, so that
// torch::manual_seed reproduces the masks of a run.
uint64_t draw_dropout_seed();

// O = softmax(scale * Q K^T + bias, masked) V without an m x n buffer.
// q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv); bias undefined or broadcastable to
// (B, H, m, n) (its gradient is summed back to its shape; only a bias with both an m and an n
// dimension makes that gradient m x n); key_padding_mask undefined or (B, n) bool, true = ignore;
// causal needs m == n. Rows with no visible key output zeros; rows that see a NaN or an infinity
// (in q, a visible k or v row, or a visible bias entry that is NaN or +inf) output NaN. Returns
// (B, H, m, dv), contiguous.
torch::Tensor tiled_softmax_attention(const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& v, const torch::Tensor& bias,
                                      const torch::Tensor& key_padding_mask, double scale,
                                      bool causal, const TiledSoftmaxOptions& tiled = {});

// For tests: the (B, H, m, n) bool mask (true = kept) that tiled_softmax_attention applies with
// these dropout settings, so that a dense composition can apply the same one:
// softmax(S) * mask / (1 - p).
torch::Tensor tiled_softmax_dropout_mask(int64_t B, int64_t H, int64_t m, int64_t n,
                                         const TiledSoftmaxOptions& tiled);

}  // namespace detail
}  // namespace functional
}  // namespace kvq
