// FDMat (lcmat/reference/fdmat.py): the column sums of the feature transform, and the transport
// score
//     s_i = sum_c (P_ic M_ic)^2,   P_ic = exp((f_i + g_c - M_ic) / reg)
// in one streaming pass over M, the plan never stored. (The rest of fdmat_transform is ATen in
// csrc/fdmat.cpp; prototype_cost is a GEMM there followed by squared_euclidean_from_dot in
// sinkhorn.cpp.)
#include <algorithm>
#include <vector>

#include "cpu_kernels.h"
#include "vexp.h"

namespace lcmat {
namespace cpu {

template <typename T>
void column_sums(const T* x, int64_t N, int64_t D, double* out) {
  // Fixed blocks of rows, each summed row by row (the loop over columns vectorises), then the
  // blocks' sums added in order: the same result for every thread count.
  constexpr int64_t kBlock = 1024;
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(blocks) * D, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    double* acc = partial.data() + b * D;
    for (int64_t i = b * kBlock, ie = std::min(N, i + kBlock); i < ie; ++i) {
      const T* row = x + i * D;
      for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<double>(row[d]);
    }
  }
  std::fill(out, out + D, 0.0);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t d = 0; d < D; ++d) out[d] += partial[b * D + d];
}

namespace {

// One row at a time, the exp vectorised across the row: for rows of 64 entries or more.
template <typename T>
void scores_by_row(const T* M, const T* f, const T* g, int64_t N, int64_t C, T r, T* out) {
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

// Short rows (C = 10: too short for the exp to vectorise inside one row): a chunk
// of about 4,096 entries at a time, in three loops over L1: the exponents row by row, (P M)^2 over
// the chunk as one flat loop, then each row's sum.
template <typename T>
void scores_by_chunk(const T* M, const T* f, const T* g, int64_t N, int64_t C, T r, T* out) {
  const int64_t rows = std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1));
  const int64_t chunks = (N + rows - 1) / rows;
#pragma omp parallel
  {
    std::vector<T> buf(static_cast<size_t>(rows) * C);
#pragma omp for schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t i0 = chunk * rows, i1 = std::min(N, i0 + rows), count = (i1 - i0) * C;
      for (int64_t i = i0; i < i1; ++i) {
        T* b = buf.data() + (i - i0) * C;
        const T* row = M + i * C;
        const T fi = f[i];
        for (int64_t c = 0; c < C; ++c) b[c] = (fi + g[c] - row[c]) / r;
      }
      T* b = buf.data();
      const T* m = M + i0 * C;
#pragma omp simd
      for (int64_t t = 0; t < count; ++t) {
        const T pm = vexp(b[t]) * m[t];
        b[t] = pm * pm;
      }
      for (int64_t i = i0; i < i1; ++i) {
        T s = 0;
        for (int64_t c = 0; c < C; ++c) s += buf[(i - i0) * C + c];
        out[i] = s;
      }
    }
  }
}

}  // namespace

template <typename T>
void fdmat_scores(const T* M, const T* f, const T* g, int64_t N, int64_t C, double reg, T* out) {
  const T r = static_cast<T>(reg);
  if (C >= 64) {
    scores_by_row(M, f, g, N, C, r, out);
  } else {
    scores_by_chunk(M, f, g, N, C, r, out);
  }
}

template void column_sums<float>(const float*, int64_t, int64_t, double*);
template void column_sums<double>(const double*, int64_t, int64_t, double*);
template void fdmat_scores<float>(const float*, const float*, const float*, int64_t, int64_t, double, float*);
template void fdmat_scores<double>(const double*, const double*, const double*, int64_t, int64_t, double, double*);

}  // namespace cpu
}  // namespace lcmat
