#include "kvq/train/run_dir.h"

#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <utility>

#include "kvq/util/atomic_file.h"

namespace kvq {
namespace train {

namespace fs = std::filesystem;

void check_run_name(const std::string& name, const std::string& what) {
  TORCH_CHECK(!name.empty(), "run directory: the ", what, " is empty");
  TORCH_CHECK(name != "." && name != "..", "run directory: the ", what, " '", name,
              "' is not a name");
  for (const char c : name) {
    const bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
                    c == '-' || c == '+' || c == '=' || c == ',';
    TORCH_CHECK(ok, "run directory: the ", what, " '", name,
                "' may hold only letters, digits and . _ - + = ,");
  }
}

std::string timestamp_name() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y%m%d-%H%M%S", &local);
  return buffer;
}

RunDir RunDir::create(const RunDirOptions& options) {
  TORCH_CHECK(!options.root().empty(), "run directory: the root is empty");
  check_run_name(options.task(), "task");
  const fs::path parent = fs::path(options.root()) / options.task();
  std::error_code ec;
  fs::create_directories(parent, ec);
  TORCH_CHECK(!ec, "run directory: cannot create ", parent.string(), ": ", ec.message());

  if (options.name().empty()) {
    TORCH_CHECK(!options.resume(), "run directory: resume needs a run name");
    const std::string stamp = timestamp_name();
    for (int i = 1; i < 1000; ++i) {
      const fs::path dir = parent / (i == 1 ? stamp : stamp + "-" + std::to_string(i));
      if (fs::create_directory(dir, ec)) return RunDir(dir, false);
      TORCH_CHECK(!ec, "run directory: cannot create ", dir.string(), ": ", ec.message());
    }
    TORCH_CHECK(false, "run directory: too many runs named ", stamp, " in ", parent.string());
  }

  check_run_name(options.name(), "run name");
  const fs::path dir = parent / options.name();
  const bool created = fs::create_directory(dir, ec);
  TORCH_CHECK(!ec, "run directory: cannot create ", dir.string(), ": ", ec.message());
  if (created) return RunDir(dir, false);
  TORCH_CHECK(fs::is_directory(dir, ec), "run directory: ", dir.string(),
              " exists and is not a directory");
  TORCH_CHECK(options.resume(), "run directory: ", dir.string(),
              " already exists; choose another run name or resume it");
  return RunDir(dir, true);
}

RunDir RunDir::open(const std::string& dir) {
  std::error_code ec;
  TORCH_CHECK(fs::is_directory(dir, ec), "run directory: ", dir, ": no such directory");
  return RunDir(fs::path(dir), true);
}

RunDir RunDir::remote(const std::string& dir) { return RunDir(fs::path(dir), true); }

RunLock::RunLock(const fs::path& dir, const std::string& who) : path_(dir / kFileName) {
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  TORCH_CHECK(fd_ >= 0, who, ": cannot open the lock file ", path_.string(), ": ",
              std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int lock_errno = errno;
    char holder[32] = {0};
    const ssize_t n = ::pread(fd_, holder, sizeof(holder) - 1, 0);
    std::string pid = n > 0 ? std::string(holder, static_cast<size_t>(n)) : "";
    while (!pid.empty() && std::isspace(static_cast<unsigned char>(pid.back()))) pid.pop_back();
    ::close(fd_);
    fd_ = -1;
    TORCH_CHECK(lock_errno != EWOULDBLOCK, who, ": run directory ", dir.string(),
                " is in use by another kvq process (pid ", pid.empty() ? "unknown" : pid,
                ", lock file ", path_.string(),
                "); wait for it to end or choose another directory");
    TORCH_CHECK(false, who, ": cannot lock ", path_.string(), ": ", std::strerror(lock_errno));
  }
  // The holder's pid, for the message of the next one that tries (best effort).
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) == 0) {
    const ssize_t written = ::pwrite(fd_, pid.data(), pid.size(), 0);
    (void)written;
  }
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the lock
}

RunLock::RunLock(RunLock&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

RunLock& RunLock::operator=(RunLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

bool RunDir::has_checkpoint() const {
  std::error_code ec;
  return fs::is_regular_file(checkpoint_path(), ec);
}

nlohmann::json RunDir::load_config() const {
  const std::string path = config_path().string();
  const std::string text = util::read_file(path, "run directory");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // also out_of_range: 1e999
    TORCH_CHECK(false, "run directory: ", path, ": not valid JSON: ", e.what());
  }
  return {};
}

}  // namespace train
}  // namespace kvq
