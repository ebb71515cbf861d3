#pragma once
// The kernels' parallel loop over independent (batch, head) pairs.
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

namespace kvq {
namespace kernels {
namespace cpu {

// Calls head_fn(b, h, scratch) for every b < batch, h < heads under at::parallel_for, one pair
// per task; scratch is a std::vector<T> per thread chunk, reused across the pairs it runs.
template <typename T, typename HeadFn>
void for_each_head(int64_t batch, int64_t heads, const HeadFn& head_fn) {
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch;
    for (int64_t bh = begin; bh < end; ++bh) head_fn(bh / heads, bh % heads, scratch);
  });
}

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
