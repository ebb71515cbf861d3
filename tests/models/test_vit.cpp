// Vision Transformer: patch layout, shapes, the documented composition, option checks.
#include <gtest/gtest.h>

#include "kvq/kvq.h"
#include "kvq/models/vit.h"
#include "test_utils.h"

namespace {

namespace M = kvq::models;

double max_abs(const torch::Tensor& x) { return x.abs().max().item<double>(); }

// Patch n = (row r, column c) of the patch grid holds pixel (r p + i, c p + j) of channel ch at
// position (i p + j) C + ch.
TEST(ImageToPatches, LayoutIsRowMajorPatchesOfPixelsThenChannels) {
  const int64_t B = 2, C = 3, H = 6, W = 4, p = 2;
  auto images = torch::arange(B * C * H * W, torch::kFloat64).reshape({B, C, H, W});
  auto patches = M::image_to_patches(images, p);
  ASSERT_EQ(patches.sizes(), (std::vector<int64_t>{B, (H / p) * (W / p), p * p * C}));
  auto img = images.accessor<double, 4>();
  auto pat = patches.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < H / p; ++r)
      for (int64_t c = 0; c < W / p; ++c)
        for (int64_t i = 0; i < p; ++i)
          for (int64_t j = 0; j < p; ++j)
            for (int64_t ch = 0; ch < C; ++ch)
              ASSERT_EQ(pat[b][r * (W / p) + c][(i * p + j) * C + ch],
                        img[b][ch][r * p + i][c * p + j]);
}

// The ViT's blocks as the paper's: Pre-LN, GELU, MLP width d, no dropout.
M::TransformerBlockOptions vit_block(int64_t d_model, int64_t num_heads) {
  return M::TransformerBlockOptions(d_model, num_heads)
      .ffn_dim(d_model)
      .activation("gelu")
      .dropout(0.0)
      .norm_first(true);
}

TEST(ViT, ShapesForThePapersPatchSizes) {
  torch::manual_seed(0);
  for (int64_t patch : {7, 4}) {
    M::ViT vit(M::ViTOptions(28, patch, 10).block(vit_block(16, 2)).num_layers(1));
    EXPECT_EQ(vit->num_tokens(), patch == 7 ? 17 : 50);  // tasks.md: 17 and 50 tokens
    EXPECT_EQ(vit->position_embedding.sizes(), (std::vector<int64_t>{1, vit->num_tokens(), 16}));
    EXPECT_EQ(vit(torch::randn({3, 1, 28, 28})).sizes(), (std::vector<int64_t>{3, 10}));
  }
  M::ViT cifar(M::ViTOptions(32, 8, 100).in_channels(3).block(vit_block(16, 4)).num_layers(2));
  EXPECT_EQ(cifar->num_tokens(), 17);
  EXPECT_EQ(cifar(torch::randn({2, 3, 32, 32})).sizes(), (std::vector<int64_t>{2, 100}));
  auto block = cifar->blocks->ptr<M::TransformerBlockImpl>(0);
  EXPECT_TRUE(block->options.norm_first());
  EXPECT_EQ(block->options.activation(), "gelu");
  EXPECT_EQ(block->linear1->weight.size(0), 16);  // MLP width d
  // The defaults are the paper's: d 128, 4 heads, MLP width d, GELU, no dropout.
  M::ViT paper(M::ViTOptions(28, 7, 10));
  const auto& defaults = paper->blocks->ptr<M::TransformerBlockImpl>(0)->options;
  EXPECT_EQ(paper->blocks->size(), 4u);
  EXPECT_EQ(defaults.d_model(), 128);
  EXPECT_EQ(defaults.num_heads(), 4);
  EXPECT_EQ(defaults.ffn_width(), 128);
  EXPECT_EQ(defaults.activation(), "gelu");
  EXPECT_EQ(defaults.dropout(), 0.0);
}

TEST(ViT, ForwardIsTheDocumentedComposition) {
  torch::manual_seed(1);
  M::ViT vit(M::ViTOptions(8, 4, 5)
                 .in_channels(2)
                 .block(vit_block(8, 2).ffn_dim(12).mechanism("intention").scale(
                     1.0 / std::sqrt(8.0)))
                 .num_layers(2));
  vit->to(torch::kFloat64);
  vit->eval();
  auto blk = vit->blocks->ptr<M::TransformerBlockImpl>(0);
  ASSERT_TRUE(blk->self_attn->options.scale().has_value());
  EXPECT_DOUBLE_EQ(*blk->self_attn->options.scale(), 1.0 / std::sqrt(8.0));
  EXPECT_EQ(blk->linear1->weight.size(0), 12);

  auto images = torch::randn({3, 2, 8, 8}, torch::kFloat64);
  auto x = vit->patch_embedding(M::image_to_patches(images, 4));
  x = torch::cat({vit->cls_token.expand({3, 1, 8}), x}, 1) + vit->position_embedding;
  for (size_t i = 0; i < vit->blocks->size(); ++i) {
    x = vit->blocks->ptr<M::TransformerBlockImpl>(i)->forward(x);
  }
  auto cls = vit->final_norm(x).select(1, 0);
  auto want = vit->head->forward(cls);
  EXPECT_LE(max_abs(vit(images) - want), 1e-12);
  EXPECT_EQ(vit->head->size(), 3u);  // Linear-GELU-Linear
}

TEST(ViT, RejectsPatchSizesThatDoNotDivideTheImage) {
  using kvq_test::expect_error_naming;
  for (int64_t patch : {5, 3, 0, 56}) {
    expect_error_naming([&] { M::ViT(M::ViTOptions(28, patch, 10)); }, {"patch_size"},
                        "patch " + std::to_string(patch) + " for 28");
  }
  try {
    M::ViT(M::ViTOptions(28, 5, 10));
    ADD_FAILURE() << "patch 5 for 28 accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("must divide image_size (28)"),
              std::string::npos)
        << e.what_without_backtrace();
  }
  expect_error_naming([] { M::image_to_patches(torch::zeros({1, 1, 6, 8}), 4); }, {"patch_size"},
                      "functional form, 4 does not divide 6");
}

TEST(ViT, BadOptionsAndInputsNameTheArgument) {
  using kvq_test::expect_error_naming;
  expect_error_naming([] { M::ViT(M::ViTOptions(8, 4, 0)); }, {"num_classes"}, "no classes");
  expect_error_naming([] { M::ViT(M::ViTOptions(8, 4, 3).block(vit_block(10, 4))); },
                      {"d_model", "num_heads"}, "d_model not a multiple");
  expect_error_naming(
      [] { M::ViT(M::ViTOptions(8, 4, 3).block(vit_block(8, 2).norm_first(false))); },
      {"norm_first"}, "Post-LN blocks");
  expect_error_naming([] { M::ViT(M::ViTOptions(8, 4, 3).mechanisms({"kv"}).num_layers(2)); },
                      {"mechanisms"}, "per-layer list of the wrong length");
  expect_error_naming([] { M::ViT(M::ViTOptions(8, 4, 3).block(vit_block(8, 2).scale(0.0))); },
                      {"scale"}, "zero scale");
  M::ViT vit(M::ViTOptions(8, 4, 3).block(vit_block(8, 2)).num_layers(1));
  expect_error_naming([&] { vit(torch::randn({2, 1, 8, 12})); }, {"images"}, "wrong width");
  expect_error_naming([&] { vit(torch::randn({2, 3, 8, 8})); }, {"images"}, "wrong channels");
  expect_error_naming([&] { vit(torch::zeros({2, 1, 8, 8}, torch::kInt64)); }, {"images"},
                      "integer images");
}

}  // namespace
