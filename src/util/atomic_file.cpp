#include "kvq/util/atomic_file.h"

#include <c10/util/Exception.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace kvq {
namespace util {

namespace {

namespace fs = std::filesystem;

// Writes all of `bytes` to `fd`, retrying short writes and EINTR. Returns false with errno set.
bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// Best effort: makes the rename itself durable. Some file systems refuse fsync on a directory
// (EINVAL); the data is already safe then, so that is not an error.
void fsync_directory(const fs::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

std::string temp_path_for(const std::string& path) {
  return path + ".tmp-" + std::to_string(::getpid());
}

void write_file_atomic(const std::string& path, const std::string& bytes, const std::string& who) {
  TORCH_CHECK(!path.empty(), who, ": empty file name");
  const fs::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
  TORCH_CHECK(!ec, who, ": cannot create the directory of ", path, ": ", ec.message());

  const std::string tmp = temp_path_for(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  TORCH_CHECK(fd >= 0, who, ": cannot write ", tmp, " (temporary file for ", path,
              "): ", std::strerror(errno));
  const bool written = write_all(fd, bytes.data(), bytes.size());
  const int write_errno = errno;
  const bool synced = written && ::fsync(fd) == 0;
  const int sync_errno = errno;
  const bool closed = ::close(fd) == 0;
  if (!written || !synced || !closed) {
    ::unlink(tmp.c_str());
    TORCH_CHECK(false, who, ": writing ", tmp, " (temporary file for ", path, ") failed: ",
                std::strerror(!written ? write_errno : !synced ? sync_errno : errno), "; ", path,
                " is unchanged");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int rename_errno = errno;
    ::unlink(tmp.c_str());
    TORCH_CHECK(false, who, ": cannot rename ", tmp, " to ", path, ": ",
                std::strerror(rename_errno), "; ", path, " is unchanged");
  }
  fsync_directory(target.parent_path());
}

std::string read_file(const std::string& path, const std::string& who) {
  std::error_code ec;
  TORCH_CHECK(fs::is_regular_file(path, ec), who, ": ", path, ": no such file");
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, who, ": ", path, ": cannot open: ", std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TORCH_CHECK(!in.bad(), who, ": ", path, ": read error");
  return bytes;
}

bool remove_tree(const std::string& path) {
  // Depth first (children before their directory), without following symbolic links; a
  // missing `path` ends the walk with ENOENT, a failed removal with the callback's -1.
  const auto remove_one = [](const char* entry, const struct stat*, int, struct FTW*) {
    return std::remove(entry) == 0 || errno == ENOENT ? 0 : -1;
  };
  return ::nftw(path.c_str(), remove_one, 64, FTW_DEPTH | FTW_PHYS) == 0 || errno == ENOENT;
}

}  // namespace util
}  // namespace kvq
