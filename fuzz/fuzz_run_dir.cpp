// Run directories as `kvq eval`, `kvq generate` and `kvq train --resume` open them: the input is
// a bundle of files,
//   == config.json
//   {...}
//   == metrics.jsonl
//   ...
// (a line "== NAME" starts file NAME; NAME is one of config.json, metrics.jsonl, results.json),
// written to a fresh directory; then kvq::tasks::task_of_run (the task named by config.json),
// the task's config resolved from that file as a resume does, and the metrics and results
// readers. Every failure must be a one-line error naming the directory or a file in it.
#include <filesystem>

#include "fuzz_target.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/train/metrics_log.h"
#include "kvq/train/run_dir.h"
#include "kvq/util/atomic_file.h"

namespace fs = std::filesystem;

KVQ_FUZZ_TARGET(run_dir) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const fs::path dir = fs::path(kvq::fuzz::scratch_dir()) / "run";
  kvq::util::remove_tree(dir.string());
  fs::create_directories(dir);
  std::string name, content;
  const auto flush = [&] {
    if (name == "config.json" || name == "metrics.jsonl" || name == "results.json") {
      kvq::fuzz::write_scratch("run/" + name, content);
    }
    content.clear();
  };
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    const size_t next = end == std::string::npos ? text.size() : end + 1;
    const std::string line = text.substr(start, next - start);
    if (line.compare(0, 3, "== ") == 0) {
      flush();
      name = line.substr(3);
      while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
    } else {
      content += line;
    }
    start = next;
  }
  flush();

  const std::string dir_text = dir.string();
  const kvq::tasks::TaskInfo* task = nullptr;
  try {
    const auto found = kvq::tasks::task_of_run(dir_text);
    task = found.first;
    kvq::fuzz::expect(task != nullptr && found.second.is_object() &&
                          found.second.at("task").is_string(),
                      "task_of_run returned no task or a config without a task");
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, dir_text);
  }
  if (task != nullptr) {
    const auto run = kvq::train::RunDir::open(dir_text);
    (void)run.has_checkpoint();
    try {
      const auto resolved = task->resolve({"", run.config_path().string(), {}});
      kvq::fuzz::expect(resolved.at("task") == task->name,
                        "the resolved config is of another task");
    } catch (const c10::Error& e) {
      // The schema's errors: "config <task>: file <path>: ..." for what the file holds, and
      // "config <task>: check: ..." for a cross-field check of the resolved values.
      kvq::fuzz::expect_names(e, "config " + task->schema->name() + ": ");
    }
  }
  if (fs::exists(dir / "metrics.jsonl")) {
    try {
      (void)kvq::train::read_metrics((dir / "metrics.jsonl").string());
    } catch (const c10::Error& e) {
      kvq::fuzz::expect_names(e, dir_text);
    }
  }
  if (fs::exists(dir / "results.json")) {
    try {
      (void)kvq::train::read_results((dir / "results.json").string());
    } catch (const c10::Error& e) {
      kvq::fuzz::expect_names(e, dir_text);
    }
  }
  return 0;
}
