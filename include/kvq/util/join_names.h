#pragma once
// The one joiner of name lists in kvq's error and help texts.
#include <string>
#include <vector>

namespace kvq {
namespace util {

// "a, b, c": the items joined by `separator`, for the lists of valid choices in error and help
// texts.
inline std::string join_names(const std::vector<std::string>& items,
                              const std::string& separator = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

}  // namespace util
}  // namespace kvq
