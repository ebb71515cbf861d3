#include "kvq/models/language_model.h"

#include <ATen/CPUGeneratorImpl.h>

#include <limits>

namespace kvq {
namespace models {

LanguageModelImpl::LanguageModelImpl(const LanguageModelOptions& options_) : options(options_) {
  reset();
}

void LanguageModelImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.vocab_size() > 0, "LanguageModel: vocab_size must be > 0, got ", o.vocab_size());
  TORCH_CHECK(o.context_length() > 0, "LanguageModel: context_length must be > 0, got ",
              o.context_length());
  const auto layers = layer_blocks("LanguageModel", o.block(), o.mechanisms(), o.num_layers(),
                                   /*needs_norm_first=*/true);
  const int64_t d = o.block().d_model();
  token_embedding = register_module("token_embedding", torch::nn::Embedding(o.vocab_size(), d));
  position_embedding =
      register_module("position_embedding", torch::nn::Embedding(o.context_length(), d));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (const auto& layer : layers) blocks->push_back(TransformerBlock(layer));
  final_norm =
      register_module("final_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  lm_head = register_module("lm_head", torch::nn::Linear(d, o.vocab_size()));

  torch::NoGradGuard no_grad;
  torch::nn::init::normal_(token_embedding->weight, 0.0, 0.02);
  torch::nn::init::normal_(position_embedding->weight, 0.0, 0.02);
  torch::nn::init::normal_(lm_head->weight, 0.0, 0.02);
  lm_head->bias.zero_();
}

torch::Tensor LanguageModelImpl::embed(const torch::Tensor& tokens, int64_t first_position) {
  check_tokens("LanguageModel", "tokens", tokens, options.vocab_size());
  auto positions = torch::arange(first_position, first_position + tokens.size(1), tokens.options());
  return token_embedding(tokens) + position_embedding(positions);
}

void LanguageModelImpl::check_window(const char* op, const torch::Tensor& tokens) const {
  const int64_t context = options.context_length();
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(1) >= 1 && tokens.size(1) <= context,
              "LanguageModel", op, ": sequence length T must be in [1, context_length = ", context,
              "], got tokens of shape ", tokens.sizes());
}

torch::Tensor LanguageModelImpl::forward(const torch::Tensor& tokens) {
  check_window("", tokens);
  auto x = embed(tokens, 0);
  for (size_t i = 0; i < blocks->size(); ++i) {
    x = blocks->ptr<TransformerBlockImpl>(i)->forward(x, /*key_padding_mask=*/{}, /*causal=*/true);
  }
  return lm_head(final_norm(x));
}

torch::Tensor LanguageModelImpl::prefill(const torch::Tensor& tokens, LanguageModelCache& cache) {
  check_window("::prefill", tokens);
  auto x = embed(tokens, 0);
  cache.layers.assign(blocks->size(), {});
  for (size_t i = 0; i < blocks->size(); ++i) {
    x = blocks->ptr<TransformerBlockImpl>(i)->prefill(x, cache.layers[i]);
  }
  return lm_head(final_norm(x));
}

torch::Tensor LanguageModelImpl::step(const torch::Tensor& tokens, LanguageModelCache& cache) {
  TORCH_CHECK(cache.layers.size() == blocks->size(), "LanguageModel::step: the cache has ",
              cache.layers.size(), " layers, the model ", blocks->size(),
              "; build it with prefill first");
  const int64_t position = cache.length();
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(1) == 1,
              "LanguageModel::step: tokens must be one token per row, (B, 1), got ",
              tokens.sizes());
  TORCH_CHECK(position < options.context_length(), "LanguageModel::step: the cache holds ",
              position, " tokens, context_length = ", options.context_length(),
              " already, all its positions: slide the window and run the last context_length "
              "tokens again (forward or prefill)");
  auto x = embed(tokens, position);
  for (size_t i = 0; i < blocks->size(); ++i) {
    x = blocks->ptr<TransformerBlockImpl>(i)->step(x, cache.layers[i]);
  }
  return lm_head(final_norm(x));
}

torch::Tensor LanguageModelImpl::generate(const torch::Tensor& prompt,
                                          const GenerateOptions& gen_options,
                                          c10::optional<at::Generator> generator) {
  TORCH_CHECK(prompt.dim() == 2 && prompt.size(1) >= 1 && prompt.scalar_type() == torch::kInt64,
              "LanguageModel::generate: prompt must be int64 of shape (B, T0) with T0 >= 1, got ",
              prompt.scalar_type(), " ", prompt.sizes());
  TORCH_CHECK(gen_options.max_new_tokens() >= 0,
              "LanguageModel::generate: max_new_tokens must be >= 0, got ",
              gen_options.max_new_tokens());
  TORCH_CHECK(gen_options.temperature() > 0.0,
              "LanguageModel::generate: temperature must be > 0, got ", gen_options.temperature());
  TORCH_CHECK(gen_options.top_k() >= 0 && gen_options.top_k() <= options.vocab_size(),
              "LanguageModel::generate: top_k must be in [0, vocab_size = ", options.vocab_size(),
              "] (0 = no restriction), got ", gen_options.top_k());
  at::Generator gen =
      generator.has_value() ? *generator : at::detail::createCPUGenerator(gen_options.seed());
  TORCH_CHECK(gen.device().is_cpu(), "LanguageModel::generate: generator must be a CPU generator");

  torch::NoGradGuard no_grad;
  const int64_t context_length = options.context_length();
  auto tokens = prompt;
  LanguageModelCache cache;
  // Logits (B, V) of the token after `tokens`; `next` (B, 1) is the token just appended (undefined
  // at first). With the cache: one step while the cache has room, else the last window runs again.
  // A prompt shorter than the context is prefilled (the cache is built); a full window is not
  // worth a cache: the next token slides it again, and every token in it changes position.
  auto next_logits = [&](const torch::Tensor& next) {
    const bool cached = gen_options.use_cache();
    if (cached && next.defined() && cache.length() < context_length) {
      return step(next, cache).select(1, -1);
    }
    const int64_t T = tokens.size(1);
    auto window =
        T > context_length ? tokens.narrow(1, T - context_length, context_length) : tokens;
    const bool room = window.size(1) < context_length;
    return (cached && room ? prefill(window, cache) : forward(window)).select(1, -1);
  };
  torch::Tensor next;
  for (int64_t step = 0; step < gen_options.max_new_tokens(); ++step) {
    auto logits =
        next_logits(next).to(torch::kCPU, torch::kFloat32) / gen_options.temperature();  // (B, V)
    if (gen_options.top_k() > 0) {
      const int64_t k = gen_options.top_k();
      auto kth = std::get<0>(logits.topk(k, /*dim=*/-1)).narrow(1, k - 1, 1);  // (B, 1)
      logits = logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
    }
    next = torch::multinomial(torch::softmax(logits, -1), 1, /*replacement=*/false, gen)
               .to(tokens.device());
    tokens = torch::cat({tokens, next}, 1);
  }
  return tokens;
}

}  // namespace models
}  // namespace kvq
