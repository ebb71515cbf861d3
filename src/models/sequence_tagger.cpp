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
  const auto layers = layer_blocks("SequenceTagger", o.block(), o.mechanisms(), o.num_layers());
  const int64_t d = o.block().d_model();
  embed = register_module("embed", torch::nn::Linear(o.vocab_size(), d));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (const auto& layer : layers) blocks->push_back(TransformerBlock(layer));
  final_norm = nullptr;
  if (o.block().norm_first()) {
    final_norm =
        register_module("final_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  }
  head = register_module(
      "head", torch::nn::Sequential(torch::nn::Linear(d, d),
                                    torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})),
                                    torch::nn::ReLU(), torch::nn::Dropout(o.block().dropout()),
                                    torch::nn::Linear(d, o.num_classes())));
}

torch::Tensor SequenceTaggerImpl::forward(const torch::Tensor& tokens,
                                          const torch::Tensor& key_padding_mask) {
  check_tokens("SequenceTagger", "tokens", tokens, options.vocab_size());
  auto weight = embed->weight;
  auto x = embed(torch::one_hot(tokens, options.vocab_size()).to(weight.scalar_type()));
  x = x + sinusoidal_positional_encoding(tokens.size(1), options.block().d_model(), x.options());
  for (size_t i = 0; i < blocks->size(); ++i) {
    x = blocks->ptr<TransformerBlockImpl>(i)->forward(x, key_padding_mask, /*causal=*/false);
  }
  if (!final_norm.is_empty()) x = final_norm(x);
  return head->forward(x);
}

}  // namespace models
}  // namespace kvq
