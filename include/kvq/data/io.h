#pragma once
// Process helpers shared by the data loaders (files: kvq/util/atomic_file.h). Every error names
// the calling function (`who`) and the path or command.
#include <string>

namespace kvq {
namespace data {

// Whether an executable `command` is found in a directory of $PATH.
bool command_on_path(const std::string& command);

// POSIX-shell single-quoted form of `arg`.
std::string shell_quote(const std::string& arg);

struct CommandResult {
  int status = -1;     // pclose() status; 0 = success
  std::string output;  // everything the command wrote to stdout
};
// Runs `command_line` through /bin/sh (popen) and captures its stdout; stderr is not captured.
CommandResult run_command(const std::string& who, const std::string& command_line);

// Where the default corpora built from Debian packages are cached (the KJV text, the gettext
// en-de TSV): $KVQ_CACHE_DIR, else $XDG_CACHE_HOME/kvq, else $HOME/.cache/kvq, else .kvq-cache.
std::string data_cache_dir();

}  // namespace data
}  // namespace kvq
