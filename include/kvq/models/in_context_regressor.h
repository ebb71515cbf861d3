#pragma once
// The in-context regressor of the Intention paper's few-shot experiment (Garnelo & Czarnecki 2023;
// docs: tasks.md, "Experiments of the Intention paper", item 1): target-x tokens cross-attend to the
// context pairs, keys from the context x, values from the context (x, y), and read out y.
// With one `intention` head and the weights of set_ridge_weights() the model computes the ridge
// solution x*^T (X^T X + alpha I)^{-1} X^T y exactly; softmax attention cannot.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "kvq/models/layers.h"

namespace kvq {
namespace models {

struct InContextRegressorOptions {
  InContextRegressorOptions(int64_t x_dim, int64_t y_dim) : x_dim_(x_dim), y_dim_(y_dim) {}
  /// Input dimension dx.
  TORCH_ARG(int64_t, x_dim);
  /// Output dimension dy.
  TORCH_ARG(int64_t, y_dim);
  /// The layers' width, heads, feed-forward (width, activation), dropout (residual branches,
  /// feed-forward hidden layer, attention weights unless attention.dropout is set), LayerNorm
  /// epsilon, biases (also of the embeddings and the readout) and attention. norm_first must be
  /// true: the layers are Pre-LN, or without LayerNorm when layer_norm is false. Default: d 64,
  /// 4 heads, feed-forward 4 * d, GELU, no dropout.
  TORCH_ARG(TransformerBlockOptions, block) =
      TransformerBlockOptions(64, 4).activation("gelu").dropout(0.0).norm_first(true);
  /// Cross-attention layers. Default: 2.
  TORCH_ARG(int64_t, num_layers) = 2;
  /// A feed-forward branch after each cross-attention. Default: true.
  TORCH_ARG(bool, feed_forward) = true;
  /// Pre-LN: LayerNorm before each branch and before the readout; false = no LayerNorm at all.
  /// Default: true.
  TORCH_ARG(bool, layer_norm) = true;
  /// One mechanism per layer (num_layers names); empty = block.mechanism() everywhere.
  /// Default: empty.
  TORCH_ARG(std::vector<std::string>, mechanisms) = {};
  /// Width F of a learned feature map phi(x) = GELU(W2 GELU(W1 x + b1) + b2) applied to every x
  /// before the embeddings (nonlinear functions: GP, sinusoid); 0 = phi(x) = x. Default: 0.
  TORCH_ARG(int64_t, feature_dim) = 0;
};

// One layer: cross-attention of the target tokens h (queries) to fixed context tokens (keys and
// values), then the feed-forward branch, each residual:
//   layer_norm:  h = h + drop(CA(LN1(h), keys, values));  h = h + drop(FFN(LN2(h)))
//   otherwise:   h = h + drop(CA(h, keys, values));       h = h + drop(FFN(h))
// FFN(h) = W2 drop(act(W1 h + b1)) + b2, absent when options.feed_forward() is false.
// h (B, M, d), keys and values (B, N, d) -> (B, M, d); key_padding_mask (B, N) bool, true = padding.
class InContextRegressorLayerImpl : public torch::nn::Cloneable<InContextRegressorLayerImpl> {
 public:
  InContextRegressorLayerImpl(const InContextRegressorOptions& options, std::string mechanism);

  void reset() override;

  torch::Tensor forward(const torch::Tensor& h, const torch::Tensor& keys,
                        const torch::Tensor& values, const torch::Tensor& key_padding_mask = {});

  InContextRegressorOptions options;
  std::string mechanism;
  kvq::nn::MultiHeadKVQ attn{nullptr};
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};      // layer_norm only
  torch::nn::Linear linear1{nullptr}, linear2{nullptr};     // feed_forward only
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(InContextRegressorLayer);

// Keys    = x_embed(phi(context_x))                  Linear(F, d), shared with the queries
// Values  = xy_embed(concat(phi(context_x), context_y))   Linear(F + dy, d)
// h0      = x_embed(phi(target_x))
// phi = the feature map of options.feature_dim (F = feature_dim), or the identity (F = dx).
// h       = num_layers InContextRegressorLayer (keys and values fixed, only h is updated)
// y*      = readout(LN(h))                           Linear(d, dy); no LN when !layer_norm
// context_x (B, N, dx), context_y (B, N, dy), target_x (B, M, dx) -> (B, M, dy), N >= 1.
// context_padding_mask (B, N) bool, true = that context pair is padding (variable N in a batch).
// Targets never attend to each other: each prediction depends on its own x* and the context only,
// and the output is invariant to permutations of the context (except under the kv-pos projection,
// whose score term depends on the key's position).
class InContextRegressorImpl : public torch::nn::Cloneable<InContextRegressorImpl> {
 public:
  InContextRegressorImpl(int64_t x_dim, int64_t y_dim)
      : InContextRegressorImpl(InContextRegressorOptions(x_dim, y_dim)) {}
  explicit InContextRegressorImpl(const InContextRegressorOptions& options);

  void reset() override;

  torch::Tensor forward(const torch::Tensor& context_x, const torch::Tensor& context_y,
                        const torch::Tensor& target_x,
                        const torch::Tensor& context_padding_mask = {});

  InContextRegressorOptions options;
  torch::nn::Sequential features{nullptr};  // feature_dim > 0 only
  torch::nn::Linear x_embed{nullptr}, xy_embed{nullptr};
  torch::nn::ModuleList layers{nullptr};
  torch::nn::LayerNorm final_norm{nullptr};  // layer_norm only
  torch::nn::Linear readout{nullptr};
};
TORCH_MODULE(InContextRegressor);

// Options of the exact ridge construction: one `intention` layer with one head, d_model = dx + dy,
// no feed-forward, no LayerNorm, no dropout, qkv projection, alpha fixed (learn_alpha false).
InContextRegressorOptions ridge_construction_options(int64_t x_dim, int64_t y_dim);

// Hand-sets the weights of a one-layer, one-head model with no feed-forward, no LayerNorm and no
// feature map
// (d_model >= dx + dy; biases, where present, set to zero) so that its ordinary forward, in eval
// mode or with dropout 0, computes
//   prediction = x*^T (X^T X + alpha I)^{-1} X^T y      (ridge_posterior_mean)
// when its mechanism is `intention` (projection qkv or kv):
//   x_embed(x) = [x, 0], xy_embed(x, y) = [0_dx, y, 0], W_q = W_k = W_v = W_o = I,
//   readout = rows dx .. dx + dy - 1 of h, and alpha_raw = softplus^{-1}(alpha - alpha_floor).
// Then h1 = [x*, 0] + [0, x*^T (K^T K + alpha I)^{-1} K^T V] with K = [X, 0], V = [0, y, 0]; the
// zero padding of the head width decouples from the solve, and intention ignores the score scale.
// Needs alpha > alpha_floor. Mechanisms without alpha (e.g. softmax) get the same weights and
// compute something else (a kernel smoother of y), which is the paper's point.
void set_ridge_weights(InContextRegressor& model, double alpha);

}  // namespace models
}  // namespace kvq
