#pragma once
// Philox 4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel random
// numbers: as easy as 1, 2, 3" (SC 2011): a keyed bijection of a 128-bit counter, so the n-th
// random word needs no state and no sequence, only (key, n). PyTorch's CUDA dropout and
// FlashAttention key it the same way: the seed is the key, (offset, position) the counter, so a
// backward pass regenerates the forward's dropout mask instead of storing it.
#include <array>
#include <cstdint>

namespace kvq {
namespace kernels {
namespace cpu {

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;

// Ten rounds of: (hi0, lo0) = M0 * c0, (hi1, lo1) = M1 * c2 (32 x 32 -> 64-bit products),
// c <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0), then the key is bumped by the Weyl constants
// (W0, W1); c becomes four independent uniform 32-bit words. The constants are the paper's.
// Scalars in and out, so that a loop over counters calling it vectorises.
inline void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                          uint32_t k1) {
  constexpr uint64_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = kM0 * c0, p1 = kM1 * c2;
    const uint32_t next0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t next2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = next0;
    c2 = next2;
    k0 += kW0;
    k1 += kW1;
  }
}

inline PhiloxCounter philox4x32_10(PhiloxCounter c, PhiloxKey k) {
  philox4x32_10(c[0], c[1], c[2], c[3], k[0], k[1]);
  return c;
}

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
