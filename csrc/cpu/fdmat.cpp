// FDMat's transport score (lcmat/reference/fdmat.py):
//     s_i = sum_c (P_ic M_ic)^2,   P_ic = exp((f_i + g_c - M_ic) / reg)
// one streaming pass over M, the plan never stored. (prototype_cost is a GEMM in csrc/ops.cpp
// followed by squared_euclidean_from_dot in sinkhorn.cpp.)
#include "cpu_kernels.h"
#include "vexp.h"

namespace lcmat {
namespace cpu {

template <typename T>
void fdmat_scores(const T* M, const T* f, const T* g, int64_t N, int64_t C, double reg, T* out) {
  const T r = static_cast<T>(reg);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const T* row = M + i * C;
    const T fi = f[i];
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; ++c) {
      const T pm = vexp((fi + g[c] - row[c]) / r) * row[c];
      s += pm * pm;
    }
    out[i] = s;
  }
}

template void fdmat_scores<float>(const float*, const float*, const float*, int64_t, int64_t, double, float*);
template void fdmat_scores<double>(const double*, const double*, const double*, int64_t, int64_t, double, double*);

}  // namespace cpu
}  // namespace lcmat
