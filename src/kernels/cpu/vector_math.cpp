#include "kernels/cpu/vector_math.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/multiversion.h"

// Each loop below is written so that GCC vectorises it without -ffast-math: reductions run in
// kLanes independent partial results.

namespace kvq {
namespace kernels {
namespace cpu {
namespace {

constexpr int kLanes = 16;

// exp(x) for x <= 88 (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial, 2^n
// through the exponent bits). Below -87.3 the result is 0, as exp underflows there anyway; this
// also maps -inf (masked scores) to exactly 0.
inline float exp_approx(float x) {
  float clamped = x < -87.3f ? -87.3f : x;
  clamped = clamped > 88.0f ? 88.0f : clamped;
  // Round to nearest by the 1.5 * 2^23 trick (exact for |t| < 2^22).
  const float t = clamped * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;
  float r = clamped - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return x < -87.3f ? 0.0f : p * two_n;
}

inline double exp_exact(double x) { return std::exp(x); }

template <typename T>
T lane_sum(const T* lanes) {
  T s = 0;
  for (int l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

}  // namespace

#define KVQ_VECTOR_MATH_IMPL(T, EXP)                                                         \
  KVQ_MULTIVERSION void add_strided(T* x, const T* bias, int64_t stride, int64_t len) {     \
    if (stride == 1) {                                                                       \
      for (int64_t c = 0; c < len; ++c) x[c] += bias[c];                                     \
    } else {                                                                                 \
      for (int64_t c = 0; c < len; ++c) x[c] += bias[c * stride];                            \
    }                                                                                        \
  }                                                                                          \
  KVQ_MULTIVERSION void mask_where(T* x, const bool* mask, int64_t len, T value) {          \
    for (int64_t c = 0; c < len; ++c) x[c] = mask[c] ? value : x[c];                         \
  }                                                                                          \
  KVQ_MULTIVERSION T max_of(const T* x, int64_t len) {                                      \
    T lanes[kLanes];                                                                         \
    for (int l = 0; l < kLanes; ++l) lanes[l] = -std::numeric_limits<T>::infinity();        \
    int64_t c = 0;                                                                           \
    for (; c + kLanes <= len; c += kLanes)                                                   \
      for (int l = 0; l < kLanes; ++l) lanes[l] = x[c + l] > lanes[l] ? x[c + l] : lanes[l]; \
    T m = -std::numeric_limits<T>::infinity();                                               \
    for (int l = 0; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;                        \
    for (; c < len; ++c) m = x[c] > m ? x[c] : m;                                            \
    return m;                                                                                \
  }                                                                                          \
  KVQ_MULTIVERSION T sum_of(const T* x, int64_t len) {                                      \
    T lanes[kLanes] = {};                                                                    \
    int64_t c = 0;                                                                           \
    for (; c + kLanes <= len; c += kLanes)                                                   \
      for (int l = 0; l < kLanes; ++l) lanes[l] += x[c + l];                                 \
    T s = lane_sum(lanes);                                                                   \
    for (; c < len; ++c) s += x[c];                                                          \
    return s;                                                                                \
  }                                                                                          \
  KVQ_MULTIVERSION T dot(const T* x, const T* y, int64_t len) {                             \
    T lanes[kLanes] = {};                                                                    \
    int64_t c = 0;                                                                           \
    for (; c + kLanes <= len; c += kLanes)                                                   \
      for (int l = 0; l < kLanes; ++l) lanes[l] += x[c + l] * y[c + l];                      \
    T s = lane_sum(lanes);                                                                   \
    for (; c < len; ++c) s += x[c] * y[c];                                                   \
    return s;                                                                                \
  }                                                                                          \
  KVQ_MULTIVERSION void scale_in_place(T* x, int64_t len, T factor) {                       \
    for (int64_t c = 0; c < len; ++c) x[c] *= factor;                                        \
  }                                                                                          \
  KVQ_MULTIVERSION void exp_shifted(T* x, int64_t len, T shift) {                           \
    for (int64_t c = 0; c < len; ++c) x[c] = EXP(x[c] - shift);                              \
  }                                                                                          \
  KVQ_MULTIVERSION T exp_shifted_sum(T* x, int64_t len, T shift) {                          \
    T lanes[kLanes] = {};                                                                    \
    int64_t c = 0;                                                                           \
    for (; c + kLanes <= len; c += kLanes)                                                   \
      for (int l = 0; l < kLanes; ++l) {                                                     \
        x[c + l] = EXP(x[c + l] - shift);                                                    \
        lanes[l] += x[c + l];                                                                \
      }                                                                                      \
    T s = lane_sum(lanes);                                                                   \
    for (; c < len; ++c) {                                                                   \
      x[c] = EXP(x[c] - shift);                                                              \
      s += x[c];                                                                             \
    }                                                                                        \
    return s;                                                                                \
  }                                                                                          \
  KVQ_MULTIVERSION void softmax_grad(const T* p, T* dp, int64_t len, T delta) {             \
    for (int64_t c = 0; c < len; ++c) dp[c] = p[c] * (dp[c] - delta);                        \
  }                                                                                          \
  KVQ_MULTIVERSION void elu_plus_one(const T* x, T* phi, int64_t len) {                     \
    for (int64_t c = 0; c < len; ++c) phi[c] = x[c] > T(0) ? x[c] + T(1) : EXP(x[c]);        \
  }                                                                                          \
  KVQ_MULTIVERSION void elu_grad_in_place(const T* x, const T* phi, T* grad, int64_t len) { \
    for (int64_t c = 0; c < len; ++c) grad[c] = x[c] > T(0) ? grad[c] : grad[c] * phi[c];   \
  }

KVQ_VECTOR_MATH_IMPL(float, exp_approx)
KVQ_VECTOR_MATH_IMPL(double, exp_exact)
#undef KVQ_VECTOR_MATH_IMPL

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
