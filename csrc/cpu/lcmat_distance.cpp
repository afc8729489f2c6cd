// The per-class LCMat-S distance block (lcmat/reference/lcmat_distance.py):
//     D_ij = || g_i - g_j ||_2 + rho * || d_i[K] - d_j[K] ||_1
// The GEMMs of the Gram identity run in ATen (csrc/ops.cpp); here are the memory-bound parts:
// turning Gram rows into distances in place, gathering d_i[K], and the tiled pairwise L1.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu_kernels.h"

namespace lcmat {
namespace cpu {

template <typename T>
void gram_block_to_distance(T* out, const T* ee, const T* hh, const T* diag_sq, int64_t r0, int64_t r1,
                            int64_t n) {
  const int64_t w = n - r0;  // columns r0 .. n of the Gram tiles
#pragma omp parallel for schedule(static)
  for (int64_t i = r0; i < r1; ++i) {
    T* row = out + i * n;
    const T* e_row = ee + (i - r0) * w - r0;  // e_row[j] = <s_i e_i, s_j e_j>
    const T* h_row = hh + (i - r0) * w - r0;
    const T di = diag_sq[i];
    for (int64_t j = i + 1; j < n; ++j) {
      // <g_i, g_j> = <s_i e_i, s_j e_j> (1 + <h_i, h_j>); ||g_i - g_j||^2 from the diagonal.
      const T gram = e_row[j] * (T(1) + h_row[j]);
      const T d2 = di + diag_sq[j] - T(2) * gram;
      row[j] = std::sqrt(d2 > T(0) ? d2 : T(0));
    }
    row[i] = T(0);
  }
  // mirror the block's upper triangle into the columns r0 .. r1 of the rows below it
#pragma omp parallel for schedule(static)
  for (int64_t j = r0 + 1; j < n; ++j) {
    const int64_t ie = std::min(r1, j);
    for (int64_t i = r0; i < ie; ++i) out[j * n + i] = out[i * n + j];
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

constexpr int64_t kTileRows = 32;   // rows of a per tile
constexpr int64_t kTileCols = 128;  // columns of b per tile: K x 128 values of b_t stay in L1/L2

// One tile: rows [i0, i1) of a against columns [j0, j1) of b_t. The inner loop runs over
// contiguous columns of b_t, so it vectorises without reassociating any sum: each out_ij is
// summed over k in order.
template <typename T>
void l1_tile(const T* a, const T* b_t, int64_t n, int64_t m, int64_t K, T alpha, bool accumulate,
             bool mirror, int64_t i0, int64_t i1, int64_t j0, int64_t j1, T* out) {
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
    T* row = out + i * m + j0;
    if (accumulate) {
      for (int64_t jj = 0; jj < w; ++jj) row[jj] += alpha * acc[jj];
    } else {
      for (int64_t jj = 0; jj < w; ++jj) row[jj] = alpha * acc[jj];
    }
    if (mirror) {  // out_ji = out_ij, for the tiles strictly above the diagonal
      for (int64_t jj = 0; jj < w; ++jj) {
        T& dst = out[(j0 + jj) * m + i];
        dst = accumulate ? dst + alpha * acc[jj] : alpha * acc[jj];
      }
    }
  }
  (void)n;
}

}  // namespace

template <typename T>
void pairwise_l1(const T* a, int64_t n, const T* b_t, int64_t m, int64_t K, T alpha,
                 bool accumulate, bool symmetric, T* out) {
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
    l1_tile(a, b_t, n, m, K, alpha, accumulate, mirror, i0, i1, j0, j1, out);
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
  template void gram_block_to_distance<T>(T*, const T*, const T*, const T*, int64_t, int64_t,   \
                                          int64_t);                                             \
  template void hessian_diag_coords<T>(const T*, const T*, const int64_t*, const T*, int64_t,  \
                                       int64_t, int64_t, int64_t, T*, T*);                     \
  template void pairwise_l1<T>(const T*, int64_t, const T*, int64_t, int64_t, T, bool, bool, T*); \
  template void top_k_stable<T>(const T*, int64_t, int64_t, int64_t*);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cpu
}  // namespace lcmat
