#pragma once
// The options of one attention layer: which mechanism, how it makes q, k and v, and the
// parameters of the mechanism itself. One struct flows unchanged from a task config
// (CommonTaskConfig::attention, config keys of the same names) through the models' options
// (their `attention`) to kvq::nn::MultiHeadKVQ and into the functional call; it is checked at
// those boundaries by check_attention_options, and an option that applies to none of the
// mechanisms it runs with is refused by name instead of being ignored.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "kvq/registry.h"

namespace kvq {
namespace nn {

struct AttentionOptions {
  /// Mechanism name from the registry (kvq::mechanism_names()). Default: "softmax".
  TORCH_ARG(std::string, mechanism) = "softmax";
  /// "qkv", "kv" or "kv-pos"; empty = the mechanism preset's own projection. Default: "".
  TORCH_ARG(std::string, projection) = "";
  /// Initial ridge parameter alpha of every head (mechanisms with alpha). Default: 1.
  TORCH_ARG(double, alpha_init) = 1.0;
  /// alpha = softplus(theta) + alpha_floor, so it stays positive by construction (mechanisms with
  /// alpha). Default: 1e-4.
  TORCH_ARG(double, alpha_floor) = 1e-4;
  /// Learn alpha per head; otherwise it is a buffer fixed at alpha_init (mechanisms with alpha).
  /// Default: true.
  TORCH_ARG(bool, learn_alpha) = true;
  /// Channels p of the 2D positional table (the kv-pos projection). Default: 10 (the paper's
  /// synthetic tasks).
  TORCH_ARG(int64_t, pos_channels) = 10;
  /// The kv-pos map Linear(p, 1): "head" = one per head (pos_weight (H, p), pos_bias (H)), or
  /// "layer" = one shared by the layer's heads (pos_weight (p), pos_bias ()), as the paper's code
  /// has it. Default: "head".
  TORCH_ARG(std::string, pos_map) = "head";
  /// Chunk length of the causal chunk-parallel algorithms (linear and least-squares mechanisms);
  /// 0 = the head width. Default: 0.
  TORCH_ARG(int64_t, chunk_size) = 0;
  /// Score scale of the softmax and kernel mixers; unset = 1/sqrt(head width). Default: unset.
  TORCH_ARG(c10::optional<double>, scale) = c10::nullopt;
  /// Dropout on the attention weights, in [0, 1), while training. Only mechanisms with a softmax
  /// have weights to drop; the others run as with 0 (a stack's dropout may hold a value for all
  /// its layers, so this option is never refused). Unset = the owner's: 0 in MultiHeadKVQ, the
  /// block's dropout in a TransformerBlock (as torch::nn::TransformerEncoderLayer uses its one
  /// dropout for the attention too). Default: unset.
  TORCH_ARG(c10::optional<double>, dropout) = c10::nullopt;
};

// Checks `options` for layers running `layer_mechanisms` (empty = options.mechanism() alone):
// every name is registered, the projection is valid for each (kv-pos needs a softmax), alpha_init
// > alpha_floor > 0, chunk_size >= 0, pos_channels >= 1, pos_map head or layer, scale > 0,
// dropout in [0, 1); and each option set away from its default (`defaults`: AttentionOptions()
// unless the owner has its own, e.g. a task config's) applies to at least one of the layers
// (alpha_init, alpha_floor, learn_alpha: a mechanism with alpha; chunk_size: a chunk-parallel
// causal mechanism; pos_channels, pos_map: the kv-pos projection; dropout is never refused).
// Errors start with `owner` and name the option, its valid values or the mechanisms it applies to.
void check_attention_options(const AttentionOptions& options, const std::string& owner,
                             const std::vector<std::string>& layer_mechanisms = {},
                             const AttentionOptions& defaults = {});

// The projection `options` run their mechanism with: options.projection(), or the mechanism's own
// (MechanismInfo::projection) when that is "". Errors name an unknown mechanism or projection.
Projection resolved_projection(const AttentionOptions& options);

// The ridge parameter of each head from the raw parameter a module learns:
//   alpha = softplus(raw) + alpha_floor,   softplus as torch computes it (beta 1, threshold 20),
// positive by construction (the Intention paper's alpha > 0). raw (H) -> (H).
torch::Tensor alpha_from_raw(const torch::Tensor& raw, double alpha_floor);
// The raw parameter whose alpha_from_raw is `alpha`: softplus^{-1}(alpha - alpha_floor), taken as
// the excess itself above 20, where torch's softplus is the identity, so that the round trip
// reproduces alpha to rounding. Needs alpha > alpha_floor (check_attention_options checks it).
// python/kvq/nn.py mirrors both; tests/python/test_package.py checks that they agree.
double alpha_raw_for(double alpha, double alpha_floor);

// The options of one layer of a stack checked with check_attention_options: `options` running
// `mechanism`, the options that do not apply to it at their defaults (a softmax layer in a stack
// with intention layers does not see their alpha_init).
AttentionOptions layer_attention(const AttentionOptions& options, const std::string& mechanism);

}  // namespace nn
}  // namespace kvq

// Declares, in an options struct with a TORCH_ARG(kvq::nn::AttentionOptions, attention), the
// setters and getters of every field of `attention` on the struct itself, so that
// `Options(...).mechanism("intention").alpha_init(0.5)` reads as with torch::nn options.
#define KVQ_ATTENTION_FORWARD(T, name)                         \
 public:                                                       \
  inline auto name(const T& new_##name)->decltype(*this) {     \
    this->attention_.name(new_##name);                         \
    return *this;                                              \
  }                                                            \
  inline const T& name() const noexcept { return this->attention_.name(); }
#define KVQ_ATTENTION_ARGS                                     \
  KVQ_ATTENTION_FORWARD(std::string, mechanism)                \
  KVQ_ATTENTION_FORWARD(std::string, projection)               \
  KVQ_ATTENTION_FORWARD(double, alpha_init)                    \
  KVQ_ATTENTION_FORWARD(double, alpha_floor)                   \
  KVQ_ATTENTION_FORWARD(bool, learn_alpha)                     \
  KVQ_ATTENTION_FORWARD(int64_t, pos_channels)                 \
  KVQ_ATTENTION_FORWARD(std::string, pos_map)                  \
  KVQ_ATTENTION_FORWARD(int64_t, chunk_size)                   \
  KVQ_ATTENTION_FORWARD(c10::optional<double>, scale)          \
  /** The attention of every layer (kvq/modules/attention_options.h). */ \
  TORCH_ARG(::kvq::nn::AttentionOptions, attention)
