#pragma once
// The replay driver's side of fuzz_target.h (not needed by the targets themselves).
#include <string>
#include <utility>
#include <vector>

#include "fuzz_target.h"

namespace kvq {
namespace fuzz {

// Every target registered with KVQ_FUZZ_TARGET in this binary, in registration order.
std::vector<std::pair<std::string, TargetFunction>>& registered_targets();

// The file being replayed, printed with a finding.
void set_current_input(const std::string& path);

}  // namespace fuzz
}  // namespace kvq
