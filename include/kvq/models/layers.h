#pragma once
// Building blocks of the kvq models: a Transformer block whose attention is any KVQ mechanism
// (kvq::nn::MultiHeadKVQ), its decoder twin with cross-attention, and the fixed sinusoidal position
// table. Learned position embeddings are plain torch::nn::Embedding.
//
// Layout everywhere: (B, T, d_model), batch first. Masks follow PyTorch: key_padding_mask is (B, T)
// bool, true = that position is padding and no query may attend to it.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "kvq/modules/multi_head_kvq.h"

namespace kvq {
namespace models {

// Vaswani et al. 2017 sinusoidal position table, (length, dim):
//   PE[t, 2i] = sin(t / 10000^(2i / dim)),  PE[t, 2i + 1] = cos(t / 10000^(2i / dim)),
// positions t = 0 .. length - 1. An odd dim ends with a sine column.
torch::Tensor sinusoidal_positional_encoding(int64_t length, int64_t dim,
                                             torch::TensorOptions options = torch::kFloat32);

// The mechanism of each of `num_layers` layers: `mechanisms` when it is non-empty (it must then
// have num_layers entries), otherwise attention.mechanism() repeated; `attention` is checked for
// those layers (nn::check_attention_options: names, values, and no option that applies to none
// of them). Errors name `owner` and the offending option. Layer i then runs with
// nn::layer_attention(attention, result[i]).
std::vector<std::string> layer_mechanisms(const std::string& owner,
                                          const nn::AttentionOptions& attention,
                                          const std::vector<std::string>& mechanisms,
                                          int64_t num_layers);

// Checks that `tokens` is int64 (B, T) with values in [0, vocab_size); errors name `owner` and
// `arg`. Reads the extremes back to the host (one device sync).
void check_tokens(const char* owner, const char* arg, const torch::Tensor& tokens,
                  int64_t vocab_size);

// The options of one Transformer block, and of every block of a model's stack (the models'
// `block`, with num_layers beside it, as torch::nn::TransformerEncoderOptions holds its layer's
// options). One meaning of every field wherever it appears.
struct TransformerBlockOptions {
  TransformerBlockOptions(int64_t d_model, int64_t num_heads)
      : d_model_(d_model), num_heads_(num_heads) {}
  /// Model width d; a positive multiple of num_heads.
  TORCH_ARG(int64_t, d_model);
  /// Attention heads H.
  TORCH_ARG(int64_t, num_heads);
  /// Hidden width of the feed-forward network; 0 = 4 * d_model. Default: 0.
  TORCH_ARG(int64_t, ffn_dim) = 0;
  /// Feed-forward activation, "relu" or "gelu" (exact erf form). Default: "relu".
  TORCH_ARG(std::string, activation) = "relu";
  /// Dropout on both residual branches and on the feed-forward hidden layer, and on the attention
  /// weights unless attention.dropout is set. Default: 0.1.
  TORCH_ARG(double, dropout) = 0.1;
  /// Pre-LN (x + f(LN(x))) when true, Post-LN (LN(x + f(x)), Vaswani et al.) when false.
  /// Default: false.
  TORCH_ARG(bool, norm_first) = false;
  /// LayerNorm epsilon. Default: 1e-5.
  TORCH_ARG(double, layer_norm_eps) = 1e-5;
  /// Biases in the attention projections and the feed-forward layers. Default: true.
  TORCH_ARG(bool, bias) = true;
  // mechanism, projection, alpha_init, alpha_floor, learn_alpha, pos_channels, pos_map, chunk_size,
  // scale (the attention's score scale; unset = 1/sqrt(head width)): the fields of `attention`,
  // settable here directly. The attention dropout is attention().dropout() (unset = dropout).
  KVQ_ATTENTION_ARGS;

 public:
  // The options of this block's MultiHeadKVQ (self- and cross-attention alike): d_model,
  // num_heads, bias, and `attention` with its dropout resolved (unset = dropout).
  kvq::nn::MultiHeadKVQOptions multi_head_options() const;
  // The feed-forward hidden width: ffn_dim, or 4 * d_model when it is 0.
  int64_t ffn_width() const;
};

// Checks `block` as the blocks of `owner` (a model or a layer) running `mechanisms` (empty =
// block.mechanism()): d_model a positive multiple of num_heads, ffn_dim >= 0, activation relu or
// gelu, dropout in [0, 1), layer_norm_eps > 0, and the attention options for those layers
// (nn::check_attention_options). Errors start with `owner`.
void check_block_options(const std::string& owner, const TransformerBlockOptions& block,
                         const std::vector<std::string>& mechanisms = {});

// The options of one layer of a stack built from `block`: `block` with the attention of a layer
// running `mechanism` (nn::layer_attention).
TransformerBlockOptions layer_block(const TransformerBlockOptions& block,
                                    const std::string& mechanism);

// The options of each of the `num_layers` layers of `owner`'s stack built from `block`: layer i
// runs layer_mechanisms(owner, block.attention(), mechanisms, num_layers)[i] with layer_block.
// Checks num_layers >= 1, `block` for those layers (check_block_options) and, with
// `needs_norm_first` (a model whose stack ends with a LayerNorm), block.norm_first.
std::vector<TransformerBlockOptions> layer_blocks(const std::string& owner,
                                                  const TransformerBlockOptions& block,
                                                  const std::vector<std::string>& mechanisms,
                                                  int64_t num_layers,
                                                  bool needs_norm_first = false);

// Encoder / decoder-only block: self-attention through MultiHeadKVQ, then the feed-forward network
// FFN(x) = W2 dropout(act(W1 x + b1)) + b2, each in a residual branch with dropout.
//   Post-LN: x = LN1(x + drop(SA(x)));   x = LN2(x + drop(FFN(x)))
//   Pre-LN:  x = x + drop(SA(LN1(x)));   x = x + drop(FFN(LN2(x)))
// Pre-LN stacks need a final LayerNorm after the last block (the models add it).
// x (B, T, d) -> (B, T, d); key_padding_mask (B, T) bool, true = padding; causal: t sees s <= t.
class TransformerBlockImpl : public torch::nn::Cloneable<TransformerBlockImpl> {
 public:
  TransformerBlockImpl(int64_t d_model, int64_t num_heads)
      : TransformerBlockImpl(TransformerBlockOptions(d_model, num_heads)) {}
  explicit TransformerBlockImpl(const TransformerBlockOptions& options);

  void reset() override;

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& key_padding_mask = {},
                        bool causal = false);
  // The feed-forward branch alone, without dropout on its output: (B, T, d) -> (B, T, d).
  torch::Tensor feed_forward(const torch::Tensor& x);

  // Incremental causal decoding (MultiHeadKVQ::prefill / step): prefill x (B, T, d) returns
  // forward(x, key_padding_mask, causal=true) and fills `cache`; step x_t (B, 1, d) returns the row
  // the causal forward over all tokens so far gives the new token, and advances `cache`.
  torch::Tensor prefill(const torch::Tensor& x, kvq::nn::AttentionCache& cache,
                        const torch::Tensor& key_padding_mask = {});
  torch::Tensor step(const torch::Tensor& x_t, kvq::nn::AttentionCache& cache);

  TransformerBlockOptions options;
  kvq::nn::MultiHeadKVQ self_attn{nullptr};
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Linear linear1{nullptr}, linear2{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(TransformerBlock);

// What a decoder block keeps between decoding steps: its causal self-attention cache and its
// cross-attention's projected memory.
struct DecoderBlockCache {
  kvq::nn::AttentionCache self;
  kvq::nn::MemoryCache memory;
};

// Decoder block of an encoder-decoder model: causal self-attention, cross-attention over the
// encoder output (queries from the decoder, keys and values from `memory`), feed-forward.
//   Post-LN: x = LN1(x + drop(SA(x)));  x = LN2(x + drop(CA(x, mem)));  x = LN3(x + drop(FFN(x)))
//   Pre-LN:  x = x + drop(SA(LN1(x)));  x = x + drop(CA(LN2(x), mem));  x = x + drop(FFN(LN3(x)))
// memory is used as given (a Pre-LN encoder normalises its output once, at its end).
// x (B, T, d), memory (B, S, d) -> (B, T, d). tgt_padding_mask (B, T), memory_padding_mask (B, S),
// bool, true = padding. causal applies to the self-attention only.
class TransformerDecoderBlockImpl : public torch::nn::Cloneable<TransformerDecoderBlockImpl> {
 public:
  TransformerDecoderBlockImpl(int64_t d_model, int64_t num_heads)
      : TransformerDecoderBlockImpl(TransformerBlockOptions(d_model, num_heads)) {}
  explicit TransformerDecoderBlockImpl(const TransformerBlockOptions& options);

  void reset() override;

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& memory,
                        const torch::Tensor& tgt_padding_mask = {},
                        const torch::Tensor& memory_padding_mask = {}, bool causal = true);
  // The feed-forward branch alone, without dropout on its output: (B, T, d) -> (B, T, d).
  torch::Tensor feed_forward(const torch::Tensor& x);

  // Incremental decoding: prefill returns forward(x, memory, tgt_padding_mask,
  // memory_padding_mask, causal=true) and fills `cache` (memory projected once); step x_t (B, 1, d)
  // returns the new token's row and advances `cache`.
  torch::Tensor prefill(const torch::Tensor& x, const torch::Tensor& memory,
                        DecoderBlockCache& cache, const torch::Tensor& tgt_padding_mask = {},
                        const torch::Tensor& memory_padding_mask = {});
  torch::Tensor step(const torch::Tensor& x_t, DecoderBlockCache& cache);

  TransformerBlockOptions options;
  kvq::nn::MultiHeadKVQ self_attn{nullptr}, cross_attn{nullptr};
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  torch::nn::Linear linear1{nullptr}, linear2{nullptr};
  torch::nn::Dropout dropout{nullptr};

 private:
  void check_decoder_inputs(const torch::Tensor& x, const torch::Tensor& memory) const;
};
TORCH_MODULE(TransformerDecoderBlock);

}  // namespace models
}  // namespace kvq
