#include "train_command.h"

#include <CLI/CLI.hpp>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "config_options.h"
#include "device_option.h"
#include "kvq/registry.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/train/distributed.h"
#include "launcher.h"

namespace kvq {
namespace app {
namespace {

struct TrainArgs {
  std::string task;
  std::string mechanism;
  train::ConfigSources sources;  // --preset, --config, --set
  std::string run_dir;
  std::string run_root = "runs";
  bool resume = false;
  int64_t seed = 0;
  bool quiet = false;
  bool dry_run = false;
  bool show_keys = false;
  int64_t nan_loss_at_step = -1;
  int nproc = 0;
  double dist_timeout = 300;
  std::string device = "cpu";
};

void print_summary(const tasks::TrainOutcome& outcome) {
  const auto& s = outcome.summary;
  if (s.contains("stopped_at")) {
    std::cout << "stopped at step " << s["stopped_at"] << "; run " << outcome.run_dir << "\n";
    return;
  }
  std::ostringstream line;
  line << std::fixed << std::setprecision(4) << "test";
  for (const auto& [key, value] : s.at("test").items()) {
    if (value.is_number_float()) line << " " << key << " " << value.get<double>();
  }
  line << std::setprecision(1) << " | params " << s.value("params", 0) << " | train "
       << s.value("train_seconds", 0.0) << " s | run " << outcome.run_dir;
  std::cout << line.str() << std::endl;
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand(
      "train", "Train one task with one mechanism in a run directory (config.json, "
               "metrics.jsonl, checkpoint.pt, best.pt, results.json)");
  cmd->add_option("--task", args->task, "Task: " + train::join_names(tasks::task_names()));
  cmd->add_option("--mechanism", args->mechanism,
                  "Attention mechanism (same as --set mechanism=NAME): " +
                      train::join_names(mechanism_names()));
  add_config_options(cmd, args->sources);
  auto* seed = cmd->add_option("--seed", args->seed, "Seed (same as --set seed=N)");
  cmd->add_option("--run-dir", args->run_dir,
                  "Run directory (default: <runs>/<task>/<start time>)");
  cmd->add_option("--runs", args->run_root, "Root of the default run directories")
      ->capture_default_str();
  cmd->add_flag("--resume", args->resume,
                "Continue the run in --run-dir from its checkpoint (its saved config; --task "
                "may be left out; --set may change only " +
                    train::join_names(tasks::resume_changeable_keys()) + ")");
  cmd->add_flag("--quiet", args->quiet, "No progress bar");
  cmd->add_option("--nproc", args->nproc,
                  "Data-parallel: start N local workers (127.0.0.1, a free port), each with "
                  "batch_size / N of every batch; 0 = one process, or torchrun's environment "
                  "(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) when it is set")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--dist-timeout", args->dist_timeout,
                  "Data-parallel: seconds any worker waits for the others (store, collectives) "
                  "before it fails")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  add_device_option(cmd, args->device);
  cmd->add_flag("--dry-run", args->dry_run,
                "Print the resolved config and exit, after the checks a run makes before it "
                "reads data");
  cmd->add_flag("--keys", args->show_keys, "List the task's config keys and exit");
  // Not in --help: a debugging aid that exercises the fault handling (TrainContext).
  cmd->add_option("--debug-nan-loss-at-step", args->nan_loss_at_step,
                  "Make the loss of update N NaN (fault injection)")
      ->group("");

  cmd->callback([args, seed] {
    if (args->nproc > 0) {
      if (std::getenv("WORLD_SIZE") != nullptr || std::getenv("RANK") != nullptr) {
        throw CLI::ValidationError("--nproc", "cannot be combined with torchrun's environment "
                                              "(RANK / WORLD_SIZE are set)");
      }
      const int status = launch_local_workers(args->nproc);
      if (status != 0) std::exit(status);
      return;
    }
    const auto device = checked_device(args->device);
    const c10::DeviceGuard on_device(device);  // NCCL and new CUDA tensors use this GPU
    const auto dist = join_group_from_environment(args->dist_timeout, device);
    std::string task = args->task;
    if (dist && !dist->is_main()) task = "(from rank 0)";
    if (task.empty() && args->resume && !args->run_dir.empty()) {
      task = tasks::task_of_run(args->run_dir).first->name;
    }
    if (task.empty()) {
      throw CLI::ValidationError(
          "--task", "required; valid tasks: " + train::join_names(tasks::task_names()));
    }
    if (dist && !dist->is_main()) {  // rank 0 sends the task, config and run directory
      tasks::TrainOptions options;
      options.context.dist = dist;
      options.context.device = device;
      options.context.nan_loss_at_step = args->nan_loss_at_step;
      tasks::train_task("", options);
      return;
    }
    const auto& info = tasks::find_task(task);
    if (args->show_keys) {
      std::cout << info.help();
      return;
    }
    tasks::TrainOptions options;
    options.sources.preset = args->sources.preset;
    options.sources.file = args->sources.file;
    if (!args->mechanism.empty()) options.sources.sets.push_back("mechanism=" + args->mechanism);
    for (const auto& s : args->sources.sets) options.sources.sets.push_back(s);
    if (*seed) options.seed = args->seed;
    if (args->dry_run) {
      std::cout << info.format(tasks::resolve_run_config(info, options));
      return;
    }
    options.run_dir = args->run_dir;
    options.run_root = args->run_root;
    options.resume = args->resume;
    options.context.quiet = args->quiet;
    options.context.nan_loss_at_step = args->nan_loss_at_step;
    options.context.dist = dist;
    options.context.device = device;
    print_summary(tasks::train_task(task, options));
  });
}

}  // namespace app
}  // namespace kvq
