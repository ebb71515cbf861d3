#include "kvq/models/grid_policy.h"

#include <c10/util/Exception.h>

#include "kvq/models/layers.h"

namespace kvq {
namespace models {

GridPolicyImpl::GridPolicyImpl(const GridPolicyOptions& options) : options(options) { reset(); }

void GridPolicyImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.num_types() >= 1 && o.num_actions() >= 1 && o.max_side() >= 1,
              "GridPolicy: num_types, num_actions and max_side must be >= 1, got ", o.num_types(),
              ", ", o.num_actions(), ", ", o.max_side());
  const auto layers = layer_blocks("GridPolicy", o.block(), o.mechanisms(), o.num_layers(),
                                   /*needs_norm_first=*/true);
  const int64_t d = o.block().d_model();
  type_embedding = register_module("type_embedding", torch::nn::Embedding(o.num_types(), d));
  row_embedding = register_module("row_embedding", torch::nn::Embedding(o.max_side(), d));
  col_embedding = register_module("col_embedding", torch::nn::Embedding(o.max_side(), d));
  cls_token = register_parameter("cls_token", torch::randn({1, 1, d}) * 0.02);
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (const auto& layer : layers) blocks->push_back(TransformerBlock(layer));
  final_norm =
      register_module("final_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  head = register_module("head", torch::nn::Linear(d, o.num_actions()));
}

torch::Tensor GridPolicyImpl::forward(const torch::Tensor& types, const torch::Tensor& rows,
                                      const torch::Tensor& cols) {
  check_tokens("GridPolicy", "types", types, options.num_types());
  check_tokens("GridPolicy", "rows", rows, options.max_side());
  check_tokens("GridPolicy", "cols", cols, options.max_side());
  TORCH_CHECK(rows.sizes() == types.sizes() && cols.sizes() == types.sizes(),
              "GridPolicy: types, rows and cols must have the same shape (B, N), got ",
              types.sizes(), ", ", rows.sizes(), ", ", cols.sizes());
  auto x = type_embedding(types) + row_embedding(rows) + col_embedding(cols);
  x = torch::cat({cls_token.expand({x.size(0), 1, x.size(2)}), x}, 1);
  for (size_t i = 0; i < blocks->size(); ++i) {
    x = blocks->ptr<TransformerBlockImpl>(i)->forward(x, /*key_padding_mask=*/{}, false);
  }
  return head(final_norm(x).select(1, 0));
}

}  // namespace models
}  // namespace kvq
