#pragma once
// The student of the policy-distillation experiment (Garnelo & Czarnecki 2023; docs: tasks.md,
// "Experiments of the Intention paper", item 3): a Transformer encoder over the cells of a grid
// world (kvq::env::observe), each cell a token of its type plus a learned 2D position
// (row embedding + column embedding), and a cls token whose final state gives the action logits.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "kvq/models/layers.h"

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
  /// The encoder blocks; they must be Pre-LN (norm_first), and a final LayerNorm follows them.
  /// Default: d 64, 4 heads, feed-forward 2 * d, ReLU, no dropout.
  TORCH_ARG(TransformerBlockOptions, block) =
      TransformerBlockOptions(64, 4).ffn_dim(128).dropout(0.0).norm_first(true);
  /// Encoder blocks. Default: 2.
  TORCH_ARG(int64_t, num_layers) = 2;
  /// One mechanism per layer (num_layers names); empty = block.mechanism() everywhere.
  /// Default: empty.
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
