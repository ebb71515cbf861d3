#include "kvq/models/vit.h"

namespace kvq {
namespace models {

torch::Tensor image_to_patches(const torch::Tensor& images, int64_t patch_size) {
  TORCH_CHECK(images.dim() == 4, "image_to_patches: images must have shape (B, C, H, W), got ",
              images.sizes());
  const int64_t B = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  const int64_t p = patch_size;
  TORCH_CHECK(p > 0 && H % p == 0 && W % p == 0, "image_to_patches: patch_size (", p,
              ") must be positive and divide the image height and width, got H = ", H,
              ", W = ", W);
  return images.reshape({B, C, H / p, p, W / p, p})
      .permute({0, 2, 4, 3, 5, 1})  // (B, H/p, W/p, p1, p2, C)
      .reshape({B, (H / p) * (W / p), p * p * C});
}

ViTImpl::ViTImpl(const ViTOptions& options_) : options(options_) { reset(); }

int64_t ViTImpl::num_tokens() const {
  const int64_t side = options.image_size() / options.patch_size();
  return side * side + 1;
}

void ViTImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.image_size() > 0, "ViT: image_size must be > 0, got ", o.image_size());
  TORCH_CHECK(o.patch_size() > 0 && o.patch_size() <= o.image_size() &&
                  o.image_size() % o.patch_size() == 0,
              "ViT: patch_size must divide image_size (", o.image_size(), "), got patch_size = ",
              o.patch_size());
  TORCH_CHECK(o.num_classes() > 0, "ViT: num_classes must be > 0, got ", o.num_classes());
  TORCH_CHECK(o.in_channels() > 0, "ViT: in_channels must be > 0, got ", o.in_channels());
  TORCH_CHECK(o.embedding_dropout() >= 0.0 && o.embedding_dropout() < 1.0,
              "ViT: embedding_dropout must be in [0, 1), got ", o.embedding_dropout());
  const auto layers =
      layer_blocks("ViT", o.block(), o.mechanisms(), o.num_layers(), /*needs_norm_first=*/true);

  const int64_t d = o.block().d_model(), hidden = o.block().ffn_width();
  const int64_t patch_dim = o.patch_size() * o.patch_size() * o.in_channels();
  patch_embedding = register_module("patch_embedding", torch::nn::Linear(patch_dim, d));
  cls_token = register_parameter("cls_token", torch::randn({1, 1, d}));
  position_embedding = register_parameter("position_embedding", torch::randn({1, num_tokens(), d}));
  embedding_dropout =
      register_module("embedding_dropout", torch::nn::Dropout(o.embedding_dropout()));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (const auto& layer : layers) blocks->push_back(TransformerBlock(layer));
  final_norm =
      register_module("final_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  head = register_module("head",
                         torch::nn::Sequential(torch::nn::Linear(d, hidden), torch::nn::GELU(),
                                               torch::nn::Linear(hidden, o.num_classes())));
}

torch::Tensor ViTImpl::forward(const torch::Tensor& images) {
  const int64_t s = options.image_size(), c = options.in_channels();
  TORCH_CHECK(images.dim() == 4 && images.size(1) == c && images.size(2) == s &&
                  images.size(3) == s,
              "ViT: images must have shape (B, in_channels = ", c, ", image_size = ", s,
              ", image_size = ", s, "), got ", images.sizes());
  TORCH_CHECK(images.is_floating_point(), "ViT: images must be floating point, got ",
              images.scalar_type());
  auto x = patch_embedding(image_to_patches(images, options.patch_size()));  // (B, N, d)
  x = torch::cat({cls_token.expand({x.size(0), 1, x.size(2)}), x}, 1);
  x = embedding_dropout(x + position_embedding);
  for (size_t i = 0; i < blocks->size(); ++i) {
    x = blocks->ptr<TransformerBlockImpl>(i)->forward(x, /*key_padding_mask=*/{}, false);
  }
  return head->forward(final_norm(x).select(1, 0));
}

}  // namespace models
}  // namespace kvq
