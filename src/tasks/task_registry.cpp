#include "kvq/tasks/task_registry.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>

#include "kvq/data/synthetic_tasks.h"
#include "kvq/tasks/distill_task.h"
#include "kvq/tasks/few_shot_task.h"
#include "kvq/tasks/image_task.h"
#include "kvq/tasks/lm_task.h"
#include "kvq/tasks/regression_task.h"
#include "kvq/tasks/sequence_task.h"
#include "kvq/tasks/training_loop.h"
#include "kvq/tasks/translation_task.h"
#include "kvq/train/checkpoint.h"

namespace kvq {
namespace tasks {

namespace {

namespace fs = std::filesystem;

// The registrations: one line per task (or per family of same-shaped tasks).
std::vector<TaskInfo> all_tasks() {
  // What each paper compares (docs/tasks.md): the Key-Value Transformer's three variants, and
  // Intention against softmax and linear attention.
  const std::vector<std::string> kv_paper = {"softmax", "kv", "kv-pos"};
  const std::vector<std::string> intention_paper = {"softmax", "linear", "intention",
                                                    "softmax-intention"};
  std::vector<TaskInfo> out;
  auto add = [&out](TaskInfo info, const std::vector<std::string>& paper) {
    info.paper_mechanisms = paper;
    out.push_back(std::move(info));
  };
  for (const char* name : data::kSyntheticTaskNames) add(sequence_task_info(name), kv_paper);
  for (const char* name : {"fashion-mnist", "mnist", "cifar10", "cifar100"}) {
    add(image_task_info(name), kv_paper);
  }
  for (const char* name : {"char-lm", "human-numbers"}) add(lm_task_info(name), kv_paper);
  add(translation_task_info(), kv_paper);
  for (const char* name : {"icl-linear", "icl-gp", "icl-sinusoid"}) {
    add(regression_task_info(name), intention_paper);
  }
  add(few_shot_task_info(), intention_paper);
  add(distill_task_info(), intention_paper);
  return out;
}

// Whether `dir` holds anything besides the lock file of train_task.
bool has_entries(const fs::path& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename() != train::RunLock::kFileName) return true;
  }
  return false;
}

std::string number_text(double x) {
  std::ostringstream out;
  out << std::setprecision(6) << x;
  return out.str();
}

// The lines NumericalFault's message ends with: command lines that resume the run at `run_dir`
// with one recovery key changed, derived from the run's resolved `config`. Only changes that
// the task's config accepts are offered.
std::string resume_hints(const TaskInfo& task, const nlohmann::json& config,
                         const train::RunDir& run) {
  struct Hint {
    std::vector<std::string> sets;
    std::string why;
  };
  std::vector<Hint> hints;
  const auto number = [&](const char* key) {
    return config.contains(key) && config.at(key).is_number() ? config.at(key).get<double>()
                                                               : std::nan("");
  };
  if (!std::isnan(number("lr"))) {
    const double lr = number("lr") / 2;
    Hint h{{"lr=" + number_text(lr)}, "half the learning rate"};
    if (number("min_lr") > lr) h.sets.push_back("min_lr=" + number_text(lr));
    hints.push_back(h);
  }
  if (!std::isnan(number("grad_clip"))) {
    const double clip = number("grad_clip");
    hints.push_back({{"grad_clip=" + number_text(clip > 0 ? clip / 2 : 1.0)},
                     clip > 0 ? "clip the gradient norm harder" : "clip the gradient norm"});
  }
  // The registry contract: every task config has a valid "mechanism".
  if (!std::isnan(number("alpha_floor")) &&
      find_mechanism(config.at("mechanism").get<std::string>()).traits.uses_alpha) {
    hints.push_back({{"alpha_floor=" + number_text(number("alpha_floor") * 10)},
                     "a larger lower bound of alpha keeps K^T K + alpha I definite"});
  }
  if (!std::isnan(number("max_skipped_steps"))) {
    const auto more = static_cast<int64_t>(number("max_skipped_steps")) + 3;
    hints.push_back({{"max_skipped_steps=" + std::to_string(more)},
                     "skip a few more faulty updates (a rare bad batch)"});
  }
  std::ostringstream out;
  out << "\n  to resume from there, change what caused the fault (each changes the run):";
  for (const auto& h : hints) {
    try {
      task.resolve({"", run.config_path().string(), h.sets, true});
    } catch (const c10::Error&) {
      continue;  // a value this task's config refuses
    }
    out << "\n    kvq train --resume --run-dir " << run.path().string();
    for (const auto& set : h.sets) out << " --set " << set;
    out << "    # " << h.why;
  }
  return out.str();
}

// Which of `changes` ("key: saved -> given", ConfigSchemaBase::diff) a resume may not make.
std::vector<std::string> forbidden_changes(const std::vector<std::string>& changes) {
  const auto& allowed = resume_changeable_keys();
  std::vector<std::string> out;
  for (const auto& change : changes) {
    const std::string key = change.substr(0, change.find(':'));
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) out.push_back(change);
  }
  return out;
}

nlohmann::json load_saved_config(const train::RunDir& run) {
  const auto config = run.load_config();
  TORCH_CHECK(config.is_object() && config.contains("task") && config["task"].is_string(),
              "run directory: ", run.config_path().string(),
              " has no \"task\" field; it is not the config of a kvq task run");
  return config;
}

}  // namespace

const std::vector<TaskInfo>& tasks() {
  static const std::vector<TaskInfo> registered = [] {
    auto all = all_tasks();
    std::set<std::string> seen;
    for (const auto& t : all) {
      TORCH_CHECK(seen.insert(t.name).second, "task registry: task '", t.name,
                  "' registered twice");
    }
    return all;
  }();
  return registered;
}

std::vector<std::string> task_names() {
  std::vector<std::string> names;
  for (const auto& t : tasks()) names.push_back(t.name);
  return names;
}

const TaskInfo& find_task(const std::string& name) {
  for (const auto& t : tasks()) {
    if (t.name == name) return t;
  }
  C10_THROW_ERROR(Error, "unknown task '" + name + "'; valid tasks: " + train::join_names(task_names()));
}

const std::vector<std::string>& resume_changeable_keys() {
  static const std::vector<std::string> keys = {"lr", "min_lr", "grad_clip", "alpha_floor",
                                                "max_skipped_steps"};
  return keys;
}

std::pair<const TaskInfo*, nlohmann::json> task_of_run(const std::string& run_dir) {
  const auto run = train::RunDir::open(run_dir);
  auto config = load_saved_config(run);
  const std::string name = config["task"].get<std::string>();
  const auto names = task_names();
  TORCH_CHECK(std::find(names.begin(), names.end(), name) != names.end(), "run directory: ",
              run.config_path().string(), ": unknown task '", name,
              "'; valid tasks: ", train::join_names(names));
  const TaskInfo& task = find_task(name);
  task.schema->upgrade_saved(config);
  return {&task, std::move(config)};
}

namespace {

// The workers of a data-parallel run (TrainContext::dist). Every one must take an equal share of
// each batch, and a resume continues with the world size of the checkpoint.
int64_t world_size_of(const TrainOptions& options) {
  return options.context.dist ? options.context.dist->world_size() : 1;
}

void check_batch_split(const nlohmann::json& config, int64_t world) {
  if (world == 1 || !config.contains("batch_size")) return;
  const auto batch = config.at("batch_size").get<int64_t>();
  TORCH_CHECK(batch % world == 0, "train: batch_size ", batch, " is not divisible by the ", world,
              " workers (WORLD_SIZE or --nproc): each worker takes batch_size / ", world,
              " of every batch; choose a multiple of ", world, ", e.g. --set batch_size=",
              (batch / world + 1) * world);
}

void check_resume_world(const train::RunDir& run, int64_t world) {
  if (!run.has_checkpoint()) return;
  const std::string path = run.checkpoint_path().string();
  const auto extra = train::read_checkpoint_meta(path).at("extra");
  const int64_t saved = extra.is_object() ? extra.value("world_size", int64_t{1}) : 1;
  TORCH_CHECK(saved == world, "train: --resume: ", path, " was written by a group of ", saved,
              " worker(s), and this run has ", world, "; resume with ", saved,
              " (kvq train --nproc ", saved, ", or torchrun with ", saved,
              " in all): each worker's share of a batch, hence the run's result, depends on it");
}

// What rank 0 decided before training: the run every worker trains.
struct PreparedRun {
  nlohmann::json config;
  bool resume = false;
  std::vector<std::string> resume_changes;
  std::unique_ptr<train::RunDir> run;
  std::unique_ptr<train::RunLock> lock;
};

// --preset, --config and --set, with --seed appended as a last "seed=N".
train::ConfigSources sources_with_seed(const TrainOptions& options) {
  train::ConfigSources sources = options.sources;
  if (options.seed) sources.sets.push_back("seed=" + std::to_string(*options.seed));
  return sources;
}

PreparedRun prepare_run(const TaskInfo& task, const TrainOptions& options) {
  const int64_t world = world_size_of(options);
  const train::ConfigSources sources = sources_with_seed(options);
  const bool any_source =
      !sources.preset.empty() || !sources.file.empty() || !sources.sets.empty();

  nlohmann::json config;
  bool resume = false;
  std::vector<std::string> resume_changes;
  std::unique_ptr<train::RunDir> run;
  std::unique_ptr<train::RunLock> lock;
  if (options.run_dir.empty()) {
    TORCH_CHECK(!options.resume, "train: --resume needs --run-dir (the run to continue)");
    config = resolve_run_config(task, options);
    check_batch_split(config, world);
    run = std::make_unique<train::RunDir>(train::RunDir::create(
        train::RunDirOptions().root(options.run_root).task(task.name)));
    lock = std::make_unique<train::RunLock>(run->path(), "train");
  } else {
    const fs::path dir(options.run_dir);
    std::error_code ec;
    const bool exists = fs::exists(dir, ec);
    TORCH_CHECK(!exists || fs::is_directory(dir, ec), "train: --run-dir ", dir.string(),
                " exists and is not a directory");
    if (options.resume) {
      TORCH_CHECK(exists && fs::exists(dir / "config.json", ec), "train: --resume: ",
                  (dir / "config.json").string(), " does not exist; nothing to resume");
      // Before anything is read: a run still writing would change it under us.
      lock = std::make_unique<train::RunLock>(dir, "train");
      run = std::make_unique<train::RunDir>(train::RunDir::open(dir.string()));
      const auto saved = load_saved_config(*run);
      TORCH_CHECK(saved["task"] == task.name, "train: --resume: ", run->config_path().string(),
                  " is a run of task ", saved["task"].dump(), ", not '", task.name, "'");
      // Keys added to the task after the run was saved take the values the task's upgrades give
      // them (train::ConfigSchema::upgrade), else their defaults. Plain --set
      // overrides apply to the saved config; a preset or config file restates the whole config.
      const std::string saved_path = run->config_path().string();
      const auto saved_resolved = task.resolve({"", saved_path, {}, true});
      if (!any_source) {
        config = saved_resolved;
      } else if (sources.preset.empty() && sources.file.empty()) {
        config = task.resolve({"", saved_path, sources.sets, true});
      } else {
        config = task.resolve(sources);
      }
      resume_changes = task.schema->diff(saved_resolved, config);
      const auto forbidden = forbidden_changes(resume_changes);
      if (!forbidden.empty()) {
        std::string list;
        for (const auto& c : forbidden) list += (list.empty() ? "" : "; ") + c;
        TORCH_CHECK(false, "train: --resume: the config differs from ", saved_path,
                    " (saved -> given): ", list, "; a resume may change only ",
                    train::join_names(resume_changeable_keys()),
                    " (resume with the saved config: give no --preset/--config/--set/--seed)");
      }
      check_resume_world(*run, world);
      task.check(config);
      check_batch_split(config, world);
      resume = true;
    } else {
      // A run in progress there is named as such, not as a mere non-empty directory.
      if (exists) lock = std::make_unique<train::RunLock>(dir, "train");
      TORCH_CHECK(!exists || !has_entries(dir), "train: --run-dir ", dir.string(),
                  " already exists and is not empty; add --resume to continue it or choose "
                  "another directory");
      config = resolve_run_config(task, options);
      check_batch_split(config, world);
      fs::create_directories(dir, ec);
      TORCH_CHECK(!ec, "train: --run-dir ", dir.string(), ": cannot create: ", ec.message());
      // Checked again under the lock: another run may have started in between.
      if (!lock) lock = std::make_unique<train::RunLock>(dir, "train");
      TORCH_CHECK(!has_entries(dir), "train: --run-dir ", dir.string(),
                  " already exists and is not empty; add --resume to continue it or choose "
                  "another directory");
      run = std::make_unique<train::RunDir>(train::RunDir::open(dir.string()));
    }
  }
  if (!resume || !resume_changes.empty()) task.save_config(config, *run);
  PreparedRun out;
  out.config = std::move(config);
  out.resume = resume;
  out.resume_changes = std::move(resume_changes);
  out.run = std::move(run);
  out.lock = std::move(lock);
  return out;
}

// A worker other than rank 0: trains the run rank 0 prepared (it sends the task, config and
// run directory), writing nothing.
TrainOutcome follow_main(const TrainOptions& options) {
  train::Distributed& dist = *options.context.dist;
  const auto setup = nlohmann::json::parse(dist.broadcast_string("", "the run's set-up"));
  TORCH_CHECK(!setup.contains("error"), "train: rank ", dist.rank(),
              ": rank 0 could not start the run: ", setup.value("error", std::string()));
  const TaskInfo& task = find_task(setup.at("task").get<std::string>());
  const auto run = train::RunDir::remote(setup.at("run_dir").get<std::string>());
  TrainContext context = options.context;
  context.quiet = true;
  context.resume = setup.at("resume").get<bool>();
  context.resume_changes = setup.at("resume_changes").get<std::vector<std::string>>();
  TrainOutcome out;
  out.run_dir = run.path().string();
  out.config = setup.at("config");
  out.summary = task.train(out.config, run, context);
  return out;
}

}  // namespace

nlohmann::json resolve_run_config(const TaskInfo& task, const TrainOptions& options) {
  auto config = task.resolve(sources_with_seed(options));
  task.check(config);
  return config;
}

TrainOutcome train_task(const std::string& task_name, const TrainOptions& options) {
  const auto& dist = options.context.dist;
  if (dist && !dist->is_main()) return follow_main(options);
  PreparedRun prepared;
  const TaskInfo* found = nullptr;
  try {
    found = &find_task(task_name);
    prepared = prepare_run(*found, options);
  } catch (const std::exception& e) {
    if (dist) {  // the other workers stop with the reason rather than a closed connection
      const auto* c10 = dynamic_cast<const c10::Error*>(&e);
      const std::string message = c10 != nullptr ? c10->what_without_backtrace() : e.what();
      try {
        dist->broadcast_string(nlohmann::json{{"error", message.substr(0, message.find('\n'))}}.dump(),
                               "the run's set-up");
      } catch (const c10::Error&) {
      }
    }
    throw;
  }
  const TaskInfo& task = *found;
  auto& config = prepared.config;
  const bool resume = prepared.resume;
  const auto& resume_changes = prepared.resume_changes;
  auto& run = prepared.run;
  if (dist) {
    dist->broadcast_string(nlohmann::json{{"task", task.name},
                                          {"config", config},
                                          {"resume", resume},
                                          {"resume_changes", resume_changes},
                                          {"run_dir", run->path().string()}}
                               .dump(),
                           "the run's set-up");
  }
  if (options.print_config) {
    std::cout << (resume ? "resuming " : "run ") << run->path().string() << "\n";
    for (const auto& change : resume_changes) {
      std::cout << "changed on resume: " << change << "\n";
    }
    std::cout << task.format(config) << std::flush;
  }
  TrainContext context = options.context;
  context.resume = resume;
  context.resume_changes = resume_changes;
  TrainOutcome out;
  out.run_dir = run->path().string();
  out.config = config;
  try {
    out.summary = task.train(config, *run, context);
  } catch (const NumericalFault& fault) {
    throw NumericalFault(fault.msg() + resume_hints(task, config, *run), fault.step(),
                         fault.checkpoint_step());
  }
  return out;
}

}  // namespace tasks
}  // namespace kvq
