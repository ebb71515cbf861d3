#include "eval_command.h"

#include <CLI/CLI.hpp>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "device_option.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/train/run_dir.h"

namespace kvq {
namespace app {

void add_eval_command(CLI::App& app) {
  auto run_dir = std::make_shared<std::string>();
  auto options = std::make_shared<tasks::EvalOptions>();
  auto json = std::make_shared<bool>(false);
  auto device = std::make_shared<std::string>("cpu");
  auto* cmd = app.add_subcommand(
      "eval", "Evaluate a run's checkpoint on its test split (task and config from the run)");
  cmd->add_option("--run-dir,--run", *run_dir,
                  "Run directory (holds config.json and checkpoints); --run is an alias")
      ->required();
  cmd->add_option("--checkpoint", options->checkpoint,
                  "best (best validation score; the last checkpoint when there is none) or last")
      ->check(CLI::IsMember({"best", "last"}))
      ->capture_default_str();
  cmd->add_option("--split", options->split, "test or val")
      ->check(CLI::IsMember({"test", "val"}))
      ->capture_default_str();
  cmd->add_flag("--json", *json, "Print the metrics as one JSON object");
  add_device_option(cmd, *device);
  cmd->callback([run_dir, options, json, device] {
    options->device = checked_device(*device);
    const auto [task, config] = tasks::task_of_run(*run_dir);
    const auto run = train::RunDir::open(*run_dir);
    const auto metrics = task->evaluate(config, run, *options);
    if (*json) {
      std::cout << metrics.dump() << std::endl;
      return;
    }
    std::ostringstream out;
    out << "task " << task->name << ", mechanism " << config.value("mechanism", "?") << ", "
        << metrics.value("checkpoint", "?") << " (step " << metrics.value("step", -1) << ")\n"
        << std::fixed << std::setprecision(4) << options->split;
    for (const auto& [key, value] : metrics.items()) {
      if (value.is_number_float()) out << " " << key << " " << value.get<double>();
    }
    if (metrics.contains("samples")) out << " (" << metrics["samples"] << " samples)";
    std::cout << out.str() << std::endl;
  });
}

}  // namespace app
}  // namespace kvq
