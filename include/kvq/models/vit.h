#pragma once
// Vision Transformer of the Key-Value Transformer paper's image experiments (Borji 2023, after
// Dosovitskiy et al. 2021; MNIST / Fashion-MNIST / CIFAR; docs: tasks.md, experiment 2).
#include <torch/torch.h>

#include <string>
#include <vector>

#include "kvq/models/layers.h"

namespace kvq {
namespace models {

struct ViTOptions {
  ViTOptions(int64_t image_size, int64_t patch_size, int64_t num_classes)
      : image_size_(image_size), patch_size_(patch_size), num_classes_(num_classes) {}
  /// Side of the square input image, in pixels.
  TORCH_ARG(int64_t, image_size);
  /// Side of a square patch; must divide image_size.
  TORCH_ARG(int64_t, patch_size);
  /// Output classes.
  TORCH_ARG(int64_t, num_classes);
  /// Image channels C. Default: 1.
  TORCH_ARG(int64_t, in_channels) = 1;
  /// The blocks; they must be Pre-LN (norm_first), and a final LayerNorm follows them. The head's
  /// hidden width is the blocks' feed-forward width. Default: the paper's d 128, 4 heads,
  /// feed-forward d, GELU, no dropout.
  TORCH_ARG(TransformerBlockOptions, block) =
      TransformerBlockOptions(128, 4).ffn_dim(128).activation("gelu").dropout(0.0).norm_first(
          true);
  /// Blocks. Default: 4.
  TORCH_ARG(int64_t, num_layers) = 4;
  /// Dropout on the token sequence after the position embedding. Default: 0.
  TORCH_ARG(double, embedding_dropout) = 0.0;
  /// One mechanism per layer (num_layers names); empty = block.mechanism() everywhere.
  /// Default: empty.
  TORCH_ARG(std::vector<std::string>, mechanisms) = {};
};

// Split (B, C, H, W) into N = (H / p) (W / p) patches, row-major, each flattened in (p_row, p_col,
// channel) order (einops "b c (h p1) (w p2) -> b (h w) (p1 p2 c)") -> (B, N, p * p * C).
torch::Tensor image_to_patches(const torch::Tensor& images, int64_t patch_size);

// patches -> Linear(p*p*C, d); prepend a learned cls token; + learned position embedding
// (1, N + 1, d); dropout; num_layers Pre-LN blocks (MLP width F = block.ffn_width(), the
// paper's GELU); LayerNorm; head Linear(d, F) - GELU - Linear(F, num_classes) on the cls token.
// images float (B, C, image_size, image_size) -> logits (B, num_classes).
class ViTImpl : public torch::nn::Cloneable<ViTImpl> {
 public:
  ViTImpl(int64_t image_size, int64_t patch_size, int64_t num_classes)
      : ViTImpl(ViTOptions(image_size, patch_size, num_classes)) {}
  explicit ViTImpl(const ViTOptions& options);

  void reset() override;

  torch::Tensor forward(const torch::Tensor& images);

  // N + 1: the patches and the cls token.
  int64_t num_tokens() const;

  ViTOptions options;
  torch::nn::Linear patch_embedding{nullptr};
  torch::Tensor cls_token;           // (1, 1, d)
  torch::Tensor position_embedding;  // (1, N + 1, d)
  torch::nn::Dropout embedding_dropout{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm final_norm{nullptr};
  torch::nn::Sequential head{nullptr};
};
TORCH_MODULE(ViT);

}  // namespace models
}  // namespace kvq
