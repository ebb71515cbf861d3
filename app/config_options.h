#pragma once
// The config options `kvq train` and `kvq compare` share: --preset, --config and --set, in the
// order ConfigSources applies them.
#include <CLI/CLI.hpp>

#include "kvq/train/config.h"

namespace kvq {
namespace app {

// Registers --preset, --config and --set (repeatable) on `cmd`, writing into `sources`, which
// must outlive the parse.
inline void add_config_options(CLI::App* cmd, train::ConfigSources& sources) {
  cmd->add_option("--preset", sources.preset,
                  "Config preset: quick, or paper (Key-Value Transformer tasks) / full "
                  "(Intention tasks)");
  cmd->add_option("--config", sources.file, "JSON file with an object of config overrides");
  cmd->add_option("--set", sources.sets, "Config override key=value (repeatable; applied last)");
}

}  // namespace app
}  // namespace kvq
