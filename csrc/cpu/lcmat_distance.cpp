// The per-class LCMat-S distance block (lcmat/reference/lcmat_distance.py):
//     D_ij = || g_i - g_j ||_2 + rho * || d_i[K] - d_j[K] ||_1
// The big GEMM of the Gram identity, H H^T, runs in ATen (csrc/ops.cpp); here is the rest: the
// distance tiles (the small Gram of the error factors, the L1 term, the square root) computed in
// one pass, the curvature moments, gathering d_i[K], and the standalone tiled pairwise L1.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu_kernels.h"

namespace lcmat {
namespace cpu {

namespace {

// Tiles of the n x n blocks: 32 rows by 128 columns; the K x 128 values of b_t (d_t) stay in L1/L2.
constexpr int64_t kTileRows = 32;
constexpr int64_t kTileCols = 128;

// One tile of distance_block: rows [i0, i1) and columns [j0, j1). Every entry is computed in
// registers-and-L1 from its inputs and written once; the tile's transpose goes to the rows below
// through a local copy, so both writes are contiguous.
template <typename T>
void distance_tile(T* out, const T* hh, const T* se, const T* se_t, const T* d, const T* d_t, const T* diag_sq,
                   T rho, int64_t r0, int64_t n, int64_t C, int64_t K, int64_t i0, int64_t i1, int64_t j0,
                   int64_t j1) {
  T gram_e[kTileCols], l1[kTileCols], value[kTileCols];
  T transposed[kTileCols * kTileRows];
  const int64_t w = j1 - j0, hh_cols = n - r0;
  for (int64_t i = i0; i < i1; ++i) {
    // <s_i e_i, s_j e_j> and sum_k |d_ik - d_jk|, each summed over c (over k) in order
    for (int64_t jj = 0; jj < w; ++jj) gram_e[jj] = l1[jj] = T(0);
    for (int64_t c = 0; c < C; ++c) {
      const T a = se[i * C + c];
      const T* b = se_t + c * n + j0;
      for (int64_t jj = 0; jj < w; ++jj) gram_e[jj] += a * b[jj];
    }
    for (int64_t k = 0; k < K; ++k) {
      const T a = d[i * K + k];
      const T* b = d_t + k * n + j0;
      for (int64_t jj = 0; jj < w; ++jj) l1[jj] += std::abs(a - b[jj]);
    }
    // <g_i, g_j> = <s_i e_i, s_j e_j> (1 + <h_i, h_j>); ||g_i - g_j||^2 from the diagonal.
    const T* hh_row = hh + (i - r0) * hh_cols + (j0 - r0);
    const T di = diag_sq[i];
    for (int64_t jj = 0; jj < w; ++jj) {
      const T d2 = di + diag_sq[j0 + jj] - T(2) * (gram_e[jj] * (T(1) + hh_row[jj]));
      value[jj] = std::sqrt(d2 > T(0) ? d2 : T(0)) + rho * l1[jj];
    }
    T* row = out + i * n;
    for (int64_t j = std::max(j0, i + 1); j < j1; ++j) row[j] = value[j - j0];
    if (i >= j0 && i < j1) row[i] = T(0);
    for (int64_t jj = 0; jj < w; ++jj) transposed[jj * kTileRows + (i - i0)] = value[jj];
  }
  // the mirror: out_ji = out_ij for the rows j of the tile below the diagonal
  for (int64_t j = std::max(j0, i0 + 1); j < j1; ++j) {
    const T* src = transposed + (j - j0) * kTileRows;
    T* dst = out + j * n;
    for (int64_t i = i0, ie = std::min(i1, j); i < ie; ++i) dst[i] = src[i - i0];
  }
}

}  // namespace

template <typename T>
void distance_block(T* out, const T* hh, const T* se, const T* se_t, const T* d, const T* d_t, const T* diag_sq,
                    T rho, int64_t r0, int64_t r1, int64_t n, int64_t C, int64_t K) {
  const int64_t row_tiles = (r1 - r0 + kTileRows - 1) / kTileRows;
  const int64_t col_tiles = (n - r0 + kTileCols - 1) / kTileCols;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < row_tiles * col_tiles; ++t) {
    const int64_t i0 = r0 + (t / col_tiles) * kTileRows, i1 = std::min(r1, i0 + kTileRows);
    const int64_t j0 = r0 + (t % col_tiles) * kTileCols, j1 = std::min(n, j0 + kTileCols);
    if (j1 <= i0) continue;  // entirely below the diagonal: written as the mirror of another tile
    distance_tile(out, hh, se, se_t, d, d_t, diag_sq, rho, r0, n, C, K, i0, i1, j0, j1);
  }
}

template <typename T>
void curvature_moments(const T* embeddings, const double* q, const double* scale, int64_t n, int64_t C, int64_t D,
                       double* mean, double* second) {
  // Each task owns a slice of the outputs and runs over all rows in order: no reduction across
  // threads, so the sums do not depend on the thread count. Task 0 is the bias coordinates,
  // task 1 + b the weight columns [b kSlice, (b + 1) kSlice) of every class.
  constexpr int64_t kSlice = 32;
  const int64_t slices = (D + kSlice - 1) / kSlice;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task <= slices; ++task) {
    if (task == 0) {
      for (int64_t c = 0; c < C; ++c) mean[c] = second[c] = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const double s = scale ? scale[i] : 1.0;
        for (int64_t c = 0; c < C; ++c) {
          const double a = s * q[i * C + c];
          mean[c] += a;
          second[c] += a * a;
        }
      }
      continue;
    }
    const int64_t d0 = (task - 1) * kSlice, w = std::min(D, d0 + kSlice) - d0;
    std::vector<double> m1(C * kSlice, 0.0), m2(C * kSlice, 0.0);
    double h2[kSlice], h4[kSlice];
    for (int64_t i = 0; i < n; ++i) {
      const T* h = embeddings + i * D + d0;
      for (int64_t dd = 0; dd < w; ++dd) {
        h2[dd] = static_cast<double>(h[dd]) * static_cast<double>(h[dd]);
        h4[dd] = h2[dd] * h2[dd];
      }
      const double s = scale ? scale[i] : 1.0;
      for (int64_t c = 0; c < C; ++c) {
        const double a = s * q[i * C + c], a2 = a * a;
        double* m1c = m1.data() + c * kSlice;
        double* m2c = m2.data() + c * kSlice;
        for (int64_t dd = 0; dd < w; ++dd) {
          m1c[dd] += a * h2[dd];
          m2c[dd] += a2 * h4[dd];
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t dd = 0; dd < w; ++dd) {
        mean[C + c * D + d0 + dd] = m1[c * kSlice + dd];
        second[C + c * D + d0 + dd] = m2[c * kSlice + dd];
      }
    }
  }
  for (int64_t p = 0; p < C * (D + 1); ++p) {
    mean[p] /= static_cast<double>(n);
    second[p] /= static_cast<double>(n);
  }
}

template <typename T>
void hessian_diag_coords(const T* embeddings, const T* q, const int64_t* coords, const T* scale,
                         int64_t n, int64_t C, int64_t D, int64_t K, T* out, T* out_t) {
  // Coordinate c < C is the bias of class c; C + c D + d is weight[c, d].
  std::vector<int64_t> cls(K), dim(K);
  std::vector<char> is_bias(K);
  for (int64_t k = 0; k < K; ++k) {
    is_bias[k] = coords[k] < C;
    const int64_t w = is_bias[k] ? 0 : coords[k] - C;
    cls[k] = is_bias[k] ? coords[k] : w / D;
    dim[k] = w % D;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T* h = embeddings + i * D;
    const T* qi = q + i * C;
    for (int64_t k = 0; k < K; ++k) {
      const T hd = h[dim[k]];
      const T h2 = is_bias[k] ? T(1) : hd * hd;
      T v = qi[cls[k]] * h2;
      if (scale) v *= scale[i];
      if (out) out[i * K + k] = v;
      if (out_t) out_t[k * n + i] = v;
    }
  }
}

namespace {

// One tile: rows [i0, i1) of a against columns [j0, j1) of b_t. The inner loop runs over
// contiguous columns of b_t, so it vectorises without reassociating any sum: each out_ij is
// summed over k in order.
template <typename T>
void l1_tile(const T* a, const T* b_t, int64_t m, int64_t K, bool mirror, int64_t i0, int64_t i1, int64_t j0,
             int64_t j1, T* out) {
  T acc[kTileCols];
  const int64_t w = j1 - j0;
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t jj = 0; jj < w; ++jj) acc[jj] = T(0);
    const T* ai = a + i * K;
    for (int64_t k = 0; k < K; ++k) {
      const T aik = ai[k];
      const T* bk = b_t + k * m + j0;
      for (int64_t jj = 0; jj < w; ++jj) acc[jj] += std::abs(aik - bk[jj]);
    }
    std::copy(acc, acc + w, out + i * m + j0);
    if (mirror) {  // out_ji = out_ij, for the tiles strictly above the diagonal
      for (int64_t jj = 0; jj < w; ++jj) out[(j0 + jj) * m + i] = acc[jj];
    }
  }
}

}  // namespace

template <typename T>
void pairwise_l1(const T* a, int64_t n, const T* b_t, int64_t m, int64_t K, bool symmetric, T* out) {
  // Symmetric: square tiles on and above the diagonal; the ones strictly above are mirrored, the
  // diagonal ones computed whole (|x - y| = |y - x| exactly, so the result is exactly symmetric).
  const int64_t tr = symmetric ? kTileCols : kTileRows, tc = kTileCols;
  const int64_t row_tiles = (n + tr - 1) / tr, col_tiles = (m + tc - 1) / tc;
  std::vector<std::pair<int64_t, int64_t>> tiles;
  tiles.reserve(row_tiles * col_tiles);
  for (int64_t ti = 0; ti < row_tiles; ++ti)
    for (int64_t tj = symmetric ? ti : 0; tj < col_tiles; ++tj) tiles.emplace_back(ti, tj);
  const int64_t num = static_cast<int64_t>(tiles.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < num; ++t) {
    const int64_t i0 = tiles[t].first * tr, i1 = std::min(n, i0 + tr);
    const int64_t j0 = tiles[t].second * tc, j1 = std::min(m, j0 + tc);
    const bool mirror = symmetric && tiles[t].second > tiles[t].first;
    l1_tile(a, b_t, m, K, mirror, i0, i1, j0, j1, out);
  }
}

template <typename T>
void top_k_stable(const T* v, int64_t P, int64_t k, int64_t* out) {
  std::vector<int64_t> idx(P);
  std::iota(idx.begin(), idx.end(), int64_t(0));
  // decreasing value, NaN first, then lowest index
  auto before = [v](int64_t x, int64_t y) {
    const bool nx = std::isnan(v[x]), ny = std::isnan(v[y]);
    if (nx != ny) return nx;
    if (!nx && v[x] != v[y]) return v[x] > v[y];
    return x < y;
  };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), before);
  std::copy(idx.begin(), idx.begin() + k, out);
}

#define LCMAT_INSTANTIATE(T)                                                                     \
  template void distance_block<T>(T*, const T*, const T*, const T*, const T*, const T*, const T*, T, \
                                  int64_t, int64_t, int64_t, int64_t, int64_t);                   \
  template void curvature_moments<T>(const T*, const double*, const double*, int64_t, int64_t, int64_t, \
                                     double*, double*);                                            \
  template void hessian_diag_coords<T>(const T*, const T*, const int64_t*, const T*, int64_t,  \
                                       int64_t, int64_t, int64_t, T*, T*);                     \
  template void pairwise_l1<T>(const T*, int64_t, const T*, int64_t, int64_t, bool, T*);             \
  template void top_k_stable<T>(const T*, int64_t, int64_t, int64_t*);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cpu
}  // namespace lcmat
