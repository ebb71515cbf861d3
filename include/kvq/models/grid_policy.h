#pragma once
// The student of the policy-distillation experiment (Garnelo & Czarnecki 2023; docs: tasks.md,
// "Experiments of the Intention paper", item 3): a Transformer encoder over the cells of a grid
// world (kvq::env::observe), each cell a token of its type plus a learned 2D position
// (row embedding + column embedding), and a cls token whose final state gives the action logits.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "kvq/modules/attention_options.h"

namespace kvq {
namespace models {

struct GridPolicyOptions {
  GridPolicyOptions(int64_t num_types, int64_t num_actions)
      : num_types_(num_types), num_actions_(num_actions) {}
  /// Cell token types (kvq::env::kNumTokenTypes).
  TORCH_ARG(int64_t, num_types);
  /// Actions (kvq::env::kNumActions).
  TORCH_ARG(int64_t, num_actions);
  /// Largest grid height and width the position embeddings cover. Default: 32.
  TORCH_ARG(int64_t, max_side) = 32;
  /// Model width d. Default: 64.
  TORCH_ARG(int64_t, d_model) = 64;
  /// Attention heads. Default: 4.
  TORCH_ARG(int64_t, num_heads) = 4;
  /// Pre-LN encoder blocks. Default: 2.
  TORCH_ARG(int64_t, num_layers) = 2;
  /// Feed-forward width; 0 = 2 * d_model. Default: 0.
  TORCH_ARG(int64_t, ffn_dim) = 0;
  /// Dropout in the blocks. Default: 0.
  TORCH_ARG(double, dropout) = 0.0;
  // mechanism, projection, alpha_init, alpha_floor, learn_alpha, pos_channels, pos_map, chunk_size,
  // scale (the score scale; unset = 1/sqrt(head width)): the fields of `attention`, the
  // options of every layer's attention (kvq/modules/attention_options.h).
  KVQ_ATTENTION_ARGS;
  /// Per-layer mechanisms; empty = `mechanism` everywhere. Default: {}.
  TORCH_ARG(std::vector<std::string>, mechanisms) = {};
};

// tokens = type_embedding[types] + row_embedding[rows] + col_embedding[cols], (B, N, d);
// x = [cls; tokens] -> num_layers Pre-LN TransformerBlocks (non-causal) -> LayerNorm;
// logits = Linear(d, num_actions)(x_cls).
// types, rows, cols int64 (B, N) (types in [0, num_types), rows and cols in [0, max_side))
// -> logits (B, num_actions).
class GridPolicyImpl : public torch::nn::Cloneable<GridPolicyImpl> {
 public:
  explicit GridPolicyImpl(const GridPolicyOptions& options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& types, const torch::Tensor& rows,
                        const torch::Tensor& cols);

  GridPolicyOptions options;
  torch::nn::Embedding type_embedding{nullptr}, row_embedding{nullptr}, col_embedding{nullptr};
  torch::Tensor cls_token;  // (1, 1, d)
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm final_norm{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(GridPolicy);

}  // namespace models
}  // namespace kvq
