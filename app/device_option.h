#pragma once
// --device for the commands that run models: cpu, cuda (cuda:LOCAL_RANK under torchrun) or
// cuda:N. Without CUDA in this LibTorch, a CUDA choice fails with one line
// (train::parse_device). The task drivers and the benchmark keep their tensors on the CPU for
// now, so a CUDA device that exists is refused by name as well, never silently ignored.
#include <CLI/CLI.hpp>

#include <string>

#include "kvq/train/distributed.h"

namespace kvq {
namespace app {

inline void add_device_option(CLI::App* cmd, std::string& device) {
  cmd->add_option("--device", device, "cpu, cuda (cuda:LOCAL_RANK under torchrun) or cuda:N")
      ->capture_default_str();
}

// The device `text` names, checked; `command` names the command in the error.
inline torch::Device checked_device(const std::string& text, const std::string& command) {
  const auto device =
      train::parse_device(text, train::dist_env_from_environment().local_rank);
  TORCH_CHECK(device.is_cpu(), command, ": --device ", text,
              ": kvq's ", command, " keeps its tensors on the CPU; GPU support is not "
              "implemented yet; use --device cpu");
  return device;
}

}  // namespace app
}  // namespace kvq
