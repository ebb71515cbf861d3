#pragma once
// The directory of one training run, runs/<task>/<name>, and the files in it:
//   config.json    the resolved config (ConfigSchema<T>::save), written before training starts
//   checkpoint.pt  the latest checkpoint (checkpoint.h)
//   metrics.jsonl  the metrics log (metrics_log.h)
// Without a name the run is named by its local start time, YYYYMMDD-HHMMSS (with "-2", "-3",
// ... when that directory already exists), so runs sort by start time and never collide.
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "kvq/train/config.h"

namespace kvq {
namespace train {

struct RunDirOptions {
  /// Directory holding the runs of every task. Default: "runs".
  TORCH_ARG(std::string, root) = "runs";
  /// Task name, the first level below root (e.g. "synthetic", "char-lm"). Required.
  TORCH_ARG(std::string, task) = "";
  /// Run name; "" = the start time. Letters, digits and . _ - + = , only. Default: "".
  TORCH_ARG(std::string, name) = "";
  /// Continue a run: reopen runs/<task>/<name> if it exists (created otherwise). Without it an
  /// existing named run is an error, so no run is overwritten by accident. Default: false.
  TORCH_ARG(bool, resume) = false;
};

class RunDir {
 public:
  // Creates (or, with resume, reopens) the run directory as described above. Errors name the
  // offending option or the directory.
  static RunDir create(const RunDirOptions& options);
  // An existing run directory, for evaluation or comparison.
  static RunDir open(const std::string& dir);
  // The run directory `dir` as named by another process, unchecked: what workers other than
  // rank 0 of a data-parallel run hold (they never read or write it; it may be on another
  // machine).
  static RunDir remote(const std::string& dir);

  const std::filesystem::path& path() const { return dir_; }
  // The last path component: the run's name.
  std::string name() const { return dir_.filename().string(); }
  std::filesystem::path config_path() const { return dir_ / "config.json"; }
  std::filesystem::path checkpoint_path() const { return dir_ / "checkpoint.pt"; }
  std::filesystem::path metrics_path() const { return dir_ / "metrics.jsonl"; }
  // Any other file of the run (e.g. "samples.txt").
  std::filesystem::path file(const std::string& name) const { return dir_ / name; }

  bool has_checkpoint() const;
  // Whether this RunDir reopened an existing directory (RunDirOptions::resume).
  bool resumed() const { return resumed_; }

  // Writes the resolved config to config.json (atomically).
  template <class T>
  void save_config(const ConfigSchema<T>& schema, const T& config) const {
    schema.save(config, config_path().string());
  }
  // The saved config.json as JSON (e.g. to compare with a resumed run's config via
  // ConfigSchemaBase::diff). Errors name the file.
  nlohmann::json load_config() const;

 private:
  explicit RunDir(std::filesystem::path dir, bool resumed) : dir_(std::move(dir)), resumed_(resumed) {}
  std::filesystem::path dir_;
  bool resumed_ = false;
};

// One writer per run directory: an exclusive lock (flock) on <dir>/train.lock, held while the
// object lives. Taking it never waits: when another process, or another RunLock of this process,
// holds it, the constructor throws "<who>: run directory <dir> is in use by another kvq process
// (pid N, lock file <dir>/train.lock); wait for it to end or choose another directory". The
// operating system drops the lock when the process ends in any way (kill -9 included), so a
// leftover train.lock never blocks a later run; it holds the pid of its last holder.
class RunLock {
 public:
  static constexpr const char* kFileName = "train.lock";
  // Locks `dir`, which must exist.
  RunLock(const std::filesystem::path& dir, const std::string& who);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  RunLock(RunLock&& other) noexcept;
  RunLock& operator=(RunLock&& other) noexcept;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

// Throws unless `name` is a usable path component: non-empty, not "." or "..", and only
// letters, digits and . _ - + = ,. `what` names the option in the error ("task", "run name").
void check_run_name(const std::string& name, const std::string& what);

// The local time as YYYYMMDD-HHMMSS.
std::string timestamp_name();

}  // namespace train
}  // namespace kvq
