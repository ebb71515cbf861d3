#include "kvq/tasks/task_registry.h"

#include <c10/util/Exception.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <set>

#include "kvq/data/synthetic_tasks.h"
#include "kvq/tasks/distill_task.h"
#include "kvq/tasks/few_shot_task.h"
#include "kvq/tasks/image_task.h"
#include "kvq/tasks/lm_task.h"
#include "kvq/tasks/regression_task.h"
#include "kvq/tasks/sequence_task.h"
#include "kvq/tasks/translation_task.h"

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

bool has_entries(const fs::path& dir) {
  std::error_code ec;
  return fs::directory_iterator(dir, ec) != fs::directory_iterator();
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

std::pair<const TaskInfo*, nlohmann::json> task_of_run(const std::string& run_dir) {
  const auto run = train::RunDir::open(run_dir);
  auto config = load_saved_config(run);
  const TaskInfo& task = find_task(config["task"].get<std::string>());
  return {&task, std::move(config)};
}

TrainOutcome train_task(const std::string& task_name, const TrainOptions& options) {
  const TaskInfo& task = find_task(task_name);
  train::ConfigSources sources = options.sources;
  if (options.seed) sources.sets.push_back("seed=" + std::to_string(*options.seed));
  const bool any_source =
      !sources.preset.empty() || !sources.file.empty() || !sources.sets.empty();

  nlohmann::json config;
  bool resume = false;
  std::unique_ptr<train::RunDir> run;
  if (options.run_dir.empty()) {
    TORCH_CHECK(!options.resume, "train: --resume needs --run-dir (the run to continue)");
    config = task.resolve(sources);
    run = std::make_unique<train::RunDir>(train::RunDir::create(
        train::RunDirOptions().root(options.run_root).task(task.name)));
  } else {
    const fs::path dir(options.run_dir);
    std::error_code ec;
    const bool exists = fs::exists(dir, ec);
    TORCH_CHECK(!exists || fs::is_directory(dir, ec), "train: --run-dir ", dir.string(),
                " exists and is not a directory");
    if (options.resume) {
      TORCH_CHECK(exists && fs::exists(dir / "config.json", ec), "train: --resume: ",
                  (dir / "config.json").string(), " does not exist; nothing to resume");
      run = std::make_unique<train::RunDir>(train::RunDir::open(dir.string()));
      const auto saved = load_saved_config(*run);
      TORCH_CHECK(saved["task"] == task.name, "train: --resume: ", run->config_path().string(),
                  " is a run of task ", saved["task"].dump(), ", not '", task.name, "'");
      // Keys added to the task after the run was saved take their defaults.
      const auto saved_resolved = task.resolve({"", run->config_path().string(), {}});
      config = any_source ? task.resolve(sources) : saved_resolved;
      const auto changes = task.schema->diff(saved_resolved, config);
      if (!changes.empty()) {
        std::string list;
        for (const auto& c : changes) list += (list.empty() ? "" : "; ") + c;
        TORCH_CHECK(false, "train: --resume: the config differs from ",
                    run->config_path().string(), " (saved -> given): ", list,
                    "; resume with the saved config (give no --preset/--config/--set/--seed)");
      }
      resume = true;
    } else {
      TORCH_CHECK(!exists || !has_entries(dir), "train: --run-dir ", dir.string(),
                  " already exists and is not empty; add --resume to continue it or choose "
                  "another directory");
      config = task.resolve(sources);
      fs::create_directories(dir, ec);
      TORCH_CHECK(!ec, "train: --run-dir ", dir.string(), ": cannot create: ", ec.message());
      run = std::make_unique<train::RunDir>(train::RunDir::open(dir.string()));
    }
  }
  if (!resume) task.save_config(config, *run);
  if (options.print_config) {
    std::cout << (resume ? "resuming " : "run ") << run->path().string() << "\n"
              << task.format(config) << std::flush;
  }
  TrainContext context = options.context;
  context.resume = resume;
  TrainOutcome out;
  out.run_dir = run->path().string();
  out.config = config;
  out.summary = task.train(config, *run, context);
  return out;
}

}  // namespace tasks
}  // namespace kvq
