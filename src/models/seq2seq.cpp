#include "kvq/models/seq2seq.h"

#include <cmath>

namespace kvq {
namespace models {

Seq2SeqImpl::Seq2SeqImpl(const Seq2SeqOptions& options_) : options(options_) { reset(); }

void Seq2SeqImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.src_vocab_size() > 0, "Seq2Seq: src_vocab_size must be > 0, got ",
              o.src_vocab_size());
  TORCH_CHECK(o.tgt_vocab_size() > 0, "Seq2Seq: tgt_vocab_size must be > 0, got ",
              o.tgt_vocab_size());
  TORCH_CHECK(o.num_encoder_layers() > 0, "Seq2Seq: num_encoder_layers must be > 0, got ",
              o.num_encoder_layers());
  TORCH_CHECK(o.num_decoder_layers() > 0, "Seq2Seq: num_decoder_layers must be > 0, got ",
              o.num_decoder_layers());
  const int64_t n_enc = o.num_encoder_layers(), n_dec = o.num_decoder_layers();
  const auto layers =
      layer_blocks("Seq2Seq", o.block(), o.mechanisms(), n_enc + n_dec, /*needs_norm_first=*/true);
  const int64_t d = o.block().d_model();
  src_embedding = register_module("src_embedding", torch::nn::Embedding(o.src_vocab_size(), d));
  tgt_embedding = register_module("tgt_embedding", torch::nn::Embedding(o.tgt_vocab_size(), d));
  encoder_blocks = register_module("encoder_blocks", torch::nn::ModuleList());
  decoder_blocks = register_module("decoder_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < n_enc; ++i) encoder_blocks->push_back(TransformerBlock(layers[i]));
  for (int64_t i = 0; i < n_dec; ++i) {
    decoder_blocks->push_back(TransformerDecoderBlock(layers[n_enc + i]));
  }
  const auto ln = torch::nn::LayerNormOptions({d});
  encoder_norm = register_module("encoder_norm", torch::nn::LayerNorm(ln));
  decoder_norm = register_module("decoder_norm", torch::nn::LayerNorm(ln));
  output = register_module("output", torch::nn::Linear(d, o.tgt_vocab_size()));
  dropout = register_module("dropout", torch::nn::Dropout(o.block().dropout()));

  // The Annotated Transformer's Xavier-uniform embeddings: scaled by sqrt(d) they have about the
  // magnitude of the positional table.
  torch::NoGradGuard no_grad;
  torch::nn::init::xavier_uniform_(src_embedding->weight);
  torch::nn::init::xavier_uniform_(tgt_embedding->weight);
}

torch::Tensor Seq2SeqImpl::encode(const torch::Tensor& src, const torch::Tensor& src_padding_mask) {
  check_tokens("Seq2Seq", "src", src, options.src_vocab_size());
  const int64_t d = options.block().d_model();
  auto x = src_embedding(src) * std::sqrt(static_cast<double>(d));
  x = dropout(x + sinusoidal_positional_encoding(src.size(1), d, x.options()));
  for (size_t i = 0; i < encoder_blocks->size(); ++i) {
    x = encoder_blocks->ptr<TransformerBlockImpl>(i)->forward(x, src_padding_mask, false);
  }
  return encoder_norm(x);
}

torch::Tensor Seq2SeqImpl::embed_target(const torch::Tensor& tgt, int64_t first_position) {
  check_tokens("Seq2Seq", "tgt", tgt, options.tgt_vocab_size());
  const int64_t d = options.block().d_model(), T = tgt.size(1);
  auto x = tgt_embedding(tgt) * std::sqrt(static_cast<double>(d));
  auto table = sinusoidal_positional_encoding(first_position + T, d, x.options());
  return dropout(x + table.narrow(0, first_position, T));
}

torch::Tensor Seq2SeqImpl::decode(const torch::Tensor& tgt, const torch::Tensor& memory,
                                  const torch::Tensor& src_padding_mask,
                                  const torch::Tensor& tgt_padding_mask) {
  auto x = embed_target(tgt, 0);
  for (size_t i = 0; i < decoder_blocks->size(); ++i) {
    x = decoder_blocks->ptr<TransformerDecoderBlockImpl>(i)->forward(
        x, memory, tgt_padding_mask, src_padding_mask, /*causal=*/true);
  }
  return output(decoder_norm(x));
}

torch::Tensor Seq2SeqImpl::decode_prefill(const torch::Tensor& tgt, const torch::Tensor& memory,
                                          const torch::Tensor& src_padding_mask,
                                          Seq2SeqCache& cache) {
  auto x = embed_target(tgt, 0);
  cache.layers.assign(decoder_blocks->size(), {});
  for (size_t i = 0; i < decoder_blocks->size(); ++i) {
    x = decoder_blocks->ptr<TransformerDecoderBlockImpl>(i)->prefill(x, memory, cache.layers[i], {},
                                                                     src_padding_mask);
  }
  return output(decoder_norm(x));
}

torch::Tensor Seq2SeqImpl::decode_step(const torch::Tensor& tgt, Seq2SeqCache& cache) {
  TORCH_CHECK(cache.layers.size() == decoder_blocks->size(), "Seq2Seq::decode_step: the cache has ",
              cache.layers.size(), " layers, the decoder ", decoder_blocks->size(),
              "; build it with decode_prefill first");
  TORCH_CHECK(tgt.dim() == 2 && tgt.size(1) == 1,
              "Seq2Seq::decode_step: tgt must be one token per row, (B, 1), got ", tgt.sizes());
  auto x = embed_target(tgt, cache.length());
  for (size_t i = 0; i < decoder_blocks->size(); ++i) {
    x = decoder_blocks->ptr<TransformerDecoderBlockImpl>(i)->step(x, cache.layers[i]);
  }
  return output(decoder_norm(x));
}

torch::Tensor Seq2SeqImpl::forward(const torch::Tensor& src, const torch::Tensor& tgt,
                                   const torch::Tensor& src_padding_mask,
                                   const torch::Tensor& tgt_padding_mask) {
  return decode(tgt, encode(src, src_padding_mask), src_padding_mask, tgt_padding_mask);
}

torch::Tensor Seq2SeqImpl::greedy_decode(const torch::Tensor& src,
                                         const torch::Tensor& src_padding_mask, int64_t bos,
                                         int64_t eos, int64_t max_len, bool use_cache) {
  const int64_t vocab = options.tgt_vocab_size();
  TORCH_CHECK(bos >= 0 && bos < vocab, "Seq2Seq::greedy_decode: bos must be in [0, ", vocab,
              "), got ", bos);
  TORCH_CHECK(eos >= 0 && eos < vocab, "Seq2Seq::greedy_decode: eos must be in [0, ", vocab,
              "), got ", eos);
  TORCH_CHECK(max_len >= 1, "Seq2Seq::greedy_decode: max_len must be >= 1 (bos included), got ",
              max_len);
  torch::NoGradGuard no_grad;
  auto memory = encode(src, src_padding_mask);
  const int64_t batch = src.size(0);
  auto ys = torch::full({batch, 1}, bos, src.options());
  auto finished = torch::zeros({batch}, src.options().dtype(torch::kBool));
  Seq2SeqCache cache;
  while (ys.size(1) < max_len) {
    // With the cache: a prefill of bos, then one step per token. Without: the whole prefix again.
    torch::Tensor logits;
    if (!use_cache) {
      logits = decode(ys, memory, src_padding_mask);
    } else if (cache.layers.empty()) {
      logits = decode_prefill(ys, memory, src_padding_mask, cache);
    } else {
      logits = decode_step(ys.narrow(1, ys.size(1) - 1, 1), cache);
    }
    auto next = logits.select(1, -1).argmax(-1);  // (B)
    next = next.masked_fill(finished, eos);
    ys = torch::cat({ys, next.unsqueeze(1)}, 1);
    finished = finished | (next == eos);
    if (finished.all().item<bool>()) break;
  }
  return ys;
}

}  // namespace models
}  // namespace kvq
