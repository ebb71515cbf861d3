#include "kvq/data/io.h"

#include <c10/util/Exception.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace kvq {
namespace data {

bool command_on_path(const std::string& command) {
  const char* env = std::getenv("PATH");
  if (env == nullptr) return false;
  const std::string dirs = env;
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    const std::string dir = end > start ? dirs.substr(start, end - start) : ".";
    const std::string candidate = dir + "/" + command;
    std::error_code ec;
    if (std::filesystem::is_regular_file(candidate, ec) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return true;
    }
    start = end + 1;
  }
  return false;
}

std::string shell_quote(const std::string& arg) {
  std::string out = "'";
  for (char c : arg) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

CommandResult run_command(const std::string& who, const std::string& command_line) {
  FILE* pipe = ::popen(command_line.c_str(), "r");
  TORCH_CHECK(pipe != nullptr, who, ": cannot run `", command_line, "`: ", std::strerror(errno));
  CommandResult result;
  char buffer[1 << 16];
  size_t got;
  while ((got = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, got);
  result.status = ::pclose(pipe);
  return result;
}

std::string data_cache_dir() {
  const auto env = [](const char* name) {
    const char* value = std::getenv(name);
    return value != nullptr ? std::string(value) : std::string();
  };
  if (!env("KVQ_CACHE_DIR").empty()) return env("KVQ_CACHE_DIR");
  if (!env("XDG_CACHE_HOME").empty()) return env("XDG_CACHE_HOME") + "/kvq";
  if (!env("HOME").empty()) return env("HOME") + "/.cache/kvq";
  return ".kvq-cache";
}

}  // namespace data
}  // namespace kvq
