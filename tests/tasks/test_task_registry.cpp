// The task registry and the synthetic task's config: unknown tasks fail naming the valid ones,
// every synthetic task is registered with presets "paper" and "quick", the config is resolved
// with the task name fixed by the registry, and --set-style overrides are type-checked.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <string>

#include "kvq/data/synthetic_tasks.h"
#include "kvq/registry.h"
#include "kvq/tasks/sequence_task.h"
#include "kvq/tasks/task_registry.h"
#include "test_files.h"

namespace {

namespace KT = kvq::tasks;

using kvq_test_files::error_of;

nlohmann::json resolve(const std::string& task, const std::string& preset,
                       const std::vector<std::string>& sets) {
  return KT::find_task(task).resolve({preset, "", sets});
}

TEST(TaskRegistry, HoldsEverySyntheticTaskOnce) {
  const auto names = KT::task_names();
  for (const char* name : kvq::data::kSyntheticTaskNames) {
    EXPECT_EQ(std::count(names.begin(), names.end(), std::string(name)), 1) << name;
    const auto& info = KT::find_task(name);
    EXPECT_EQ(info.name, name);
    EXPECT_EQ(info.family, "synthetic");
    ASSERT_NE(info.schema, nullptr);
    const auto presets = info.schema->preset_names();
    EXPECT_NE(std::find(presets.begin(), presets.end(), "paper"), presets.end());
    EXPECT_NE(std::find(presets.begin(), presets.end(), "quick"), presets.end());
  }
}

TEST(TaskRegistry, UnknownTaskNamesTheValidOnes) {
  const auto message = error_of([] { KT::find_task("sorting"); });
  EXPECT_HAS(message, "unknown task 'sorting'");
  for (const char* name : kvq::data::kSyntheticTaskNames) EXPECT_HAS(message, name);
}

// A run directory's config.json naming no registered task: the error names the file (it said
// only "unknown task", with nothing pointing at the run directory).
TEST(TaskRegistry, RunOfAnUnknownTaskNamesItsConfigFile) {
  kvq_test_files::TempDir dir;
  const auto path = dir.write("config.json", R"({"task": "sorting", "seed": 0})");
  const auto message = error_of([&] { kvq::tasks::task_of_run(dir.dir()); });
  EXPECT_HAS(message, "run directory: " + path + ": unknown task 'sorting'; valid tasks: ");
  EXPECT_HAS(message, "sort");
  dir.write("config.json", R"({"seed": 0})");
  EXPECT_HAS(error_of([&] { kvq::tasks::task_of_run(dir.dir()); }), "has no \"task\" field");
}

TEST(TaskRegistry, ResolvedConfigCarriesTheTaskName) {
  for (const char* name : kvq::data::kSyntheticTaskNames) {
    EXPECT_EQ(resolve(name, "", {})["task"], name);
  }
  const auto message = error_of([] { resolve("sort", "", {"task=copy"}); });
  EXPECT_HAS(message, "task");
  EXPECT_HAS(message, "sort");
}

// What `kvq train --dry-run` prints (resolve_run_config) has passed every check a run makes
// before it reads data: char-lm's quick preset warms up for 100 updates, so steps = 100 leaves a
// cosine schedule nothing to decay over. The dry run refuses it with the run's own message, and
// the run refuses it before it writes anything.
TEST(TaskRegistry, DryRunRefusesTheConfigsTheRunRefuses) {
  KT::TrainOptions options;
  options.sources.preset = "quick";
  options.sources.sets = {"steps=100", "warmup_steps=100"};
  const auto& task = KT::find_task("char-lm");
  const auto dry = error_of([&] { KT::resolve_run_config(task, options); });
  EXPECT_HAS(dry, "config char-lm: schedule 'cosine' with warmup_steps = 100 over 100 updates: "
                  "lr schedule cosine: total_steps (100) must be > warmup_steps (100)");

  kvq_test_files::TempDir dir;
  options.run_dir = dir.dir() + "/run";
  options.print_config = false;
  options.context.quiet = true;
  EXPECT_EQ(error_of([&] { KT::train_task("char-lm", options); }), dry);
  EXPECT_FALSE(std::filesystem::exists(options.run_dir));

  options.sources.sets = {"steps=101", "warmup_steps=100"};
  EXPECT_EQ(KT::resolve_run_config(task, options).at("steps"), 101);
}

TEST(SequenceTaskConfig, PaperPresetIsTasksMdExperimentOne) {
  const auto c = resolve("reverse", "paper", {});
  EXPECT_EQ(c["length"], 64);
  EXPECT_EQ(c["d_model"], 64);
  EXPECT_EQ(c["num_layers"], 2);
  EXPECT_EQ(c["num_heads"], 2);
  EXPECT_EQ(c["num_train"], 50000);
  EXPECT_EQ(c["num_val"], 1000);
  EXPECT_EQ(c["num_test"], 10000);
  EXPECT_EQ(c["batch_size"], 128);
  EXPECT_EQ(c["lr"], 1e-3);
  EXPECT_EQ(c["schedule"], "cosine-product");
  EXPECT_EQ(c["warmup_steps"], 5);
  EXPECT_EQ(c["grad_clip"], 5.0);
  EXPECT_EQ(c["epochs"], 2);
  EXPECT_EQ(c["dropout"], 0.1);
  EXPECT_EQ(KT::sequence_task_total_steps(KT::sequence_task_schema().from_json(c)), 2 * 390);
}

TEST(SequenceTaskConfig, SetOverridesAreApplied) {
  const auto c = resolve("sort", "quick", {"length=12", "mechanism=intention", "lr=3e-4"});
  EXPECT_EQ(c["length"], 12);
  EXPECT_EQ(c["mechanism"], "intention");
  EXPECT_EQ(c["lr"], 3e-4);
}

TEST(SequenceTaskConfig, RejectsUnknownKeysAndBadValues) {
  auto message = error_of([] { resolve("sort", "quick", {"lenght=12"}); });
  EXPECT_HAS(message, "unknown key 'lenght'");
  EXPECT_HAS(message, "length");

  message = error_of([] { resolve("sort", "", {"length=twelve"}); });
  EXPECT_HAS(message, "'length' expects int");
  EXPECT_HAS(message, "twelve");

  message = error_of([] { resolve("sort", "", {"dropout=high"}); });
  EXPECT_HAS(message, "'dropout' expects float");

  message = error_of([] { resolve("sort", "", {"d_model=64.5"}); });
  EXPECT_HAS(message, "'d_model' expects int");

  message = error_of([] { resolve("sort", "", {"mechanism=quadratic"}); });
  EXPECT_HAS(message, "unknown mechanism 'quadratic'");
  for (const auto& name : kvq::mechanism_names()) EXPECT_HAS(message, name);

  message = error_of([] { resolve("sort", "", {"d_model=30", "num_heads=4"}); });
  EXPECT_HAS(message, "d_model must be a positive multiple of num_heads");

  message = error_of([] { resolve("sort", "", {"schedule=linear"}); });
  EXPECT_HAS(message, "schedule must be");

  message = error_of([] { resolve("sort", "fast", {}); });
  EXPECT_HAS(message, "unknown preset 'fast'");
  EXPECT_HAS(message, "quick");
}

// The attention keys of every task config: set, they reach the resolved config; set for a
// mechanism they do not apply to, they are refused by name with the mechanisms they apply to.
TEST(TaskRegistry, AttentionOptionsApplyOrAreRefusedByName) {
  auto config = resolve("sort", "quick",
                        {"mechanism=intention", "chunk_size=8", "learn_alpha=false",
                         "alpha_init=0.5", "alpha_floor=0.01"});
  EXPECT_EQ(config.at("chunk_size"), 8);
  EXPECT_EQ(config.at("learn_alpha"), false);
  EXPECT_EQ(config.at("alpha_init"), 0.5);
  config = resolve("sort", "quick", {"mechanism=kv-pos", "pos_channels=6", "pos_map=layer"});
  EXPECT_EQ(config.at("pos_channels"), 6);
  EXPECT_EQ(config.at("pos_map"), "layer");

  auto message = error_of([] { resolve("sort", "quick", {"mechanism=softmax", "chunk_size=8"}); });
  EXPECT_HAS(message, "chunk_size applies only to");
  EXPECT_HAS(message, "intention");
  EXPECT_HAS(message, "mechanism 'softmax'");
  message = error_of([] { resolve("sort", "quick", {"mechanism=kv", "alpha_init=0.5"}); });
  EXPECT_HAS(message, "alpha_init applies only to the mechanisms with a ridge alpha");
  message = error_of([] { resolve("sort", "quick", {"mechanism=linear", "learn_alpha=false"}); });
  EXPECT_HAS(message, "learn_alpha applies only to");
  message = error_of([] { resolve("sort", "quick", {"mechanism=intention", "pos_channels=6"}); });
  EXPECT_HAS(message, "pos_channels applies only to the kv-pos projection");
  message = error_of([] { resolve("sort", "quick", {"mechanism=softmax", "pos_map=layer"}); });
  EXPECT_HAS(message, "pos_map applies only to the kv-pos projection");
  message = error_of([] { resolve("sort", "quick", {"mechanism=intention", "projection=kv-pos"}); });
  EXPECT_HAS(message, "projection 'kv-pos' adds a term to softmax scores");
  message = error_of([] { resolve("sort", "quick", {"projection=qk"}); });
  EXPECT_HAS(message, "projection must be");
  message = error_of([] { resolve("sort", "quick", {"mechanism=intention", "alpha_floor=2"}); });
  EXPECT_HAS(message, "need alpha_init > alpha_floor > 0");
}

}  // namespace
