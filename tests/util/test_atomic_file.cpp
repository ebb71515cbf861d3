// Atomic whole-file writes: content replaced, directories created, no temporary file left, and a
// failed write leaves the old content.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>

#include "kvq/util/atomic_file.h"
#include "test_files.h"

namespace {

namespace U = kvq::util;
namespace fs = std::filesystem;

using kvq_test_files::error_of;

TEST(TrainAtomicFile, ReplacesContentAndLeavesNoTemporaryFile) {
  const fs::path dir =
      fs::temp_directory_path() / ("kvq_train_atomic_" + std::to_string(::getpid()));
  U::remove_tree(dir.string());
  const std::string path = (dir / "a" / "b.txt").string();
  U::write_file_atomic(path, "first", "test");
  EXPECT_EQ(U::read_file(path, "test"), "first");
  U::write_file_atomic(path, std::string("sec\0ond", 7), "test");
  EXPECT_EQ(U::read_file(path, "test"), std::string("sec\0ond", 7));
  EXPECT_FALSE(fs::exists(U::temp_path_for(path)));
  EXPECT_EQ(U::temp_path_for(path), path + ".tmp-" + std::to_string(::getpid()));

  // The target's name is taken by a directory: the rename fails, nothing else changes.
  const std::string blocked = (dir / "blocked").string();
  fs::create_directories(fs::path(blocked) / "inside");
  const auto message = error_of([&] { U::write_file_atomic(blocked, "x", "writer"); });
  EXPECT_HAS(message, "writer: cannot rename " + U::temp_path_for(blocked) + " to " + blocked);
  EXPECT_HAS(message, "is unchanged");
  EXPECT_FALSE(fs::exists(U::temp_path_for(blocked)));
  EXPECT_TRUE(fs::is_directory(fs::path(blocked) / "inside"));

  EXPECT_HAS(error_of([&] { U::read_file((dir / "none").string(), "reader"); }),
             "reader: " + (dir / "none").string() + ": no such file");
  U::remove_tree(dir.string());
}

// A full device: the temporary file is /dev/full (a symlink under its name), where every write
// fails with ENOSPC. The error names the file and the reason; the old content and no temporary
// file remain.
TEST(TrainAtomicFile, FullDeviceLeavesTheOldContent) {
  kvq_test_files::TempDir dir;
  const std::string path = dir.file("state.bin");
  U::write_file_atomic(path, "good", "test");
  fs::create_symlink("/dev/full", U::temp_path_for(path));
  const auto message = error_of([&] { U::write_file_atomic(path, "new", "writer"); });
  EXPECT_HAS(message, "writer: writing " + U::temp_path_for(path) + " (temporary file for " +
                          path + ") failed: No space left on device; " + path + " is unchanged");
  EXPECT_EQ(U::read_file(path, "test"), "good");
  EXPECT_FALSE(fs::exists(fs::symlink_status(U::temp_path_for(path))));
}

}  // namespace
