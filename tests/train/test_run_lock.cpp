// One writer per run directory: RunLock refuses a second holder at once (in this process or
// another), names the directory and the holder's pid, and is released when its holder ends,
// also by kill -9; train_task takes it for a new run and for --resume.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <filesystem>
#include <string>

#include "kvq/tasks/task_registry.h"
#include "kvq/train/run_dir.h"
#include "test_files.h"

namespace {

namespace KT = kvq::tasks;
namespace T = kvq::train;
namespace fs = std::filesystem;

using kvq_test_files::error_of;
using kvq_test_files::TempDir;

TEST(RunLock, SecondHolderFailsAtOnceUntilTheFirstEnds) {
  TempDir tmp;
  {
    T::RunLock first(tmp.path, "train");
    EXPECT_EQ(first.path(), tmp.path / "train.lock");
    const auto message = error_of([&] { T::RunLock second(tmp.path, "train"); });
    EXPECT_HAS(message, "train: run directory " + tmp.dir() + " is in use by another kvq process");
    EXPECT_HAS(message, "(pid " + std::to_string(::getpid()) + ",");
    EXPECT_HAS(message, "lock file " + (tmp.path / "train.lock").string());
    T::RunLock moved(std::move(first));  // a moved lock is still held
    EXPECT_HAS(error_of([&] { T::RunLock again(tmp.path, "train"); }), "is in use");
  }
  T::RunLock after(tmp.path, "train");  // released with its holder; the stale file is harmless
  EXPECT_TRUE(fs::exists(tmp.path / "train.lock"));
}

// A holder killed with SIGKILL leaves train.lock behind, but not the lock.
TEST(RunLock, ReleasedWhenItsProcessIsKilled) {
  TempDir tmp;
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Only async-signal-safe calls here (the parent may have threads): lock, report, wait.
    const int fd = ::open((tmp.path / "train.lock").c_str(), O_RDWR | O_CREAT, 0644);
    const char ok = (fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) == 0) ? '1' : '0';
    if (::write(ready[1], &ok, 1) != 1) ::_exit(1);
    for (;;) ::pause();
  }
  ::close(ready[1]);
  char ok = 0;
  ASSERT_EQ(::read(ready[0], &ok, 1), 1);
  ::close(ready[0]);
  ASSERT_EQ(ok, '1');
  EXPECT_HAS(error_of([&] { T::RunLock blocked(tmp.path, "train"); }), "is in use");
  ::kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_TRUE(fs::exists(tmp.path / "train.lock"));
  T::RunLock after(tmp.path, "train");
}

KT::TrainOptions tiny_copy(const std::string& run_dir) {
  KT::TrainOptions o;
  o.sources.sets = {"length=6",    "num_train=64", "num_val=32",   "num_test=32",
                    "d_model=8",   "ffn_dim=16",  "num_heads=2",  "num_layers=1", "batch_size=32",
                    "epochs=1",    "eval_batch_size=32"};
  o.seed = 1;
  o.run_dir = run_dir;
  o.print_config = false;
  o.context.quiet = true;
  return o;
}

TEST(RunLock, TrainAndResumeRefuseADirectoryInUse) {
  TempDir tmp;
  const std::string dir = tmp.file("run");
  auto first = tiny_copy(dir);
  first.context.stop_after_step = 1;
  KT::train_task("copy", first);  // config.json and metrics exist; the lock is free again

  T::RunLock held(dir, "train");  // another process training there
  auto resume = tiny_copy(dir);
  resume.sources.sets.clear();
  resume.seed.reset();
  resume.resume = true;
  const auto message = error_of([&] { KT::train_task("copy", resume); });
  EXPECT_HAS(message, "train: run directory " + dir + " is in use by another kvq process");
  // A new run there is refused as in use too (not just as an existing directory).
  EXPECT_HAS(error_of([&] { KT::train_task("copy", tiny_copy(dir)); }), "is in use");
  // A new run in a fresh directory is unaffected, and the lock file does not make a directory
  // "not empty".
  const std::string fresh = tmp.file("fresh");
  fs::create_directories(fresh);
  { T::RunLock touched(fresh, "train"); }
  EXPECT_EQ(KT::train_task("copy", tiny_copy(fresh)).summary["steps"], 2);
}

}  // namespace
