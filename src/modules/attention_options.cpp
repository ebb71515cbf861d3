#include "kvq/modules/attention_options.h"

#include <cmath>

#include "kvq/registry.h"
#include "kvq/util/join_names.h"

namespace kvq {
namespace nn {
namespace {

// The registered mechanisms for which `applies` holds, for the error messages.
template <class Predicate>
std::string mechanisms_where(Predicate applies) {
  std::vector<std::string> names;
  for (const auto& info : mechanisms()) {
    if (applies(info)) names.push_back(info.name);
  }
  return util::join_names(names);
}

Projection projection_of(const AttentionOptions& o, const MechanismInfo& info) {
  return o.projection().empty() ? info.projection : parse_projection(o.projection());
}

bool uses_kv_pos(const AttentionOptions& o, const MechanismInfo& info) {
  return projection_of(o, info) == Projection::KVPos;
}

}  // namespace

Projection resolved_projection(const AttentionOptions& options) {
  return projection_of(options, find_mechanism(options.mechanism()));
}

torch::Tensor alpha_from_raw(const torch::Tensor& raw, double alpha_floor) {
  return torch::softplus(raw) + alpha_floor;
}

double alpha_raw_for(double alpha, double alpha_floor) {
  const double excess = alpha - alpha_floor;
  constexpr double kSoftplusThreshold = 20.0;  // torch::softplus(t) = t above it
  return excess > kSoftplusThreshold ? excess : excess + std::log(-std::expm1(-excess));
}

void check_attention_options(const AttentionOptions& o, const std::string& owner,
                             const std::vector<std::string>& layer_mechanisms,
                             const AttentionOptions& defaults) {
  std::vector<const MechanismInfo*> layers;
  if (layer_mechanisms.empty()) {
    try {
      layers.push_back(&find_mechanism(o.mechanism()));
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, owner, ": mechanism: ", e.what_without_backtrace());
    }
  }
  for (size_t i = 0; i < layer_mechanisms.size(); ++i) {
    try {
      layers.push_back(&find_mechanism(layer_mechanisms[i]));
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, owner, ": mechanisms[", i, "]: ", e.what_without_backtrace());
    }
  }
  TORCH_CHECK(o.projection().empty() || o.projection() == "qkv" || o.projection() == "kv" ||
                  o.projection() == "kv-pos",
              owner, ": projection must be \"\" (the mechanism's own), qkv, kv or kv-pos, got '",
              o.projection(), "'");
  for (const auto* info : layers) {
    TORCH_CHECK(projection_of(o, *info) != Projection::KVPos || info->traits.has_softmax, owner,
                ": projection 'kv-pos' adds a term to softmax scores, and mechanism '", info->name,
                "' has none; mechanisms with a softmax: ",
                mechanisms_where([](const MechanismInfo& m) { return m.traits.has_softmax; }));
  }
  TORCH_CHECK(o.alpha_floor() > 0 && o.alpha_init() > o.alpha_floor(), owner,
              ": need alpha_init > alpha_floor > 0, got alpha_init = ", o.alpha_init(),
              ", alpha_floor = ", o.alpha_floor());
  TORCH_CHECK(o.chunk_size() >= 0, owner, ": chunk_size must be >= 0 (0 = the head width), got ",
              o.chunk_size());
  TORCH_CHECK(o.pos_channels() >= 1, owner, ": pos_channels must be >= 1, got ",
              o.pos_channels());
  TORCH_CHECK(o.pos_map() == "head" || o.pos_map() == "layer", owner,
              ": pos_map must be head (one kv-pos map per head) or layer (one per layer), got '",
              o.pos_map(), "'");
  TORCH_CHECK(!o.scale() || *o.scale() > 0, owner, ": scale must be > 0, got ",
              o.scale() ? *o.scale() : 0.0);
  TORCH_CHECK(!o.dropout() || (*o.dropout() >= 0.0 && *o.dropout() < 1.0), owner,
              ": dropout must be in [0, 1), got ", o.dropout() ? *o.dropout() : 0.0);

  // Options away from their defaults that no layer would use.
  std::vector<std::string> names;
  for (const auto* info : layers) names.push_back(info->name);
  const std::string running = (names.size() == 1 ? "mechanism '" : "mechanisms '") +
                              util::join_names(names) + "'";
  auto applies_somewhere = [&](auto applies) {
    for (const auto* info : layers) {
      if (applies(*info)) return true;
    }
    return false;
  };
  const auto has_alpha = [](const MechanismInfo& m) { return m.traits.uses_alpha; };
  for (const auto& [name, changed] :
       std::vector<std::pair<std::string, bool>>{
           {"alpha_init", o.alpha_init() != defaults.alpha_init()},
           {"alpha_floor", o.alpha_floor() != defaults.alpha_floor()},
           {"learn_alpha", o.learn_alpha() != defaults.learn_alpha()}}) {
    TORCH_CHECK(!changed || applies_somewhere(has_alpha), owner, ": ", name,
                " applies only to the mechanisms with a ridge alpha (",
                mechanisms_where(has_alpha), "), and ", running, " has none; leave it unset");
  }
  const auto chunked = [](const MechanismInfo& m) { return m.traits.chunked; };
  TORCH_CHECK(o.chunk_size() == defaults.chunk_size() || applies_somewhere(chunked), owner,
              ": chunk_size applies only to the chunk-parallel causal mechanisms (",
              mechanisms_where(chunked), "), not to ", running, "; leave it unset");
  const auto kv_pos = [&](const MechanismInfo& m) { return uses_kv_pos(o, m); };
  for (const auto& [name, changed] : std::vector<std::pair<std::string, bool>>{
           {"pos_channels", o.pos_channels() != defaults.pos_channels()},
           {"pos_map", o.pos_map() != defaults.pos_map()}}) {
    TORCH_CHECK(!changed || applies_somewhere(kv_pos), owner, ": ", name,
                " applies only to the kv-pos projection, and ", running, " runs with projection '",
                projection_name(projection_of(o, *layers.front())), "'; leave it unset");
  }
}

AttentionOptions layer_attention(const AttentionOptions& options, const std::string& mechanism) {
  const auto& info = find_mechanism(mechanism);
  const AttentionOptions defaults;
  AttentionOptions out = options;
  out.mechanism(mechanism);
  if (!info.traits.uses_alpha) {
    out.alpha_init(defaults.alpha_init())
        .alpha_floor(defaults.alpha_floor())
        .learn_alpha(defaults.learn_alpha());
  }
  if (!info.traits.chunked) out.chunk_size(defaults.chunk_size());
  if (!uses_kv_pos(options, info)) {
    out.pos_channels(defaults.pos_channels()).pos_map(defaults.pos_map());
  }
  return out;
}

}  // namespace nn
}  // namespace kvq
