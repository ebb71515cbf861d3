// Run directories: layout, timestamp names that never collide, no accidental overwrite, resume,
// names checked, the resolved config saved beside the run.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <string>

#include "kvq/train/config.h"
#include "kvq/train/run_dir.h"

#include "test_files.h"

namespace {

namespace T = kvq::train;
namespace fs = std::filesystem;

using kvq_test_files::error_of;

using kvq_test_files::TempDir;

struct TinyConfig {
  int64_t steps = 10;  // training steps
  double lr = 0.1;     // learning rate
};

const T::ConfigSchema<TinyConfig>& tiny_schema() {
  static const auto schema = T::ConfigSchema<TinyConfig>("tiny")
                                 .field("steps", &TinyConfig::steps, "training steps")
                                 .field("lr", &TinyConfig::lr, "learning rate");
  return schema;
}

TEST(TrainRunDir, NamedRunLayoutAndConfig) {
  TempDir dir;
  const auto run = T::RunDir::create(T::RunDirOptions().root(dir.path.string()).task("synthetic").name("kv-L64"));
  EXPECT_EQ(run.path(), dir.path / "synthetic" / "kv-L64");
  EXPECT_TRUE(fs::is_directory(run.path()));
  EXPECT_EQ(run.name(), "kv-L64");
  EXPECT_FALSE(run.resumed());
  EXPECT_EQ(run.config_path(), run.path() / "config.json");
  EXPECT_EQ(run.checkpoint_path(), run.path() / "checkpoint.pt");
  EXPECT_EQ(run.metrics_path(), run.path() / "metrics.jsonl");
  EXPECT_FALSE(run.has_checkpoint());

  const auto cfg = tiny_schema().resolve({"", "", {"lr=0.5"}});
  run.save_config(tiny_schema(), cfg);
  EXPECT_EQ(run.load_config(), nlohmann::json({{"steps", 10}, {"lr", 0.5}}));
  EXPECT_EQ(tiny_schema().resolve({"", run.config_path().string(), {}}).lr, 0.5);
}

TEST(TrainRunDir, ExistingRunIsNeverReusedWithoutResume) {
  TempDir dir;
  const auto options = T::RunDirOptions().root(dir.path.string()).task("lm").name("a");
  const auto first = T::RunDir::create(options);
  std::ofstream(first.checkpoint_path()) << "x";
  const auto message = error_of([&] { T::RunDir::create(options); });
  EXPECT_HAS(message, (dir.path / "lm" / "a").string() + " already exists");
  auto resume = options;
  resume.resume(true);
  const auto again = T::RunDir::create(resume);
  EXPECT_TRUE(again.resumed());
  EXPECT_TRUE(again.has_checkpoint());
  // Resume of a run that does not exist yet starts it.
  resume.name("b");
  EXPECT_FALSE(T::RunDir::create(resume).resumed());
  EXPECT_HAS(error_of([&] { T::RunDir::open((dir.path / "zzz").string()); }), "no such directory");
}

TEST(TrainRunDir, TimestampNamesNeverCollide) {
  TempDir dir;
  const auto options = T::RunDirOptions().root(dir.path.string()).task("vision");
  const auto a = T::RunDir::create(options);
  const auto b = T::RunDir::create(options);
  const auto c = T::RunDir::create(options);
  const std::regex pattern("[0-9]{8}-[0-9]{6}(-[0-9]+)?");
  for (const auto& run : {a, b, c}) {
    EXPECT_TRUE(std::regex_match(run.name(), pattern)) << run.name();
    EXPECT_TRUE(fs::is_directory(run.path()));
  }
  EXPECT_NE(a.path(), b.path());
  EXPECT_NE(b.path(), c.path());
  EXPECT_NE(a.path(), c.path());
}

TEST(TrainRunDir, NamesAreChecked) {
  TempDir dir;
  const auto base = T::RunDirOptions().root(dir.path.string());
  EXPECT_HAS(error_of([&] { T::RunDir::create(base); }), "the task is empty");
  auto o = base;
  o.task("../escape");
  EXPECT_HAS(error_of([&] { T::RunDir::create(o); }), "the task '../escape' may hold only");
  o.task("ok").name("..");
  EXPECT_HAS(error_of([&] { T::RunDir::create(o); }), "the run name '..' is not a name");
  o.name("with space");
  EXPECT_HAS(error_of([&] { T::RunDir::create(o); }), "the run name 'with space' may hold only");
  o.name("").resume(true);
  EXPECT_HAS(error_of([&] { T::RunDir::create(o); }), "resume needs a run name");
}

}  // namespace
