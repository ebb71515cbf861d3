#pragma once
// Decoder-only (GPT) language model: the character-level generation experiment of the Key-Value
// Transformer paper (Borji 2023; Karpathy's gpt.py / nanoGPT) and the word-level "human numbers"
// model (docs: tasks.md, experiments 3 and 5).
#include <torch/torch.h>

#include <string>
#include <vector>

#include "kvq/models/layers.h"

namespace kvq {
namespace models {

struct LanguageModelOptions {
  explicit LanguageModelOptions(int64_t vocab_size) : vocab_size_(vocab_size) {}
  /// Vocabulary V; tokens are in [0, V).
  TORCH_ARG(int64_t, vocab_size);
  /// Longest input T (learned positions 0 .. context_length - 1). Default: 64.
  TORCH_ARG(int64_t, context_length) = 64;
  /// The blocks; they must be Pre-LN (norm_first), and a final LayerNorm follows them (GPT-2).
  /// Default: d 192, 3 heads, feed-forward 4 * d, ReLU (gpt.py; nanoGPT's is "gelu"), dropout 0.2
  /// on residual branches, feed-forward hidden layer and attention weights.
  TORCH_ARG(TransformerBlockOptions, block) =
      TransformerBlockOptions(192, 3).dropout(0.2).norm_first(true);
  /// Blocks. Default: 6.
  TORCH_ARG(int64_t, num_layers) = 6;
  /// One mechanism per layer (num_layers names); empty = block.mechanism() everywhere.
  /// Default: empty.
  TORCH_ARG(std::vector<std::string>, mechanisms) = {};
};

struct GenerateOptions {
  /// Tokens appended to the prompt. Default: 100.
  TORCH_ARG(int64_t, max_new_tokens) = 100;
  /// Logits are divided by it before the softmax; > 0. Default: 1.
  TORCH_ARG(double, temperature) = 1.0;
  /// Sample only among the k most likely tokens; 0 = all. Default: 0.
  TORCH_ARG(int64_t, top_k) = 0;
  /// Seed of the CPU generator used when generate() is given none. Default: 0.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Decode with the per-layer caches: prefill the prompt, then one step per token (for linear and
  /// intention constant time per token). false = run the whole window again for every token, the
  /// reference path. The tokens are the same either way. Default: true.
  TORCH_ARG(bool, use_cache) = true;
};

// The decoding state of a LanguageModel: one attention cache per block (kvq/modules/
// attention_cache.h).
struct LanguageModelCache {
  std::vector<kvq::nn::AttentionCache> layers;
  // Tokens in the cache; the next token has position length().
  int64_t length() const { return layers.empty() ? 0 : layers.front().length(); }
};

// tokens (B, T) -> tok_emb + pos_emb(0 .. T-1) -> num_layers Pre-LN causal blocks -> LayerNorm ->
// Linear(d_model, V). Embeddings and the output layer start from N(0, 0.02) (gpt.py).
// tokens int64 (B, T), T <= context_length, values in [0, V) -> logits (B, T, V); the logits at t
// depend on tokens 0 .. t only.
class LanguageModelImpl : public torch::nn::Cloneable<LanguageModelImpl> {
 public:
  explicit LanguageModelImpl(int64_t vocab_size)
      : LanguageModelImpl(LanguageModelOptions(vocab_size)) {}
  explicit LanguageModelImpl(const LanguageModelOptions& options);

  void reset() override;

  torch::Tensor forward(const torch::Tensor& tokens);

  // Incremental decoding. prefill: tokens (B, T), 1 <= T <= context_length -> forward(tokens)
  // (B, T, V), and `cache` holds the T tokens. step: tokens (B, 1), the token at position
  // cache.length() < context_length -> its logits (B, 1, V), the last row of forward over all
  // tokens so far; advances `cache`. Inference only (run under torch::NoGradGuard).
  torch::Tensor prefill(const torch::Tensor& tokens, LanguageModelCache& cache);
  torch::Tensor step(const torch::Tensor& tokens, LanguageModelCache& cache);

  // Autoregressive sampling: appends max_new_tokens tokens to `prompt` (int64 (B, T0), T0 >= 1),
  // each drawn from softmax(logits_last / temperature) restricted to the top_k logits, conditioning
  // on the last context_length tokens. Draws come from `generator` (a CPU generator, advanced in
  // place) or else from a fresh one seeded with options.seed; sampling runs on the CPU, so a seed
  // gives the same tokens on any device. Runs without autograd; dropout follows the module's mode,
  // so call eval() first for reproducible output. Returns int64 (B, T0 + max_new_tokens) on the
  // prompt's device.
  // With options.use_cache (the default) the prompt is prefilled and each new token is one step.
  // Past context_length tokens the window slides by one token per new token: every token in it
  // changes position, so nothing cached stays valid, and each new token runs the last
  // context_length tokens through the model again (a prefill whose state is dropped, since the
  // next token slides the window again): what the uncached path costs, with the same tokens.
  torch::Tensor generate(const torch::Tensor& prompt, const GenerateOptions& options = {},
                         c10::optional<at::Generator> generator = c10::nullopt);

  LanguageModelOptions options;
  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm final_norm{nullptr};
  torch::nn::Linear lm_head{nullptr};

 private:
  // Token plus position embeddings of tokens (B, T) at positions first_position ...
  torch::Tensor embed(const torch::Tensor& tokens, int64_t first_position);
  // tokens (B, T) with 1 <= T <= context_length; `op` ("", "::prefill") names the caller.
  void check_window(const char* op, const torch::Tensor& tokens) const;
};
TORCH_MODULE(LanguageModel);

}  // namespace models
}  // namespace kvq
