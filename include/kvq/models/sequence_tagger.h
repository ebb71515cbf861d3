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
  /// The encoder blocks (width, heads, feed-forward, dropout, Post-LN or Pre-LN, attention); the
  /// head's dropout is block.dropout, and Pre-LN blocks get a final LayerNorm. Default: the
  /// paper's d 64, 2 heads, feed-forward 2 * d, ReLU, dropout 0.1, Post-LN.
  TORCH_ARG(TransformerBlockOptions, block) = TransformerBlockOptions(64, 2).ffn_dim(128);
  /// Encoder blocks. Default: 2.
  TORCH_ARG(int64_t, num_layers) = 2;
  /// One mechanism per layer (num_layers names); empty = block.mechanism() everywhere.
  /// Default: empty.
  TORCH_ARG(std::vector<std::string>, mechanisms) = {};
};

// one-hot(tokens) -> Linear(V, d) -> + sinusoidal PE -> num_layers blocks (by default the paper's
// Post-LN, FFN 2d, ReLU; Pre-LN and a final LayerNorm with block.norm_first) -> head Linear(d, d)
// - LayerNorm - ReLU - Dropout - Linear(d, num_classes), per token.
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
  torch::nn::LayerNorm final_norm{nullptr};  // block.norm_first only
  torch::nn::Sequential head{nullptr};
};
TORCH_MODULE(SequenceTagger);

}  // namespace models
}  // namespace kvq
