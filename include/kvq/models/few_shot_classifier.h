#pragma once
// The few-shot classifier of the Intention paper's few-shot experiment (Garnelo & Czarnecki 2023;
// docs: tasks.md, "Experiments of the Intention paper", item 2): a small convolutional encoder,
// the support set of an N-way episode as keys (image features) and values (image features plus an
// embedding of the episode label), and the query images as queries of KVQ cross-attention layers.
// Episodes come from kvq/data/few_shot.h.
//
// With one layer of one head the mechanisms are classical few-shot learners: softmax is a soft
// nearest neighbour over the support set (Matching Networks, Vinyals et al. 2016); intention
// regresses the support values on the support keys with ridge regression and applies the solution
// to the query (a closed-form head as in R2-D2, Bertinetto et al. 2019).
#include <torch/torch.h>

#include <string>
#include <vector>

#include "kvq/models/layers.h"

namespace kvq {
namespace models {

struct ConvEncoderOptions {
  /// Image channels C. Default: 1.
  TORCH_ARG(int64_t, in_channels) = 1;
  /// Side of the square input image, in pixels. Default: 28.
  TORCH_ARG(int64_t, image_size) = 28;
  /// Output channels of every block. Default: 64 (Snell et al. 2017).
  TORCH_ARG(int64_t, channels) = 64;
  /// Blocks; each halves the side (rounding down), which must stay >= 1. Default: 4.
  TORCH_ARG(int64_t, num_blocks) = 4;
  /// Normalisation after each convolution: "group" (GroupNorm: every image on its own, so a
  /// feature never depends on the other images and training and evaluation behave alike),
  /// "batch" (BatchNorm2d: the statistics of all images of one call while training, running
  /// statistics in eval mode) or "none". Default: "group".
  TORCH_ARG(std::string, norm) = "group";
  /// Groups of GroupNorm; must divide channels. Default: 8.
  TORCH_ARG(int64_t, norm_groups) = 8;
};

// "Conv-4" of Prototypical Networks (Snell et al. 2017): num_blocks blocks
// Conv3x3(padding 1) - norm - ReLU - MaxPool2x2, then flatten.
// images float (M, C, image_size, image_size) -> (M, F), F = channels * s^2 with
// s = image_size halved (rounding down) num_blocks times (28 and 4 blocks: s = 1, F = channels).
class ConvEncoderImpl : public torch::nn::Cloneable<ConvEncoderImpl> {
 public:
  explicit ConvEncoderImpl(const ConvEncoderOptions& options = {});

  void reset() override;

  torch::Tensor forward(const torch::Tensor& images);

  // The feature width F.
  int64_t output_dim() const;

  ConvEncoderOptions options;
  torch::nn::Sequential blocks{nullptr};
};
TORCH_MODULE(ConvEncoder);

// One layer of the classifier: the queries attend to the support set, whose keys and values
// differ (MultiHeadKVQ with key != value), then a feed-forward network.
//   Pre-LN:  x = x + drop(CA(LN1(x), keys, values));   x = x + drop(FFN(LN2(x)))
//   Post-LN: x = LN1(x + drop(CA(x, keys, values)));   x = LN2(x + drop(FFN(x)))
// x (B, M, d), keys and values (B, S, d) -> (B, M, d); no mask, no causality.
class SupportAttentionBlockImpl : public torch::nn::Cloneable<SupportAttentionBlockImpl> {
 public:
  explicit SupportAttentionBlockImpl(const TransformerBlockOptions& options);

  void reset() override;

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& keys,
                        const torch::Tensor& values);

  TransformerBlockOptions options;
  kvq::nn::MultiHeadKVQ cross_attn{nullptr};
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Linear linear1{nullptr}, linear2{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(SupportAttentionBlock);

struct FewShotClassifierOptions {
  explicit FewShotClassifierOptions(int64_t num_ways) : num_ways_(num_ways) {}
  /// Classes per episode N: label embeddings and output logits.
  TORCH_ARG(int64_t, num_ways);
  /// Image channels C. Default: 1.
  TORCH_ARG(int64_t, in_channels) = 1;
  /// Side of the square input image, in pixels. Default: 28.
  TORCH_ARG(int64_t, image_size) = 28;
  /// Channels of the encoder blocks. Default: 64.
  TORCH_ARG(int64_t, encoder_channels) = 64;
  /// Encoder blocks (conv4) or Linear layers (mlp). Default: 4.
  TORCH_ARG(int64_t, encoder_blocks) = 4;
  /// Encoder kind: "conv4" (ConvEncoder) or "mlp", for points given as C-channel 1x1 images
  /// (kvq/data/gaussian_episodes.h): the flattened input (C H W) through encoder_blocks Linear
  /// layers of width encoder_channels with a ReLU between two layers (none after the last).
  /// Default: "conv4".
  TORCH_ARG(std::string, encoder) = "conv4";
  /// Encoder normalisation, "group", "batch" or "none" (see ConvEncoderOptions). Default: "group".
  TORCH_ARG(std::string, encoder_norm) = "group";
  /// Groups of the encoder's GroupNorm; must divide encoder_channels. Default: 8.
  TORCH_ARG(int64_t, norm_groups) = 8;
  /// The attention layers (SupportAttentionBlock): width d, heads, feed-forward, dropout,
  /// Pre-LN (with a final LayerNorm) or Post-LN, attention. Default: d 64, 1 head (one ridge
  /// regression / one soft nearest neighbour over the full width), feed-forward 2 * d, ReLU, no
  /// dropout, Pre-LN.
  TORCH_ARG(TransformerBlockOptions, block) =
      TransformerBlockOptions(64, 1).ffn_dim(128).dropout(0.0).norm_first(true);
  /// Cross-attention layers. Default: 1.
  TORCH_ARG(int64_t, num_layers) = 1;
  /// One mechanism per layer (num_layers names); empty = block.mechanism() everywhere.
  /// Default: empty.
  TORCH_ARG(std::vector<std::string>, mechanisms) = {};
  /// How the class scores are read (see FewShotClassifierImpl): "head", a Linear(d, N) head on
  /// the queries' outputs after num_layers SupportAttentionBlocks; or "labels", in-context
  /// classification: the last layer is a label readout whose values are the support labels'
  /// embeddings and whose output is scored against the same embeddings. Default: "head".
  TORCH_ARG(std::string, readout) = "head";
  /// What the "labels" readout compares: "projected", the projections W_q, W_k of the shared
  /// projection P of the features (after the blocks, if any); or "encoder", the encoder features
  /// f themselves, each normalised by a LayerNorm without parameters (no P, W_q, W_k: the
  /// prototype / ridge rule on the encoder's own features; needs num_layers = 1 and
  /// num_heads dividing the feature width). Default: "projected".
  TORCH_ARG(std::string, readout_features) = "projected";
  /// Initial temperature tau of the "labels" readout (learned as log tau). Default: 10.
  TORCH_ARG(double, readout_scale_init) = 10.0;

 public:
  // The options of this classifier's ConvEncoder.
  ConvEncoderOptions encoder_options() const;
};

// encode: ConvEncoder, images -> features f (F).
// forward_features, per episode, with P = LayerNorm(Linear(F, d)) shared by support and query:
//   keys    k_i = P(f_i)                     support image i, label y_i in [0, N)
//   values  v_i = P(f_i) + E[y_i]            E: learned label embedding (N, d)
//   queries x_j = P(f_j)                     query image j
//   x = num_layers SupportAttentionBlocks(x, keys, values)  (FFN 2d, ReLU; + LayerNorm if Pre-LN)
//   logits_j = Linear(d, N)(x_j)
// readout "labels" (in-context classification): layers 1 .. num_layers - 1 are the blocks above;
// the last layer is the label readout, per head h of width d_h = d / H:
//   q_j = split_h(W_q x_j), k_i = split_h(W_k P(f_i))   (W_q := W_k with the kv projection;
//                                                         both initialised to the identity)
//   o_j = mean_h mechanism(q, k, V = E[y])_j             values = label embeddings only
//   logits_jc = tau <o_j, E[c]>                          tied readout, tau learned (log tau)
// E (N, d) starts with orthonormal rows. Every mechanism here is linear in V, so
// o_j = sum_i a_ji E[y_i] and, while E stays orthonormal, logits_jc = tau sum_{i: y_i = c} a_ji:
// with softmax a_j = softmax(q_j K^T scale), the soft nearest-neighbour / prototype rule; with
// intention a_j = q_j (K^T K + alpha I)^{-1} K^T, the ridge classifier on the support features
// regressing the one-hot labels. The kv-pos projection does not apply to the readout.
// readout_features "encoder": k_i = LN(f_i), q_j = LN(f_j) (LayerNorm without parameters, no P,
// W_q, W_k), so the readout is that rule on the encoder's own (normalised) features: with one
// shot, softmax's argmax is the nearest support feature in Euclidean distance after the
// normalisation, as the prototype rule is on the features unnormalised.
// forward: encode (support and query images in one call, so a "batch"-norm encoder sees the whole
// episode batch while training), then forward_features.
//   support_images float (B, S, C, H, W), support_labels int64 (B, S) in [0, N),
//   query_images float (B, M, C, H, W) -> logits (B, M, N) over the episode labels.
// Nothing requires S = N K or a support example of every class: the attention sees what is given.
class FewShotClassifierImpl : public torch::nn::Cloneable<FewShotClassifierImpl> {
 public:
  explicit FewShotClassifierImpl(int64_t num_ways)
      : FewShotClassifierImpl(FewShotClassifierOptions(num_ways)) {}
  explicit FewShotClassifierImpl(const FewShotClassifierOptions& options);

  void reset() override;

  torch::Tensor forward(const torch::Tensor& support_images, const torch::Tensor& support_labels,
                        const torch::Tensor& query_images);

  // Features of the encoder: images (M, C, H, W) -> (M, F), or (B, S, C, H, W) -> (B, S, F), as
  // for kvq::data::prototype_logits on the same features.
  torch::Tensor encode(const torch::Tensor& images);

  // The attention part on given features: support_features (B, S, F), support_labels int64 (B, S)
  // in [0, N), query_features (B, M, F) -> logits (B, M, N).
  torch::Tensor forward_features(const torch::Tensor& support_features,
                                 const torch::Tensor& support_labels,
                                 const torch::Tensor& query_features);

  // The encoder's feature width F.
  int64_t feature_dim() const;

  FewShotClassifierOptions options;
  ConvEncoder encoder{nullptr};                  // encoder "conv4" only
  torch::nn::Sequential mlp_encoder{nullptr};    // encoder "mlp" only
  torch::nn::Linear feature_proj{nullptr};       // not with readout_features "encoder"
  torch::nn::LayerNorm feature_norm{nullptr};    // not with readout_features "encoder"
  torch::nn::Embedding label_embedding{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm final_norm{nullptr};  // Pre-LN with at least one block only
  torch::nn::Linear head{nullptr};           // readout "head" only
  // readout "labels" only: W_q (undefined with the kv projection or readout_features
  // "encoder"), W_k (undefined with readout_features "encoder"), the ridge parameter of
  // the readout's heads ((H), alpha = softplus(raw) + alpha_floor; mechanisms with alpha) and
  // log tau.
  torch::nn::Linear readout_q{nullptr}, readout_k{nullptr};
  torch::Tensor readout_alpha_raw;
  torch::Tensor readout_log_scale;

  // The readout's positive per-head ridge parameter (H); undefined without alpha.
  torch::Tensor readout_alpha() const;

 private:
  // images (M, C, H, W) -> features (M, F) of the chosen encoder.
  torch::Tensor run_encoder(const torch::Tensor& images);
  // logits (B, M, N) of the label readout: x (B, M, w), support (B, S, w), labels (B, S); w = d,
  // or F with readout_features "encoder".
  torch::Tensor label_readout(const torch::Tensor& x, const torch::Tensor& support,
                              const torch::Tensor& support_labels);
  std::string readout_mechanism_;
};
TORCH_MODULE(FewShotClassifier);

}  // namespace models
}  // namespace kvq
