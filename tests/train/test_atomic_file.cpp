// Atomic whole-file writes: content replaced, directories created, no temporary file left, and a
// failed write leaves the old content.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>

#include "kvq/train/atomic_file.h"
#include "test_files.h"

namespace {

namespace T = kvq::train;
namespace fs = std::filesystem;

using kvq_test_files::error_of;

TEST(TrainAtomicFile, ReplacesContentAndLeavesNoTemporaryFile) {
  const fs::path dir = fs::temp_directory_path() / ("kvq_train_atomic_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const std::string path = (dir / "a" / "b.txt").string();
  T::write_file_atomic(path, "first", "test");
  EXPECT_EQ(T::read_file(path, "test"), "first");
  T::write_file_atomic(path, std::string("sec\0ond", 7), "test");
  EXPECT_EQ(T::read_file(path, "test"), std::string("sec\0ond", 7));
  EXPECT_FALSE(fs::exists(T::temp_path_for(path)));
  EXPECT_EQ(T::temp_path_for(path), path + ".tmp-" + std::to_string(::getpid()));

  // The target's name is taken by a directory: the rename fails, nothing else changes.
  const std::string blocked = (dir / "blocked").string();
  fs::create_directories(fs::path(blocked) / "inside");
  const auto message = error_of([&] { T::write_file_atomic(blocked, "x", "writer"); });
  EXPECT_HAS(message, "writer: cannot rename " + T::temp_path_for(blocked) + " to " + blocked);
  EXPECT_HAS(message, "is unchanged");
  EXPECT_FALSE(fs::exists(T::temp_path_for(blocked)));
  EXPECT_TRUE(fs::is_directory(fs::path(blocked) / "inside"));

  EXPECT_HAS(error_of([&] { T::read_file((dir / "none").string(), "reader"); }),
             "reader: " + (dir / "none").string() + ": no such file");
  fs::remove_all(dir);
}

// A full device: the temporary file is /dev/full (a symlink under its name), where every write
// fails with ENOSPC. The error names the file and the reason; the old content and no temporary
// file remain.
TEST(TrainAtomicFile, FullDeviceLeavesTheOldContent) {
  kvq_test_files::TempDir dir;
  const std::string path = dir.file("state.bin");
  T::write_file_atomic(path, "good", "test");
  fs::create_symlink("/dev/full", T::temp_path_for(path));
  const auto message = error_of([&] { T::write_file_atomic(path, "new", "writer"); });
  EXPECT_HAS(message, "writer: writing " + T::temp_path_for(path) + " (temporary file for " +
                          path + ") failed: No space left on device; " + path + " is unchanged");
  EXPECT_EQ(T::read_file(path, "test"), "good");
  EXPECT_FALSE(fs::exists(fs::symlink_status(T::temp_path_for(path))));
}

}  // namespace
