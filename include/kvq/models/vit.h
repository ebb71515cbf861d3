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
  /// Model width d. Default: 128.
  TORCH_ARG(int64_t, d_model) = 128;
  /// Attention heads; d_model must be a multiple. Default: 4.
  TORCH_ARG(int64_t, num_heads) = 4;
  /// Blocks. Default: 4.
  TORCH_ARG(int64_t, num_layers) = 4;
  /// Hidden width of the block MLPs and of the head; 0 = d_model (the paper's). Default: 0.
  TORCH_ARG(int64_t, mlp_dim) = 0;
  /// Dropout on residual branches, MLP hidden layers and attention weights. Default: 0.
  TORCH_ARG(double, dropout) = 0.0;
  /// Dropout on the token sequence after the position embedding. Default: 0.
  TORCH_ARG(double, embedding_dropout) = 0.0;
  // mechanism, projection, alpha_init, alpha_floor, learn_alpha, pos_channels, pos_map, chunk_size,
  // scale (the score scale; unset = 1/sqrt(head width)): the fields of `attention`, the
  // options of every layer's attention (kvq/modules/attention_options.h).
  KVQ_ATTENTION_ARGS;
  /// One mechanism per layer (num_layers names); empty = `mechanism` everywhere. Default: empty.
  TORCH_ARG(std::vector<std::string>, mechanisms) = {};
};

// Split (B, C, H, W) into N = (H / p) (W / p) patches, row-major, each flattened in (p_row, p_col,
// channel) order (einops "b c (h p1) (w p2) -> b (h w) (p1 p2 c)") -> (B, N, p * p * C).
torch::Tensor image_to_patches(const torch::Tensor& images, int64_t patch_size);

// patches -> Linear(p*p*C, d); prepend a learned cls token; + learned position embedding
// (1, N + 1, d); dropout; num_layers Pre-LN blocks (MLP width mlp_dim, GELU); LayerNorm;
// head Linear(d, mlp_dim) - GELU - Linear(mlp_dim, num_classes) on the cls token.
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
