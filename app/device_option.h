#pragma once
// --device for the commands that run models: cpu, cuda (cuda:LOCAL_RANK under torchrun) or
// cuda:N. Without CUDA in this LibTorch (or with no GPU) a CUDA choice fails with one line
// (train::parse_device).
#include <CLI/CLI.hpp>

#include <string>

#include "kvq/train/distributed.h"

namespace kvq {
namespace app {

inline void add_device_option(CLI::App* cmd, std::string& device) {
  cmd->add_option("--device", device, "cpu, cuda (cuda:LOCAL_RANK under torchrun) or cuda:N")
      ->capture_default_str();
}

// The device `text` names, checked; under torchrun "cuda" is cuda:LOCAL_RANK.
inline torch::Device checked_device(const std::string& text) {
  return train::parse_device(text, train::dist_env_from_environment().local_rank);
}

}  // namespace app
}  // namespace kvq
