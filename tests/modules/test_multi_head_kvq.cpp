#include <gtest/gtest.h>

#include "kvq/kvq.h"

namespace {

using kvq::nn::MultiHeadKVQ;
using kvq::nn::MultiHeadKVQOptions;

double max_rel_err(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got - want).abs().max() / want.abs().max()).item<double>();
}

// Copies torch::nn::MultiheadAttention's packed input projection and output projection.
void copy_weights(const torch::nn::MultiheadAttention& mha, MultiHeadKVQ& ours) {
  torch::NoGradGuard no_grad;
  const int64_t e = ours->options.embed_dim();
  auto w = mha->in_proj_weight.chunk(3, 0);
  auto b = mha->in_proj_bias.chunk(3, 0);
  ours->q_proj->weight.copy_(w[0]);
  ours->k_proj->weight.copy_(w[1]);
  ours->v_proj->weight.copy_(w[2]);
  ours->q_proj->bias.copy_(b[0]);
  ours->k_proj->bias.copy_(b[1]);
  ours->v_proj->bias.copy_(b[2]);
  ours->out_proj->weight.copy_(mha->out_proj->weight);
  ours->out_proj->bias.copy_(mha->out_proj->bias.view({e}));
}

class MultiHeadKVQTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

TEST_F(MultiHeadKVQTest, SoftmaxEqualsTorchMultiheadAttention) {
  const int64_t e = 16, h = 4, batch = 3, m = 7, n = 5;
  torch::nn::MultiheadAttention mha(torch::nn::MultiheadAttentionOptions(e, h));
  mha->to(torch::kFloat64);
  mha->eval();
  MultiHeadKVQ ours(MultiHeadKVQOptions(e, h).batch_first(false));
  ours->to(torch::kFloat64);
  ours->eval();
  {
    torch::NoGradGuard no_grad;  // non-zero biases so that they are compared too
    mha->in_proj_bias.normal_();
    mha->out_proj->bias.normal_();
  }
  copy_weights(mha, ours);

  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto x = torch::randn({m, batch, e}, opts), mem = torch::randn({n, batch, e}, opts);
  auto padding = torch::zeros({batch, n}, torch::kBool);
  padding.index_put_({1, torch::indexing::Slice(3)}, true);

  // Cross-attention with padding.
  auto want = std::get<0>(mha(x, mem, mem, padding));
  auto got = ours(x, mem, mem, padding);
  EXPECT_LE(max_rel_err(got, want), 1e-12);

  // Causal self-attention: torch takes the causal mask as an additive float mask.
  auto future = torch::full({m, m}, -std::numeric_limits<double>::infinity(), opts).triu(1);
  auto want_causal = std::get<0>(mha->forward(x, x, x, torch::Tensor(), true, future));
  EXPECT_LE(max_rel_err(ours->forward_self(x, {}, true), want_causal), 1e-12);
}

TEST_F(MultiHeadKVQTest, KvProjectionTiesQueryToKey) {
  const int64_t e = 12, h = 3;
  MultiHeadKVQ kv(MultiHeadKVQOptions(e, h).mechanism("kv"));
  MultiHeadKVQ qkv(MultiHeadKVQOptions(e, h));
  EXPECT_TRUE(kv->q_proj.is_empty());
  const auto count = [](const torch::nn::Module& mod) {
    int64_t total = 0;
    for (const auto& p : mod.parameters()) total += p.numel();
    return total;
  };
  EXPECT_EQ(count(*qkv) - count(*kv), e * e + e);  // one projection (and its bias) fewer

  // Self-attention equals softmax attention with q := k, the symmetric-score form.
  kv->to(torch::kFloat64);
  auto x = torch::randn({2, 6, e}, torch::kFloat64);
  auto split = [&](const torch::Tensor& y) { return y.view({2, 6, h, e / h}).transpose(1, 2); };
  auto k = split(kv->k_proj(x)), v = split(kv->v_proj(x));
  auto heads = kvq::functional::kv_attention(k, v);
  auto want = kv->out_proj(heads.transpose(1, 2).reshape({2, 6, e}));
  EXPECT_LE(max_rel_err(kv->forward_self(x), want), 1e-12);
}

// pos_map "head": one Linear(p, 1) per head, (H, p) and (H); "layer": one for the layer, (p) and
// (), which is the per-head map with every head's row equal to it.
TEST_F(MultiHeadKVQTest, KvPosModuleMatchesFunctional) {
  const int64_t e = 8, h = 2;
  for (const std::string map : {"head", "layer"}) {
    SCOPED_TRACE(map);
    MultiHeadKVQ mod(MultiHeadKVQOptions(e, h).mechanism("kv-pos").pos_channels(6).pos_map(map));
    mod->to(torch::kFloat64);
    const bool per_head = map == "head";
    ASSERT_EQ(mod->pos_weight.sizes(),
              per_head ? std::vector<int64_t>({h, 6}) : std::vector<int64_t>({6}));
    ASSERT_EQ(mod->pos_bias.sizes(), per_head ? std::vector<int64_t>({h}) : std::vector<int64_t>());
    auto x = torch::randn({2, 5, e}, torch::kFloat64);
    auto split = [&](const torch::Tensor& y) { return y.view({2, 5, h, e / h}).transpose(1, 2); };
    auto k = split(mod->k_proj(x)), v = split(mod->v_proj(x));
    const auto causal = kvq::functional::AttentionFuncOptions().causal(true);
    auto heads = kvq::functional::kv_pos_attention(k, v, mod->pos_weight, mod->pos_bias, causal);
    auto want = mod->out_proj(heads.transpose(1, 2).reshape({2, 5, e}));
    EXPECT_LE(max_rel_err(mod->forward_self(x, {}, true), want), 1e-12);
    if (map == "layer") {
      auto per_head = kvq::functional::kv_pos_attention(
          k, v, mod->pos_weight.expand({h, 6}), mod->pos_bias.expand({h}), causal);
      EXPECT_LE(max_rel_err(heads, per_head), 1e-12);
    }
  }
}

TEST_F(MultiHeadKVQTest, AlphaIsPositiveLearnedPerHead) {
  MultiHeadKVQ mod(MultiHeadKVQOptions(8, 4).mechanism("intention").alpha_init(0.5));
  auto alpha = mod->alpha();
  ASSERT_EQ(alpha.sizes(), (std::vector<int64_t>{4}));
  EXPECT_LE((alpha - 0.5).abs().max().item<double>(), 1e-6);
  {
    torch::NoGradGuard no_grad;
    mod->alpha_raw.fill_(-50.0);  // softplus underflows: alpha stays at the floor, still > 0
  }
  EXPECT_GT(mod->alpha().min().item<double>(), 0.0);
  {
    torch::NoGradGuard no_grad;
    mod->alpha_raw.fill_(0.0);
  }
  auto x = torch::randn({2, 9, 8});
  mod->forward_self(x, {}, true).pow(2).sum().backward();
  ASSERT_TRUE(mod->alpha_raw.grad().defined());
  EXPECT_GT(mod->alpha_raw.grad().abs().sum().item<double>(), 0.0);

  MultiHeadKVQ fixed(MultiHeadKVQOptions(8, 4).mechanism("intention").learn_alpha(false));
  for (const auto& p : fixed->named_parameters()) EXPECT_NE(p.key(), "alpha_raw");
}

TEST_F(MultiHeadKVQTest, EveryMechanismAndProjectionRunsForwardAndBackward) {
  for (const auto& info : kvq::mechanisms()) {
    for (const char* projection : {"", "qkv", "kv", "kv-pos"}) {
      if (std::string(projection) == "kv-pos" && !info.traits.has_softmax) continue;
      for (bool causal : {false, true}) {
        SCOPED_TRACE(info.name + " projection '" + projection + "' causal " +
                     std::to_string(causal));
        MultiHeadKVQ mod(
            MultiHeadKVQOptions(8, 2).mechanism(info.name).projection(projection).dropout(0.1));
        auto x = torch::randn({2, 7, 8}, torch::requires_grad());
        auto padding = torch::zeros({2, 7}, torch::kBool);
        padding.index_put_({0, torch::indexing::Slice(5)}, true);
        auto out = mod->forward_self(x, padding, causal);
        ASSERT_EQ(out.sizes(), x.sizes());
        ASSERT_TRUE(torch::isfinite(out).all().item<bool>());
        out.sum().backward();
        ASSERT_TRUE(torch::isfinite(x.grad()).all().item<bool>());
      }
    }
  }
}

TEST_F(MultiHeadKVQTest, CrossAttentionWithTiedProjection) {
  MultiHeadKVQ mod(MultiHeadKVQOptions(8, 2).mechanism("intention").projection("kv"));
  auto out = mod(torch::randn({3, 4, 8}), torch::randn({3, 10, 8}), torch::randn({3, 10, 8}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{3, 4, 8}));
}

TEST_F(MultiHeadKVQTest, BatchFirstFalseIsTheTransposedLayout) {
  MultiHeadKVQ a(MultiHeadKVQOptions(8, 2).mechanism("softmax-intention"));
  MultiHeadKVQ b(MultiHeadKVQOptions(8, 2).mechanism("softmax-intention").batch_first(false));
  {
    torch::NoGradGuard no_grad;
    auto src = a->parameters(), dst = b->parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  }
  auto x = torch::randn({2, 6, 8});
  auto diff = (a->forward_self(x, {}, true) - b->forward_self(x.transpose(0, 1), {}, true)
                                                   .transpose(0, 1)).abs().max();
  EXPECT_EQ(diff.item<float>(), 0.0f);
}

TEST_F(MultiHeadKVQTest, BadOptionsAndInputsFailClearly) {
  try {
    MultiHeadKVQ(MultiHeadKVQOptions(8, 2).mechanism("flash"));
    FAIL() << "unknown mechanism accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown mechanism 'flash'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("softmax-intention"), std::string::npos);
  }
  EXPECT_THROW(MultiHeadKVQ(MultiHeadKVQOptions(8, 2).projection("qk")), c10::Error);
  try {
    MultiHeadKVQ(MultiHeadKVQOptions(8, 2).mechanism("intention").projection("kv-pos"));
    FAIL() << "kv-pos without a softmax accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("kv-pos"), std::string::npos);
  }
  EXPECT_THROW(MultiHeadKVQ(MultiHeadKVQOptions(10, 3)), c10::Error);
  EXPECT_THROW(MultiHeadKVQ(MultiHeadKVQOptions(8, 2).mechanism("intention").alpha_init(0.0)),
               c10::Error);

  MultiHeadKVQ mod(MultiHeadKVQOptions(8, 2));
  try {
    mod->forward_self(torch::randn({2, 5, 6}));
    FAIL() << "wrong embedding width accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("query must have shape (B, T, E) with E = 8"),
              std::string::npos);
  }
  EXPECT_THROW(mod->forward(torch::randn({2, 5, 8}), torch::randn({2, 4, 8}), torch::randn({2, 4, 8}), {},
                   /*causal=*/true),
               c10::Error);
}

}  // namespace
