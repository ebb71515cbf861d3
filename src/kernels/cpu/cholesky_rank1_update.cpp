#include "kernels/cpu/cholesky_rank1_update.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace kvq {
namespace kernels {
namespace cpu {
namespace {

// One update (the rotations of the header comment); x is a scratch copy, overwritten.
template <typename T>
void update_one(T* L, int64_t ld, T* x, int64_t d) {
  for (int64_t k = 0; k < d; ++k) {
    T* diag = L + k * ld + k;
    const T r = std::hypot(*diag, x[k]);
    const T c = *diag / r, s = x[k] / r;
    *diag = r;
    T* column = diag + ld;  // L_ik for i = k+1 .. d-1, one row apart
    for (int64_t i = k + 1; i < d; ++i, column += ld) {
      const T l = *column, xi = x[i];
      *column = c * l + s * xi;
      x[i] = c * xi - s * l;
    }
  }
}

}  // namespace

template <typename T>
void cholesky_rank1_update(const CholeskyRank1Params<T>& p) {
  // About 2 d^2 multiply-adds per update: small orders share a thread.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, p.d * p.d));
  at::parallel_for(0, p.count, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> x(p.d);
    for (int64_t u = begin; u < end; ++u) {
      const T* xu = p.x + u * p.x_stride;
      x.assign(xu, xu + p.d);
      update_one(p.factor + u * p.factor_stride, p.ld, x.data(), p.d);
    }
  });
}

template void cholesky_rank1_update<float>(const CholeskyRank1Params<float>&);
template void cholesky_rank1_update<double>(const CholeskyRank1Params<double>&);

}  // namespace cpu
}  // namespace kernels
}  // namespace kvq
