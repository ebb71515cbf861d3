#include "kvq/models/sequence_tagger.h"

namespace kvq {
namespace models {

SequenceTaggerImpl::SequenceTaggerImpl(const SequenceTaggerOptions& options_) : options(options_) {
  reset();
}

void SequenceTaggerImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.vocab_size() > 0, "SequenceTagger: vocab_size must be > 0, got ", o.vocab_size());
  TORCH_CHECK(o.num_classes() > 0, "SequenceTagger: num_classes must be > 0, got ",
              o.num_classes());
  TORCH_CHECK(o.num_layers() > 0, "SequenceTagger: num_layers must be > 0, got ", o.num_layers());
  TORCH_CHECK(o.ffn_dim() >= 0, "SequenceTagger: ffn_dim must be >= 0 (0 = 2 * d_model), got ",
              o.ffn_dim());
  TORCH_CHECK(o.dropout() >= 0.0 && o.dropout() < 1.0,
              "SequenceTagger: dropout must be in [0, 1), got ", o.dropout());
  const auto names =
      layer_mechanisms("SequenceTagger", o.attention(), o.mechanisms(), o.num_layers());

  const int64_t d = o.d_model();
  embed = register_module("embed", torch::nn::Linear(o.vocab_size(), d));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (const auto& name : names) {
    blocks->push_back(TransformerBlock(TransformerBlockOptions(d, o.num_heads())
                                           .ffn_dim(o.ffn_dim() == 0 ? 2 * d : o.ffn_dim())
                                           .activation("relu")
                                           .dropout(o.dropout())
                                           .attention_dropout(o.attention_dropout())
                                           .norm_first(o.norm_first())
                                           .attention(nn::layer_attention(o.attention(), name))));
  }
  final_norm = nullptr;
  if (o.norm_first()) {
    final_norm =
        register_module("final_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  }
  head = register_module(
      "head", torch::nn::Sequential(torch::nn::Linear(d, d),
                                    torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})),
                                    torch::nn::ReLU(), torch::nn::Dropout(o.dropout()),
                                    torch::nn::Linear(d, o.num_classes())));
}

torch::Tensor SequenceTaggerImpl::forward(const torch::Tensor& tokens,
                                          const torch::Tensor& key_padding_mask) {
  check_tokens("SequenceTagger", "tokens", tokens, options.vocab_size());
  auto weight = embed->weight;
  auto x = embed(torch::one_hot(tokens, options.vocab_size()).to(weight.scalar_type()));
  x = x + sinusoidal_positional_encoding(tokens.size(1), options.d_model(), x.options());
  for (size_t i = 0; i < blocks->size(); ++i) {
    x = blocks->ptr<TransformerBlockImpl>(i)->forward(x, key_padding_mask, /*causal=*/false);
  }
  if (!final_norm.is_empty()) x = final_norm(x);
  return head->forward(x);
}

}  // namespace models
}  // namespace kvq
