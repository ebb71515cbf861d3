// kvq::nn::AttentionOptions: one struct from a model's options to each layer's MultiHeadKVQ and
// into the functional call; options that apply to none of the layers' mechanisms are refused by
// name; in a stack of mixed mechanisms each layer sees only the options that apply to it.
#include "kvq/models/language_model.h"
#include "kvq/modules/attention_options.h"
#include "kvq/modules/multi_head_kvq.h"
#include "test_utils.h"

namespace kvq_test {
namespace {

using kvq::nn::AttentionOptions;
using kvq::nn::MultiHeadKVQ;
using kvq::nn::MultiHeadKVQOptions;

TEST(AttentionOptions, RefusesOptionsThatApplyToNoLayer) {
  expect_error_naming([] { MultiHeadKVQ(MultiHeadKVQOptions(8, 2).chunk_size(4)); },
                      {"chunk_size"}, "chunk_size on softmax");
  expect_error_naming([] { MultiHeadKVQ(MultiHeadKVQOptions(8, 2).mechanism("kv").alpha_init(2)); },
                      {"alpha_init"}, "alpha_init on kv");
  expect_error_naming(
      [] { MultiHeadKVQ(MultiHeadKVQOptions(8, 2).mechanism("intention").pos_channels(6)); },
      {"pos_channels"}, "pos_channels without kv-pos");
  expect_error_naming(
      [] { MultiHeadKVQ(MultiHeadKVQOptions(8, 2).mechanism("kv").pos_map("layer")); },
      {"pos_map", "kv-pos"}, "pos_map without kv-pos");
  expect_error_naming(
      [] { MultiHeadKVQ(MultiHeadKVQOptions(8, 2).mechanism("kv-pos").pos_map("heads")); },
      {"pos_map", "head", "layer", "'heads'"}, "pos_map not head or layer");
  expect_error_naming(
      [] { MultiHeadKVQ(MultiHeadKVQOptions(8, 2).mechanism("kernel-intention").chunk_size(4)); },
      {"chunk_size"}, "chunk_size on kernel-intention (not chunk-parallel)");
  expect_error_naming([] { MultiHeadKVQ(MultiHeadKVQOptions(8, 2).mechanism("attn")); },
                      {"mechanism"}, "unknown mechanism");
  // Each applies where the registry row says so.
  for (const auto& info : kvq::mechanisms()) {
    SCOPED_TRACE(info.name);
    auto o = MultiHeadKVQOptions(8, 2).mechanism(info.name);
    if (info.traits.chunked) o.chunk_size(4);
    if (info.traits.uses_alpha) o.alpha_init(2.0).alpha_floor(0.01).learn_alpha(false);
    if (info.projection == kvq::Projection::KVPos) o.pos_channels(6).pos_map("layer");
    EXPECT_NO_THROW(MultiHeadKVQ{o});
  }
}

// The per-layer list is checked as a whole: alpha_init applies when one layer has alpha, and the
// softmax layers get it reset (they would refuse it), the intention layers get it as set.
TEST(AttentionOptions, MixedStackGivesEachLayerWhatAppliesToIt) {
  const auto attention =
      AttentionOptions().mechanism("softmax").alpha_init(0.5).chunk_size(4).learn_alpha(false);
  kvq::models::LanguageModel lm(
      kvq::models::LanguageModelOptions(11)
          .block(kvq::models::TransformerBlockOptions(8, 2).norm_first(true).attention(attention))
          .num_layers(2)
          .mechanisms({"softmax", "intention"}));
  const auto& softmax = lm->blocks->ptr<kvq::models::TransformerBlockImpl>(0)->self_attn->options;
  const auto& intention = lm->blocks->ptr<kvq::models::TransformerBlockImpl>(1)->self_attn->options;
  EXPECT_EQ(softmax.mechanism(), "softmax");
  EXPECT_EQ(softmax.chunk_size(), 0);
  EXPECT_EQ(softmax.alpha_init(), 1.0);
  EXPECT_EQ(intention.mechanism(), "intention");
  EXPECT_EQ(intention.chunk_size(), 4);
  EXPECT_EQ(intention.alpha_init(), 0.5);
  EXPECT_FALSE(intention.learn_alpha());
  expect_error_naming(
      [] {
        kvq::models::LanguageModel(
            kvq::models::LanguageModelOptions(11)
                .block(kvq::models::TransformerBlockOptions(8, 2).norm_first(true).alpha_init(0.5))
                .num_layers(2)
                .mechanisms({"softmax", "kv"}));
      },
      {"alpha_init"}, "alpha_init with no layer that has alpha");
}

// chunk_size reaches the functional call: the module equals the functional form run with it
// (the chunked algorithm's rounding differs from another chunk length's).
TEST(AttentionOptions, ChunkSizeReachesTheFunctionalCall) {
  torch::manual_seed(3);
  MultiHeadKVQ attn(MultiHeadKVQOptions(8, 2).mechanism("linear").chunk_size(3).bias(false));
  attn->to(torch::kFloat64);
  attn->eval();
  const auto x = torch::randn({2, 10, 8}, torch::kFloat64);
  const auto out = attn->forward_self(x, {}, /*causal=*/true);
  auto split = [](const torch::Tensor& t) { return t.view({2, 10, 2, 4}).transpose(1, 2); };
  const auto heads = F::linear_attention(split(attn->q_proj(x)), split(attn->k_proj(x)),
                                         split(attn->v_proj(x)),
                                         F::AttentionFuncOptions().causal(true).chunk_size(3));
  const auto want = attn->out_proj(heads.transpose(1, 2).reshape({2, 10, 8}));
  EXPECT_TRUE(torch::equal(out, want)) << max_rel_err(out, want);
  // ... and not the default chunk (the head width, 4).
  const auto other = F::linear_attention(split(attn->q_proj(x)), split(attn->k_proj(x)),
                                         split(attn->v_proj(x)),
                                         F::AttentionFuncOptions().causal(true).chunk_size(4));
  EXPECT_FALSE(torch::equal(out, attn->out_proj(other.transpose(1, 2).reshape({2, 10, 8}))));
}

}  // namespace
}  // namespace kvq_test
