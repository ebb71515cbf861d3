// Shared by the fuzz targets and the replay driver: scratch files, findings, the error contract.
#include <c10/util/Logging.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "fuzz_target.h"
#include "kvq/util/atomic_file.h"
#include "replay.h"

namespace kvq {
namespace fuzz {

namespace {

std::string& current_input() {
  static std::string name;
  return name;
}

// A c10::Error captures and symbolises a stack trace when it is made: most of the time of a
// rejected input (100 inputs/s instead of thousands). The targets read only the message.
[[maybe_unused]] const bool no_stack_traces = [] {
  c10::SetStackTraceFetcher([] { return std::string(); });
  return true;
}();

}  // namespace

std::vector<std::pair<std::string, TargetFunction>>& registered_targets() {
  static std::vector<std::pair<std::string, TargetFunction>> targets;
  return targets;
}

bool register_target(const char* name, TargetFunction function) {
  registered_targets().emplace_back(name, function);
  return true;
}

void set_current_input(const std::string& path) { current_input() = path; }

std::string scratch_dir() {
  // Never destroyed: the exit handler that removes the directory runs after static destructors.
  static const std::string* dir = [] {
    // Memory, not disk: on ext4 every rewrite of a scratch file is flushed on close (its
    // replace-by-truncate heuristic), which made the targets wait on the disk most of the time.
    std::string base = "/tmp";
    const char* tmp = std::getenv("TMPDIR");
    if (std::getenv("KVQ_FUZZ_SCRATCH") != nullptr) {
      base = std::getenv("KVQ_FUZZ_SCRATCH");
    } else if (::access("/dev/shm", W_OK) == 0) {
      base = "/dev/shm";
    } else if (tmp != nullptr && *tmp != '\0') {
      base = tmp;
    }
    std::string pattern = base + "/kvq-fuzz-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::perror("kvq fuzz: mkdtemp");
      std::abort();
    }
    auto* path = new std::string(pattern);
    std::atexit([] { kvq::util::remove_tree(*dir); });
    return path;
  }();
  return *dir;
}

std::string write_scratch(const std::string& name, const std::string& bytes) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) fail("cannot write the scratch file " + path);
  return path;
}

std::string write_scratch(const std::string& name, const uint8_t* data, size_t size) {
  return write_scratch(name, std::string(reinterpret_cast<const char*>(data), size));
}

void fail(const std::string& message) {
  std::cerr << "kvq fuzz finding: " << message << "\n";
  if (!current_input().empty()) std::cerr << "  input: " << current_input() << "\n";
  std::cerr.flush();
  std::abort();
}

void expect_names(const c10::Error& error, const std::string& input) {
  const std::string message = error.what_without_backtrace();
  const std::string first_line = message.substr(0, message.find('\n'));
  if (first_line.find(input) == std::string::npos) {
    fail("the error does not name its input '" + input + "' in its first line: " + message);
  }
}

}  // namespace fuzz
}  // namespace kvq
