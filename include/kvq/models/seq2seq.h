#pragma once
// Encoder-decoder Transformer for translation: the Key-Value Transformer paper's Multi30k
// experiment, built as the Annotated Transformer it follows (Pre-LN, sinusoidal positions,
// embeddings scaled by sqrt(d), greedy decoding; docs: tasks.md, experiment 4).
#include <torch/torch.h>

#include <string>
#include <vector>

#include "kvq/models/layers.h"

namespace kvq {
namespace models {

struct Seq2SeqOptions {
  Seq2SeqOptions(int64_t src_vocab_size, int64_t tgt_vocab_size)
      : src_vocab_size_(src_vocab_size), tgt_vocab_size_(tgt_vocab_size) {}
  /// Source vocabulary; source tokens are in [0, src_vocab_size).
  TORCH_ARG(int64_t, src_vocab_size);
  /// Target vocabulary; target tokens are in [0, tgt_vocab_size).
  TORCH_ARG(int64_t, tgt_vocab_size);
  /// The encoder and decoder blocks; they must be Pre-LN (norm_first), and each stack ends with a
  /// LayerNorm. block.dropout also applies to the embeddings. Default: d 128, 4 heads,
  /// feed-forward 4 * d, ReLU, dropout 0.1.
  TORCH_ARG(TransformerBlockOptions, block) = TransformerBlockOptions(128, 4).norm_first(true);
  /// Encoder blocks. Default: 2.
  TORCH_ARG(int64_t, num_encoder_layers) = 2;
  /// Decoder blocks. Default: 2.
  TORCH_ARG(int64_t, num_decoder_layers) = 2;
  /// One mechanism per layer, encoder layers first, then decoder layers (each decoder layer uses
  /// its mechanism for self- and cross-attention); empty = block.mechanism() everywhere.
  /// Default: empty.
  TORCH_ARG(std::vector<std::string>, mechanisms) = {};
};

// The decoding state of a Seq2Seq decoder: per decoder block, its self-attention cache and its
// cross-attention's projected memory.
struct Seq2SeqCache {
  std::vector<DecoderBlockCache> layers;
  // Target tokens in the cache; the next one has position length().
  int64_t length() const { return layers.empty() ? 0 : layers.front().self.length(); }
};

// Encoder: Embedding(src) * sqrt(d) + PE -> dropout -> Pre-LN blocks -> LayerNorm = memory.
// Decoder: Embedding(tgt) * sqrt(d) + PE -> dropout -> Pre-LN decoder blocks (causal
// self-attention, cross-attention over memory) -> LayerNorm -> Linear(d, tgt_vocab_size).
// Padding masks are (B, S) / (B, T) bool, true = padding: padded source tokens never reach any
// output; padded target positions are hidden from the other target positions.
class Seq2SeqImpl : public torch::nn::Cloneable<Seq2SeqImpl> {
 public:
  Seq2SeqImpl(int64_t src_vocab_size, int64_t tgt_vocab_size)
      : Seq2SeqImpl(Seq2SeqOptions(src_vocab_size, tgt_vocab_size)) {}
  explicit Seq2SeqImpl(const Seq2SeqOptions& options);

  void reset() override;

  // src int64 (B, S), tgt int64 (B, T) (teacher forcing: the decoder input)
  // -> logits (B, T, V_tgt);
  // the logits at t depend on tgt tokens 0 .. t and on the unpadded source.
  torch::Tensor forward(const torch::Tensor& src, const torch::Tensor& tgt,
                        const torch::Tensor& src_padding_mask = {},
                        const torch::Tensor& tgt_padding_mask = {});
  // src int64 (B, S) -> memory (B, S, d).
  torch::Tensor encode(const torch::Tensor& src, const torch::Tensor& src_padding_mask = {});
  // tgt int64 (B, T), memory (B, S, d) -> logits (B, T, V_tgt).
  torch::Tensor decode(const torch::Tensor& tgt, const torch::Tensor& memory,
                       const torch::Tensor& src_padding_mask = {},
                       const torch::Tensor& tgt_padding_mask = {});

  // Incremental decoding. decode_prefill: decode(tgt, memory, src_padding_mask) (B, T, V_tgt),
  // and `cache` holds the T target tokens and every layer's projected memory. decode_step: tgt
  // (B, 1), the token at position cache.length() -> its logits (B, 1, V_tgt), the last row of
  // decode over all target tokens so far; advances `cache`. Inference only.
  torch::Tensor decode_prefill(const torch::Tensor& tgt, const torch::Tensor& memory,
                               const torch::Tensor& src_padding_mask, Seq2SeqCache& cache);
  torch::Tensor decode_step(const torch::Tensor& tgt, Seq2SeqCache& cache);

  // Greedy decoding: starts every row with `bos`, appends argmax tokens, and stops when every row
  // has produced `eos` or the output has max_len tokens (bos included). Tokens after a row's first
  // eos are eos. Runs without autograd; call eval() first so dropout is off.
  // src int64 (B, S) -> int64 (B, T) with 1 <= T <= max_len, on src's device.
  // use_cache: one decode_step per token (default); false = decode the whole prefix again at
  // every step, the reference path. The tokens are the same either way.
  torch::Tensor greedy_decode(const torch::Tensor& src, const torch::Tensor& src_padding_mask,
                              int64_t bos, int64_t eos, int64_t max_len, bool use_cache = true);

  Seq2SeqOptions options;
  torch::nn::Embedding src_embedding{nullptr}, tgt_embedding{nullptr};
  torch::nn::ModuleList encoder_blocks{nullptr}, decoder_blocks{nullptr};
  torch::nn::LayerNorm encoder_norm{nullptr}, decoder_norm{nullptr};
  torch::nn::Linear output{nullptr};
  torch::nn::Dropout dropout{nullptr};

 private:
  // dropout(Embedding(tgt) * sqrt(d) + PE) for tgt (B, T) at positions first_position ...
  torch::Tensor embed_target(const torch::Tensor& tgt, int64_t first_position);
};
TORCH_MODULE(Seq2Seq);

}  // namespace models
}  // namespace kvq
