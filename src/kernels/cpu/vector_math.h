#pragma once
// Row operations of the CPU kernels, over contiguous arrays of `len` elements. The float versions
// are compiled for AVX-512, AVX2+FMA and baseline x86-64 and picked at load time (GCC/Clang
// target_clones); exp is a polynomial with ~2 ulp error in float and std::exp in double.
#include <cstdint>

namespace kvq {
namespace kernels {
namespace cpu {

#define KVQ_VECTOR_MATH(T)                                                                       \
  /* x_c += bias[c * stride] */                                                                  \
  void add_strided(T* x, const T* bias, int64_t stride, int64_t len);                            \
  /* x_c = value where mask_c */                                                                 \
  void mask_where(T* x, const bool* mask, int64_t len, T value);                                 \
  /* max_c x_c (-inf for len 0) */                                                               \
  T max_of(const T* x, int64_t len);                                                             \
  T sum_of(const T* x, int64_t len);                                                             \
  T dot(const T* x, const T* y, int64_t len);                                                    \
  /* x_c *= factor */                                                                            \
  void scale_in_place(T* x, int64_t len, T factor);                                              \
  /* x_c = exp(x_c - shift); exp(-inf) = 0 */                                                    \
  void exp_shifted(T* x, int64_t len, T shift);                                                  \
  /* x_c = exp(x_c - shift), returns sum_c x_c */                                                \
  T exp_shifted_sum(T* x, int64_t len, T shift);                                                 \
  /* dp_c = p_c * (dp_c - delta): the softmax backward dS = P * (dP - rowsum(dO * O)) */         \
  void softmax_grad(const T* p, T* dp, int64_t len, T delta);                                    \
  /* phi_c = elu(x_c) + 1 = x_c + 1 for x_c > 0, exp(x_c) otherwise (linear attention's map) */   \
  void elu_plus_one(const T* x, T* phi, int64_t len);                                            \
  /* grad_c *= elu'(x_c) = 1 for x_c > 0, exp(x_c) = phi_c otherwise (phi from elu_plus_one) */   \
  void elu_grad_in_place(const T* x, const T* phi, T* grad, int64_t len);

KVQ_VECTOR_MATH(float)
KVQ_VECTOR_MATH(double)
#undef KVQ_VECTOR_MATH

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
