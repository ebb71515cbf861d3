#pragma once
// The fields every task config shares: the registry contract (task, seed, mechanism), the
// attention and Transformer shape, the optimiser, the learning-rate schedule and the bookkeeping
// frequencies. A task config derives from CommonTaskConfig, sets its own defaults for these in
// its constructor (the paper's values), adds its task-specific fields, and declares the shared
// fields in its schema with add_common_fields (one definition of their keys, help and checks).
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

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
  // The attention of every layer, passed unchanged to the model: config keys mechanism,
  // projection, alpha_init, alpha_floor, learn_alpha, chunk_size, pos_channels, pos_map (the
  // fields of the same names; kvq/modules/attention_options.h). The score scale is the model's.
  nn::AttentionOptions attention;
  int64_t d_model = 64;                // model width d
  int64_t num_heads = 2;               // attention heads
  int64_t num_layers = 2;              // blocks
  int64_t ffn_dim = 0;                 // feed-forward width; 0 = the model's default
  double dropout = 0.1;                // dropout in blocks and head
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
}  // namespace detail

// Declares every CommonTaskConfig field in `schema` with its help text, and the checks: the
// attention options (nn::check_attention_options: names, values, and options that do not apply
// to the mechanism refused by name); known optimiser and schedule names; positive sizes; d_model a multiple of
// num_heads; dropout in [0, 1); lr > 0; min_lr in [0, lr]; ...
template <class Config>
train::ConfigSchema<Config>& add_common_fields(train::ConfigSchema<Config>& schema) {
  using C = CommonTaskConfig;
  using A = nn::AttentionOptions;
  using detail::member;
  const auto mechanisms = mechanism_names();
  const auto schedules = train::lr_schedule_kinds();
  const std::vector<std::string> optimizers = {"adam", "adamw"};
  schema.field("task", member<Config>(&C::task), "the task (set by --task)")
      .field("seed", member<Config>(&C::seed), "model init, dropout, batch order (and data)")
      .field("mechanism", member<Config>(&C::attention), &A::mechanism,
             "attention: " + train::join_names(mechanisms))
      .field("projection", member<Config>(&C::attention), &A::projection,
             "qkv | kv | kv-pos; \"\" = the mechanism's own")
      .field("alpha_init", member<Config>(&C::attention), &A::alpha_init,
             "initial ridge alpha (mechanisms with alpha)")
      .field("alpha_floor", member<Config>(&C::attention), &A::alpha_floor,
             "lower bound of alpha = softplus(theta) + alpha_floor (mechanisms with alpha)")
      .field("learn_alpha", member<Config>(&C::attention), &A::learn_alpha,
             "learn alpha per head; false = fixed at alpha_init (mechanisms with alpha)")
      .field("chunk_size", member<Config>(&C::attention), &A::chunk_size,
             "chunk length of the causal chunk-parallel mechanisms; 0 = the head width")
      .field("pos_channels", member<Config>(&C::attention), &A::pos_channels,
             "channels of the 2D positional table (kv-pos projection)")
      .field("pos_map", member<Config>(&C::attention), &A::pos_map,
             "kv-pos map Linear(p, 1): head (one per head) | layer (one per layer, the paper's)")
      .field("d_model", member<Config>(&C::d_model), "model width d")
      .field("num_heads", member<Config>(&C::num_heads), "attention heads")
      .field("num_layers", member<Config>(&C::num_layers), "Transformer blocks")
      .field("ffn_dim", member<Config>(&C::ffn_dim), "feed-forward width; 0 = the model's default")
      .field("dropout", member<Config>(&C::dropout), "dropout in blocks and head")
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
        nn::check_attention_options(c.attention, "attention", {}, Config().attention);
      })
      .check("seed must be >= 0", [](const Config& c) { return c.seed >= 0; })
      .check("d_model must be a positive multiple of num_heads",
             [](const Config& c) {
               return c.d_model > 0 && c.num_heads > 0 && c.d_model % c.num_heads == 0;
             })
      .check("num_layers must be >= 1", [](const Config& c) { return c.num_layers >= 1; })
      .check("ffn_dim must be >= 0", [](const Config& c) { return c.ffn_dim >= 0; })
      .check("dropout must be in [0, 1)",
             [](const Config& c) { return c.dropout >= 0 && c.dropout < 1; })
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

}  // namespace tasks
}  // namespace kvq
