#pragma once
// The encoder-only per-token classifier of the Key-Value Transformer's synthetic sequence tasks
// (Borji 2023, reverse / sort / copy / sub / swap; docs: tasks.md, experiment 1).
#include <torch/torch.h>

#include <string>
#include <vector>

#include "kvq/models/layers.h"

namespace kvq {
namespace models {

struct SequenceTaggerOptions {
  SequenceTaggerOptions(int64_t vocab_size, int64_t num_classes)
      : vocab_size_(vocab_size), num_classes_(num_classes) {}
  /// Input vocabulary V; tokens are in [0, V).
  TORCH_ARG(int64_t, vocab_size);
  /// Output classes per token.
  TORCH_ARG(int64_t, num_classes);
  /// Model width d. Default: 64.
  TORCH_ARG(int64_t, d_model) = 64;
  /// Attention heads; d_model must be a multiple. Default: 2.
  TORCH_ARG(int64_t, num_heads) = 2;
  /// Encoder blocks. Default: 2.
  TORCH_ARG(int64_t, num_layers) = 2;
  /// Feed-forward hidden width; 0 = 2 * d_model (the paper's). Default: 0.
  TORCH_ARG(int64_t, ffn_dim) = 0;
  /// Dropout in the blocks (residuals, FFN and, unless attention_dropout is set, attention
  /// weights) and in the head. Default: 0.1.
  TORCH_ARG(double, dropout) = 0.1;
  /// Dropout on the attention weights (mechanisms with a softmax only); unset = dropout. The
  /// paper's synthetic-task code has none (0). Default: unset.
  TORCH_ARG(c10::optional<double>, attention_dropout) = c10::nullopt;
  // mechanism, projection, alpha_init, alpha_floor, learn_alpha, pos_channels, pos_map, chunk_size,
  // scale (the score scale; unset = 1/sqrt(head width)): the fields of `attention`, the
  // options of every layer's attention (kvq/modules/attention_options.h).
  KVQ_ATTENTION_ARGS;
  /// One mechanism per layer (num_layers names); empty = `mechanism` everywhere. Default: empty.
  TORCH_ARG(std::vector<std::string>, mechanisms) = {};
  /// Pre-LN blocks and a final LayerNorm when true; Post-LN blocks (the paper's) when false.
  /// Default: false.
  TORCH_ARG(bool, norm_first) = false;
};

// one-hot(tokens) -> Linear(V, d) -> + sinusoidal PE -> num_layers Post-LN blocks (FFN 2d, ReLU)
// (or Pre-LN blocks and a final LayerNorm with norm_first) -> head Linear(d, d) - LayerNorm - ReLU - Dropout - Linear(d, num_classes), per token.
// tokens int64 (B, L) in [0, V) -> logits (B, L, num_classes). key_padding_mask (B, L) bool,
// true = padding (optional; the paper's tasks have none). Attention is bidirectional.
class SequenceTaggerImpl : public torch::nn::Cloneable<SequenceTaggerImpl> {
 public:
  SequenceTaggerImpl(int64_t vocab_size, int64_t num_classes)
      : SequenceTaggerImpl(SequenceTaggerOptions(vocab_size, num_classes)) {}
  explicit SequenceTaggerImpl(const SequenceTaggerOptions& options);

  void reset() override;

  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& key_padding_mask = {});

  SequenceTaggerOptions options;
  torch::nn::Linear embed{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm final_norm{nullptr};  // norm_first only
  torch::nn::Sequential head{nullptr};
};
TORCH_MODULE(SequenceTagger);

}  // namespace models
}  // namespace kvq
