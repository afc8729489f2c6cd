// Row reductions behind the per-sample gradient norms of nn.Linear layers
// (lcmat/reference/linear_grad_norms.py); the GEMMs are ATen's, in csrc/linear_grad_norms.cpp.
#include <cstdint>

namespace lcmat {
namespace cpu {

// out_i = sum_k x_ik y_ik over rows of length K: <A A^T, G G^T>_F for the ghost norm (x, y the
// flattened T x T Gram matrices), or ||A^T G||_F^2 (x = y the flattened per-sample gradient).
template <typename T>
void row_dots(const T* x, const T* y, int64_t n, int64_t K, bool parallel, T* out) {
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * K;
    const T* yi = y + i * K;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < K; ++k) s += xi[k] * yi[k];
    out[i] = s;
  }
}

// T = 1: A_i^T G_i = a_i g_i^T is rank one, ||a_i g_i^T||_F^2 = ||a_i||^2 ||g_i||^2.
template <typename T>
void rank_one_sq_norms(const T* a, const T* g, int64_t n, int64_t d_in, int64_t d_out, bool parallel,
                       T* out) {
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < n; ++i) {
    const T* ai = a + i * d_in;
    const T* gi = g + i * d_out;
    T sa = 0, sg = 0;
#pragma omp simd reduction(+ : sa)
    for (int64_t k = 0; k < d_in; ++k) sa += ai[k] * ai[k];
#pragma omp simd reduction(+ : sg)
    for (int64_t k = 0; k < d_out; ++k) sg += gi[k] * gi[k];
    out[i] = sa * sg;
  }
}

#define LCMAT_INSTANTIATE(T)                                                                      \
  template void row_dots<T>(const T*, const T*, int64_t, int64_t, bool, T*);                      \
  template void rank_one_sq_norms<T>(const T*, const T*, int64_t, int64_t, int64_t, bool, T*);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cpu
}  // namespace lcmat
