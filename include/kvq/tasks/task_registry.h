#pragma once
// The single registry of experiment tasks: every name `kvq train --task` accepts, each with its
// typed config (kvq::train::ConfigSchema; presets "quick" and "paper", or "full" for the
// Intention tasks) and the functions that check, train and evaluate it. The CLI (train, eval,
// compare) only ever goes through this registry.
//
// Adding a task family touches (docs/adding_a_task.md walks through one):
//   include/kvq/tasks/<family>_task.h, src/tasks/<family>_task.cpp: a config struct deriving from
//     CommonTaskConfig, its ConfigSchema with presets ("quick", and "paper" or "full"), a check,
//     a train and an evaluate function, and
//       TaskInfo <family>_task_info(const std::string& name) { return make_task_info(...); }
//   src/tasks/task_registry.cpp: one line in all_tasks() pushing <family>_task_info(name);
//   CMakeLists.txt: src/tasks/<family>_task.cpp in the `kvq` library's sources;
//   a model (include/kvq/models/, src/models/) and a data set (include/kvq/data/, src/data/)
//     unless existing ones fit;
//   tests/tasks/: a test of the new task (the registry's own tests cover every row).
//
// Contract of a registered task's config: the field `task` holds the registry name (the registry
// sets it; a config file or --set may not change it), `seed` seeds everything random in the run
// (`kvq train --seed`), and `mechanism` picks the attention (`kvq compare --mechanisms`). A run
// directory's config.json is therefore self-describing: `kvq eval --run DIR` finds the task from it.
#include <c10/util/Optional.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kvq/train/config.h"
#include "kvq/train/distributed.h"
#include "kvq/train/run_dir.h"

namespace kvq {
namespace tasks {

// What the generic driver hands a task's train function besides the config and run directory.
struct TrainContext {
  /// The run continues from the run directory's checkpoint (the directory has one). Default: false.
  bool resume = false;
  /// No progress bar and no notes on stderr. Default: false.
  bool quiet = false;
  /// Text in front of the progress bar; "" = the task name. Default: "".
  std::string label;
  /// Stop right after this many optimiser updates, as if the process had been killed there
  /// (no final test, no results.json); -1 = train to the end. For tests of resuming. Default: -1.
  int64_t stop_after_step = -1;
  /// Fault injection, a debugging aid for the fault handling of the training loop: the loss of
  /// update N (counted from 1, as the metrics count) is made NaN after the loss callback, as if
  /// the forward had diverged there; -1 = off. Default: -1.
  int64_t nan_loss_at_step = -1;
  /// Set by train_task: the recovery keys (resume_changeable_keys()) a resume changed, as
  /// "key: saved -> given"; the loop then accepts a checkpoint whose schedule has other rates.
  std::vector<std::string> resume_changes;
  /// The group of a data-parallel run (train/distributed.h) with more than one worker; null =
  /// one process. Default: null.
  std::shared_ptr<train::Distributed> dist;
  /// Where the model and each batch live (the data stays on the CPU, batches are moved one at
  /// a time); with `dist`, the group's device. Default: CPU.
  torch::Device device = torch::kCPU;
};

// What a finished training run reports; also written to <run>/results.json.
//   {"task", "mechanism", "seed", "params", "steps", "train_seconds", "test": {metric: value},
//    "best_val": {...}, ...}
// "test" holds the metrics of the final model on the test split, task-specific keys plus "loss";
// "train_seconds" is the wall time of the training loop, validation included, summed over resumes
// up to the last checkpoint.
using TrainSummary = nlohmann::json;

// Options of evaluating a finished (or interrupted) run.
struct EvalOptions {
  /// "best" (best.pt, the best validation score; falls back to the last checkpoint when the run
  /// has none) or "last" (checkpoint.pt). Default: "best".
  std::string checkpoint = "best";
  /// "test" or "val". Default: "test".
  std::string split = "test";
  /// Where the model and each batch live. Default: CPU.
  torch::Device device = torch::kCPU;
};

// How the training loop reads a task's metrics and reports its progress.
struct TaskMetrics {
  // The validation metric that picks best.pt; also the test metric `kvq compare` ranks by and
  // the validation curve it plots.
  std::string best = "loss";
  bool maximize = false;  // larger `best` is better
  // The train accuracy's name in the train records, when the loss reports right predictions.
  std::string train_accuracy = "acc";
  // Progress bar unit ("tok", "img", ...); throughput in the train records is <unit>_per_s.
  std::string unit = "items";
  // The count field of a part's metrics in sharded evaluation ("samples", "tokens"); "" = the
  // task does not shard its evaluation.
  std::string eval_count;
};

// One registered task. The typed config travels as its JSON form between the generic driver and
// the task; make_task_info builds the type-erased functions from typed ones.
struct TaskInfo {
  std::string name;     // the registry name, e.g. "sort"
  std::string family;   // e.g. "synthetic"; also the first component of a run's default path
  std::string summary;  // one line for --help and errors
  // The mechanisms the task's paper compares: `kvq compare`'s default --mechanisms.
  std::vector<std::string> paper_mechanisms;
  // The config's schema (field metadata, presets) for help texts and diffs.
  const train::ConfigSchemaBase* schema = nullptr;
  // Defaults -> task name -> preset -> file -> sets -> checks; the resolved config as JSON.
  // Errors are the schema's ("config <name>: <source>: ...").
  std::function<nlohmann::json(const train::ConfigSources&)> resolve;
  // Usage text: every field with its type, default and help.
  std::function<std::string()> help;
  // The resolved config printed one field a line.
  std::function<std::string(const nlohmann::json&)> format;
  // The checks a run makes of a resolved config beyond the schema's, with neither data nor a
  // model (the learning-rate schedule over the run's updates, ...): train_task runs them before
  // it creates the run directory and `kvq train --dry-run` runs them too, so the two cannot
  // disagree. Checks that need the data (the training set's size against batch_size, and the
  // schedule of the tasks whose update count depends on it) are made when the task trains.
  std::function<void(const nlohmann::json&)> check;
  // Writes the config to the run's config.json (atomically).
  std::function<void(const nlohmann::json&, const train::RunDir&)> save_config;
  // Trains in the run directory (config.json already written) and returns the summary.
  std::function<TrainSummary(const nlohmann::json&, const train::RunDir&, const TrainContext&)>
      train;
  // Evaluates a run's checkpoint on a split; returns {metric: value} plus "checkpoint", "step".
  std::function<nlohmann::json(const nlohmann::json&, const train::RunDir&, const EvalOptions&)>
      evaluate;
  // The metrics the training loop and `kvq compare` read (keys of the "test" summary and of
  // the "val" metrics records).
  TaskMetrics metrics;
  // Tasks that evaluate at several context sizes N (in-context learning): the test metrics
  // "<metric_prefix><N>" give `kvq compare` an error-against-N plot, with the reference
  // "<baseline_prefix><N>" beside it ("" = none). Empty metric_prefix = no such plot.
  struct ContextCurve {
    std::string metric_prefix;
    std::string baseline_prefix;
  } context_curve;
};

// Every registered task, in a fixed order (the five synthetic tasks first, in the paper's order).
const std::vector<TaskInfo>& tasks();
std::vector<std::string> task_names();
// The task named `name`; an unknown name throws c10::Error "unknown task '<name>'; valid tasks:
// reverse, sort, ...".
const TaskInfo& find_task(const std::string& name);

// Builds a TaskInfo from a typed schema and typed functions; Config must have the string fields
// `task` and `mechanism` and an integer field `seed` (checked when the info is built). A null
// check_fn: the schema's checks are all there is before the data.
template <class Config>
TaskInfo make_task_info(
    std::string name, std::string family, std::string summary,
    const train::ConfigSchema<Config>& schema, std::function<void(const Config&)> check_fn,
    std::function<TrainSummary(const Config&, const train::RunDir&, const TrainContext&)> train_fn,
    std::function<nlohmann::json(const Config&, const train::RunDir&, const EvalOptions&)> eval_fn,
    TaskMetrics metrics) {
  for (const char* key : {"task", "seed", "mechanism"}) {
    TORCH_CHECK(schema.has_key(key), "task registry: the config of task '", name,
                "' has no field '", key, "'");
  }
  TaskInfo info;
  info.name = name;
  info.family = std::move(family);
  info.summary = std::move(summary);
  info.schema = &schema;
  info.resolve = [&schema, name](const train::ConfigSources& sources) {
    nlohmann::json values = schema.to_json(Config{});
    values["task"] = name;
    schema.apply_sources(values, sources);
    TORCH_CHECK(values["task"] == name, "config ", schema.name(), ": 'task' is ",
                values["task"].dump(), " but the run is for task '", name,
                "'; choose the task with --task, not in the config");
    return schema.to_json(schema.from_json(values, "resolved config"));
  };
  info.help = [&schema] { return schema.format_help(); };
  const train::ConfigSchemaBase& base = schema;
  info.format = [&base](const nlohmann::json& config) { return base.format(config); };
  info.check = [&schema, check_fn](const nlohmann::json& config) {
    if (check_fn) check_fn(schema.from_json(config, "config"));
  };
  info.save_config = [&schema](const nlohmann::json& config, const train::RunDir& run) {
    run.save_config(schema, schema.from_json(config, "config"));
  };
  info.train = [&schema, train_fn](const nlohmann::json& config, const train::RunDir& run,
                                   const TrainContext& context) {
    return train_fn(schema.from_json(config, "config"), run, context);
  };
  info.evaluate = [&schema, eval_fn](const nlohmann::json& config, const train::RunDir& run,
                                     const EvalOptions& options) {
    return eval_fn(schema.from_json(config, run.config_path().string()), run, options);
  };
  info.metrics = std::move(metrics);
  return info;
}

// ---- The generic driver behind `kvq train` and `kvq compare` ----

struct TrainOptions {
  /// --preset, --config and --set, in that order of application.
  train::ConfigSources sources;
  /// --seed: appended as a last "seed=N" override. Default: unset.
  c10::optional<int64_t> seed;
  /// The run directory; "" = <run_root>/<task>/<start time>. Default: "".
  std::string run_dir;
  /// Where runs without --run-dir go. Default: "runs".
  std::string run_root = "runs";
  /// Continue the run in run_dir from its checkpoint (see train_task). Default: false.
  bool resume = false;
  /// Print the resolved config on stdout before training. Default: true.
  bool print_config = true;
  /// Passed to the task (quiet, label, stop_after_step).
  TrainContext context;
};

// The config a new run of `task` trains with: options.sources (with options.seed appended as a
// last "seed=N") resolved, then the run's checks (TaskInfo::check). What `kvq train --dry-run`
// prints; train_task starts a new run from it, so a config the dry run accepts passes the same
// checks when it trains (the checks that need the data aside, see TaskInfo::check).
nlohmann::json resolve_run_config(const TaskInfo& task, const TrainOptions& options);

// Resolves the task's config, prepares the run directory and trains:
//   new run:  run_dir must not exist or be empty (else an error naming it and --resume); the
//             resolved config is written to config.json.
//   --resume: run_dir must hold a config.json. With no preset, file, --set or --seed given, the
//             saved config is used; otherwise the resolved config may differ from the saved one
//             only in the recovery keys (resume_changeable_keys(): learning rate, clipping,
//             alpha floor, fault budget), which are the way out of a numerical fault; any other
//             difference is an error listing "key: saved -> given", so a resumed run continues
//             to the result the uninterrupted run would have reached. Accepted changes are noted
//             on stdout and written to config.json. A run without a checkpoint starts from step 0.
// One writer per run directory: train_task holds an exclusive lock on <run_dir>/train.lock
// (train::RunLock) from before it checks or writes anything until it returns; a second train or
// --resume on the same directory fails at once naming the directory and the holder's pid. The
// lock dies with its process, so a killed run can be resumed right away.
// A run that stops on a numerical fault throws NumericalFault (training_loop.h) whose message
// ends with the command lines that resume it with a smaller learning rate, clipping, a larger
// alpha floor or a larger fault budget.
// Returns the run directory and the task's summary.
struct TrainOutcome {
  std::string run_dir;
  nlohmann::json config;
  TrainSummary summary;
};
TrainOutcome train_task(const std::string& task, const TrainOptions& options);

// The config keys a --resume may change (the ways out of a numerical fault): lr, min_lr,
// grad_clip, alpha_floor, max_skipped_steps. A task config has those it declares.
const std::vector<std::string>& resume_changeable_keys();

// The task named in <run_dir>/config.json ("task"), and that config after the task's upgrades
// (train::ConfigSchema::upgrade) for runs saved by an earlier kvq. Errors name the file.
std::pair<const TaskInfo*, nlohmann::json> task_of_run(const std::string& run_dir);

}  // namespace tasks
}  // namespace kvq
