// Last-layer per-sample quantities for softmax cross-entropy (lcmat/reference/last_layer.py):
// p = softmax(z), e = p - onehot(y), q = p (1 - p). One pass over each row, rows in parallel.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_kernels.h"
#include "vexp.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lcmat {
namespace cpu {

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace {

// p = softmax(z) for one row, written to p; exp(z - max) / sum as torch.softmax computes it.
template <typename T>
void softmax_row(const T* z, int64_t C, T* p) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t c = 0; c < C; ++c) mx = z[c] > mx ? z[c] : mx;
  T sum = 0;
  for (int64_t c = 0; c < C; ++c) {
    p[c] = vexp(z[c] - mx);
    sum += p[c];
  }
  const T inv = T(1) / sum;
  for (int64_t c = 0; c < C; ++c) p[c] *= inv;
}

// Records the smallest bad row seen (labels outside [0, C)); rows run in parallel.
inline void note_bad_row(int64_t i, int64_t* bad) {
#pragma omp critical(lcmat_bad_label)
  if (*bad < 0 || i < *bad) *bad = i;
}

}  // namespace

template <typename T>
int64_t last_layer_factors(const T* logits, const int64_t* labels, int64_t n, int64_t C, T* e, T* q) {
  int64_t bad = -1;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    T* ei = e + i * C;
    T* qi = q + i * C;
    softmax_row(logits + i * C, C, ei);
    for (int64_t c = 0; c < C; ++c) qi[c] = ei[c] * (T(1) - ei[c]);
    const int64_t y = labels[i];
    if (y < 0 || y >= C) {
      note_bad_row(i, &bad);
      continue;
    }
    ei[y] -= T(1);
  }
  return bad;
}

template <typename T>
int64_t last_layer_grad_norms(const T* embeddings, const T* logits, const int64_t* labels,
                              const T* scale, int64_t n, int64_t C, int64_t D, T* grad_norm,
                              T* error_norm) {
  int64_t bad = -1;
#pragma omp parallel
  {
    std::vector<T> p(C);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t y = labels[i];
      if (y < 0 || y >= C) {
        note_bad_row(i, &bad);
        continue;
      }
      softmax_row(logits + i * C, C, p.data());
      p[y] -= T(1);
      T e2 = 0;
      for (int64_t c = 0; c < C; ++c) e2 += p[c] * p[c];
      const T* h = embeddings + i * D;
      T h2 = 0;
      for (int64_t d = 0; d < D; ++d) h2 += h[d] * h[d];
      const T err = std::sqrt(e2);
      T grad = err * std::sqrt(T(1) + h2);
      if (scale) grad *= std::abs(scale[i]);
      error_norm[i] = err;
      grad_norm[i] = grad;
    }
  }
  return bad;
}

#define LCMAT_INSTANTIATE(T)                                                                      \
  template int64_t last_layer_factors<T>(const T*, const int64_t*, int64_t, int64_t, T*, T*);     \
  template int64_t last_layer_grad_norms<T>(const T*, const T*, const int64_t*, const T*, int64_t, \
                                            int64_t, int64_t, T*, T*);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cpu
}  // namespace lcmat
