#pragma once
// The fields every task config shares: the registry contract (task, seed, mechanism), the
// attention and Transformer shape, the optimiser, the learning-rate schedule and the bookkeeping
// frequencies. A task config derives from CommonTaskConfig, sets its own defaults for these in
// its constructor (the paper's values), adds its task-specific fields, and declares the shared
// fields in its schema with add_common_fields (one definition of their keys, help and checks).
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvq/models/layers.h"
#include "kvq/modules/attention_options.h"
#include "kvq/registry.h"
#include "kvq/train/config.h"
#include "kvq/train/schedules.h"

namespace kvq {
namespace tasks {

struct CommonTaskConfig {
  std::string task;                    // the registry name (set by --task)
  int64_t seed = 0;                    // model init, dropout, batch order (and data unless a
                                       // task has a data_seed)
  // Every block of the model (kvq/models/layers.h), passed unchanged to it: config keys d_model,
  // num_heads, ffn_dim, dropout (the block's fields of the same names), attention_dropout (its
  // attention's dropout; -1 = unset = dropout), and mechanism, projection, alpha_init,
  // alpha_floor, learn_alpha, chunk_size, pos_channels, pos_map (its attention's fields;
  // kvq/modules/attention_options.h). A task sets the rest (activation, norm_first, ...) to its
  // model's, or declares keys for them. The score scale is the model's.
  models::TransformerBlockOptions block = models::TransformerBlockOptions(64, 2).ffn_dim(256);
  int64_t num_layers = 2;              // blocks
  int64_t batch_size = 64;             // training mini-batch
  std::string optimizer = "adam";      // adam | adamw
  double lr = 1e-3;                    // peak learning rate (noam: its factor multiplies)
  double weight_decay = 0.0;           // adamw: decoupled decay; adam: L2 penalty
  double beta1 = 0.9;                  // Adam beta1
  double beta2 = 0.999;                // Adam beta2
  double adam_eps = 1e-8;              // Adam epsilon
  std::string schedule = "constant";   // constant | cosine | cosine-product | noam
  int64_t warmup_steps = 0;            // warm-up updates of the schedule
  double min_lr = 0.0;                 // floor of the cosine schedules
  double grad_clip = 0.0;              // max global gradient norm; 0 = off
  int64_t eval_every = 0;              // validate every N updates (and each epoch end); 0 = epochs
  int64_t checkpoint_every = 0;        // checkpoint every N updates (and each epoch end)
  int64_t log_every = 20;              // train metrics record every N updates
  int64_t max_skipped_steps = 3;       // updates with a numerical fault skipped before the run
                                       // stops (TrainingLoop); 0 = stop at the first
  int64_t eval_batch_size = 500;       // batch of validation and test
};

namespace detail {
template <class Config, class M>
M Config::*member(M CommonTaskConfig::*m) {
  return static_cast<M Config::*>(m);
}
bool contains_name(const std::vector<std::string>& names, const std::string& name);

// Declares the attention field `access` of CommonTaskConfig::block under `key`.
template <class Config, class M>
void attention_field(train::ConfigSchema<Config>& schema, const std::string& key,
                     M& (nn::AttentionOptions::*access)() noexcept, const std::string& help) {
  schema.template accessor_field<M>(
      key,
      [access](const Config& c) {
        auto attention = c.block.attention();
        return (attention.*access)();
      },
      [access](Config& c, const M& value) { (c.block.attention().*access)() = value; }, help);
}

// An upgrade (train::ConfigSchema::upgrade) of configs saved before ffn_dim had one meaning,
// when a task's ffn_dim = 0 stood for `multiple` * d_model: such a saved 0 becomes that width.
std::function<void(nlohmann::json&)> upgrade_zero_ffn_dim(int64_t multiple);
}  // namespace detail

// Declares every CommonTaskConfig field in `schema` with its help text, and the checks: the
// attention options (nn::check_attention_options: names, values, and options that do not apply
// to the mechanism refused by name); known optimiser and schedule names; positive sizes; d_model a multiple of
// num_heads; dropout in [0, 1); lr > 0; min_lr in [0, lr]; ...
template <class Config>
train::ConfigSchema<Config>& add_common_fields(train::ConfigSchema<Config>& schema) {
  using C = CommonTaskConfig;
  using A = nn::AttentionOptions;
  using B = models::TransformerBlockOptions;
  using detail::member;
  const auto mechanisms = mechanism_names();
  const auto schedules = train::lr_schedule_kinds();
  const std::vector<std::string> optimizers = {"adam", "adamw"};
  schema.field("task", member<Config>(&C::task), "the task (set by --task)")
      .field("seed", member<Config>(&C::seed), "model init, dropout, batch order (and data)");
  detail::attention_field(schema, "mechanism", &A::mechanism,
                          "attention: " + train::join_names(mechanisms));
  detail::attention_field(schema, "projection", &A::projection,
                          "qkv | kv | kv-pos; \"\" = the mechanism's own");
  detail::attention_field(schema, "alpha_init", &A::alpha_init,
                          "initial ridge alpha (mechanisms with alpha)");
  detail::attention_field(
      schema, "alpha_floor", &A::alpha_floor,
      "lower bound of alpha = softplus(theta) + alpha_floor (mechanisms with alpha)");
  detail::attention_field(
      schema, "learn_alpha", &A::learn_alpha,
      "learn alpha per head; false = fixed at alpha_init (mechanisms with alpha)");
  detail::attention_field(
      schema, "chunk_size", &A::chunk_size,
      "chunk length of the causal chunk-parallel mechanisms; 0 = the head width");
  detail::attention_field(schema, "pos_channels", &A::pos_channels,
                          "channels of the 2D positional table (kv-pos projection)");
  detail::attention_field(
      schema, "pos_map", &A::pos_map,
      "kv-pos map Linear(p, 1): head (one per head) | layer (one per layer, the paper's)");
  schema
      .field("d_model", member<Config>(&C::block), &B::d_model, "model width d")
      .field("num_heads", member<Config>(&C::block), &B::num_heads, "attention heads")
      .field("num_layers", member<Config>(&C::num_layers), "Transformer blocks")
      .field("ffn_dim", member<Config>(&C::block), &B::ffn_dim, "feed-forward hidden width")
      .field("dropout", member<Config>(&C::block), &B::dropout, "dropout in blocks and head")
      .template accessor_field<double>(
          "attention_dropout",
          [](const Config& c) { return c.block.attention().dropout().value_or(-1.0); },
          [](Config& c, const double& p) {
            c.block.attention().dropout(p == -1.0 ? c10::nullopt : c10::optional<double>(p));
          },
          "dropout on the attention weights (softmax mechanisms); -1 = dropout")
      .field("batch_size", member<Config>(&C::batch_size), "training mini-batch")
      .field("optimizer", member<Config>(&C::optimizer), "adam | adamw")
      .field("lr", member<Config>(&C::lr), "peak learning rate (noam: factor of the formula)")
      .field("weight_decay", member<Config>(&C::weight_decay),
             "adamw: decoupled weight decay; adam: L2 penalty")
      .field("beta1", member<Config>(&C::beta1), "Adam beta1")
      .field("beta2", member<Config>(&C::beta2), "Adam beta2")
      .field("adam_eps", member<Config>(&C::adam_eps), "Adam epsilon")
      .field("schedule", member<Config>(&C::schedule), train::join_names(schedules))
      .field("warmup_steps", member<Config>(&C::warmup_steps), "warm-up updates of the schedule")
      .field("min_lr", member<Config>(&C::min_lr), "floor of the cosine schedules")
      .field("grad_clip", member<Config>(&C::grad_clip), "max global gradient norm; 0 = off")
      .field("eval_every", member<Config>(&C::eval_every),
             "validate every N updates (and each epoch end); 0 = epoch ends only")
      .field("checkpoint_every", member<Config>(&C::checkpoint_every),
             "checkpoint every N updates (and each epoch end); 0 = epoch ends only")
      .field("log_every", member<Config>(&C::log_every), "train metrics record every N updates")
      .field("max_skipped_steps", member<Config>(&C::max_skipped_steps),
             "updates with a non-finite loss or gradient or a failed factorisation skipped "
             "before the run stops; 0 = stop at the first")
      .field("eval_batch_size", member<Config>(&C::eval_batch_size),
             "batch of validation and test")
      .check([](const Config& c) {
        nn::check_attention_options(c.block.attention(), "attention", {},
                                    Config().block.attention());
      })
      .check("seed must be >= 0", [](const Config& c) { return c.seed >= 0; })
      .check("d_model must be a positive multiple of num_heads",
             [](const Config& c) {
               const auto& b = c.block;
               return b.d_model() > 0 && b.num_heads() > 0 && b.d_model() % b.num_heads() == 0;
             })
      .check("num_layers must be >= 1", [](const Config& c) { return c.num_layers >= 1; })
      .check("ffn_dim must be >= 1 (the feed-forward hidden width)",
             [](const Config& c) { return c.block.ffn_dim() >= 1; })
      .check("dropout must be in [0, 1)",
             [](const Config& c) { return c.block.dropout() >= 0 && c.block.dropout() < 1; })
      .check("attention_dropout must be -1 (= dropout) or in [0, 1)",
             [](const Config& c) {
               const auto p = c.block.attention().dropout();
               return !p || (*p >= 0 && *p < 1);
             })
      .check("batch_size must be >= 1", [](const Config& c) { return c.batch_size >= 1; })
      .check("optimizer must be adam or adamw",
             [optimizers](const Config& c) {
               return detail::contains_name(optimizers, c.optimizer);
             })
      .check("lr must be > 0", [](const Config& c) { return c.lr > 0; })
      .check("weight_decay must be >= 0", [](const Config& c) { return c.weight_decay >= 0; })
      .check("beta1 and beta2 must be in [0, 1)",
             [](const Config& c) {
               return c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1;
             })
      .check("adam_eps must be > 0", [](const Config& c) { return c.adam_eps > 0; })
      .check("schedule must be one of: " + train::join_names(schedules),
             [schedules](const Config& c) { return detail::contains_name(schedules, c.schedule); })
      .check("warmup_steps must be >= 0", [](const Config& c) { return c.warmup_steps >= 0; })
      .check("min_lr must be in [0, lr]",
             [](const Config& c) { return c.min_lr >= 0 && c.min_lr <= c.lr; })
      .check("grad_clip must be >= 0", [](const Config& c) { return c.grad_clip >= 0; })
      .check("eval_every and checkpoint_every must be >= 0",
             [](const Config& c) { return c.eval_every >= 0 && c.checkpoint_every >= 0; })
      .check("log_every must be >= 1", [](const Config& c) { return c.log_every >= 1; })
      .check("max_skipped_steps must be >= 0",
             [](const Config& c) { return c.max_skipped_steps >= 0; })
      .check("eval_batch_size must be >= 1",
             [](const Config& c) { return c.eval_batch_size >= 1; });
  return schema;
}

// The schema of `task`, one of `names`: a family whose presets differ per task name keeps one
// schema per name, built by build(name) on first use and kept for the program's life (TaskInfo
// holds references). An unknown name fails naming `family` and the valid names.
template <class Config>
const train::ConfigSchema<Config>& schema_of_task(
    const std::vector<std::string>& names, const std::string& task,
    train::ConfigSchema<Config> (*build)(const std::string&), const std::string& family) {
  static const auto schemas = [&] {
    std::map<std::string, std::unique_ptr<train::ConfigSchema<Config>>> out;
    for (const auto& name : names) {
      out[name] = std::make_unique<train::ConfigSchema<Config>>(build(name));
    }
    return out;
  }();
  const auto it = schemas.find(task);
  TORCH_CHECK(it != schemas.end(), family, ": unknown task '", task,
              "'; valid: ", train::join_names(names));
  return *it->second;
}

// The projection a run uses: config.projection, or the mechanism's own when that is "".
std::string resolved_projection(const CommonTaskConfig& config);

// Adam or AdamW over `parameters` with lr, (beta1, beta2), adam_eps and weight_decay.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(
    const std::vector<torch::Tensor>& parameters, const CommonTaskConfig& config);

// The config's schedule over `total_steps` updates (noam: d_model and lr as the factor); an
// invalid combination (warm-up longer than the run, ...) fails naming `schema_name`.
train::LrSchedule make_schedule(const CommonTaskConfig& config, int64_t total_steps,
                                const std::string& schema_name);

// A well-mixed 64-bit seed from two (splitmix64 finaliser of a * golden ratio + b): the seed of
// the episodes of update `b` of a run with seed `a`, and the like.
uint64_t mix_seeds(uint64_t a, uint64_t b);

// The random streams a run seeds from its own seed besides torch's generator: each task
// family's batch order (util::BatchSampler), apart from the generators seeded with the seed itself.
enum class SeedStream { kSyntheticBatches, kImageBatches, kLanguageModelBatches,
                        kTranslationBatches, kDistillBatches };

// The seed of `stream` in a run seeded with `run_seed` (each stream keeps the value its task
// drew before the streams shared this helper, so runs are unchanged).
uint64_t stream_seed(int64_t run_seed, SeedStream stream);

// Total elements of the module's parameters.
int64_t parameter_count(const torch::nn::Module& model);

// Model FLOPs (forward + backward = 3 x forward) per token of a Transformer whose Linear layers
// all see every token (SequenceTagger, LanguageModel): its Linear layers'
// (train::linear_flops_per_position) plus, spread over the `length` tokens of a sequence, the
// self-attention of each of `blocks` (TransformerBlocks; train::attention_flops, causal or not).
double token_training_flops(const torch::nn::Module& model, const torch::nn::ModuleList& blocks,
                            int64_t length, bool causal);

}  // namespace tasks
}  // namespace kvq
