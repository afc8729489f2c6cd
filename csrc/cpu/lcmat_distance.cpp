// The per-class LCMat-S distance block (lcmat/reference/lcmat_distance.py):
//     D_ij = || g_i - g_j ||_2 + rho * || d_i[K] - d_j[K] ||_1
// The GEMMs of the Gram identity run in ATen (csrc/lcmat_distance.cpp); here is the rest: the distance tiles
// (the Gram product, the L1 term, the square root, the mirror) computed in one pass, the curvature moments, gathering d_i[K], and the standalone tiled pairwise L1.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include "cpu_kernels.h"
#include "transpose8.h"

namespace lcmat {
namespace cpu {

namespace {

// Tiles of the n x n blocks: 32 rows by 128 columns; the K x 128 values of b_t (d_t) stay in L1/L2.
constexpr int64_t kTileRows = 32;
constexpr int64_t kTileCols = 128;

// sums[(i - i0) kTileCols + jj] = sum_k |a_ik - b_(j0 + jj)k| for rows [i0, i1) and w columns,
// b given transposed (b_t [K, m]). Every sum runs over k in order, in every variant below, so
// they agree to the last bit. The inner loop runs over contiguous columns of b_t and vectorises.
template <typename T>
void l1_rows(const T* a, const T* b_t, int64_t m, int64_t K, int64_t i0, int64_t i1, int64_t j0, int64_t w,
             T* sums) {
  for (int64_t i = i0; i < i1; ++i) {
    T* acc = sums + (i - i0) * kTileCols;
    for (int64_t jj = 0; jj < w; ++jj) acc[jj] = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const T aik = a[i * K + k];
      const T* bk = b_t + k * m + j0;
      for (int64_t jj = 0; jj < w; ++jj) acc[jj] += std::abs(aik - bk[jj]);
    }
  }
}

template <typename T>
void l1_tile(const T* a, const T* b_t, int64_t m, int64_t K, int64_t i0, int64_t i1, int64_t j0, int64_t w,
             T* sums) {
  l1_rows(a, b_t, m, K, i0, i1, j0, w, sums);
}

#if defined(__AVX512F__)
// float32 with AVX-512: rows x 32 columns of sums held in 2 x rows registers over the whole k loop,
// a - b as fma(b, -1, a) (the same single rounding). Eight rows share each load of b_t, which
// comes from L2, so eight rows a step halve the L2 traffic of four.
template <int kRows>
int64_t l1_rows_avx512(const float* a, const float* b_t, int64_t m, int64_t K, int64_t i, int64_t i1, int64_t i0,
                       int64_t j0, int64_t w32, float* sums) {
  const __m512 minus_one = _mm512_set1_ps(-1.0f);
  for (; i + kRows <= i1; i += kRows) {
    for (int64_t jj = 0; jj < w32; jj += 32) {
      __m512 acc[kRows][2];
      for (auto& row : acc) row[0] = row[1] = _mm512_setzero_ps();
      const float* b = b_t + j0 + jj;
      for (int64_t k = 0; k < K; ++k) {
        const __m512 b0 = _mm512_loadu_ps(b + k * m), b1 = _mm512_loadu_ps(b + k * m + 16);
        for (int r = 0; r < kRows; ++r) {
          const __m512 x = _mm512_set1_ps(a[(i + r) * K + k]);
          acc[r][0] = _mm512_add_ps(acc[r][0], _mm512_abs_ps(_mm512_fmadd_ps(b0, minus_one, x)));
          acc[r][1] = _mm512_add_ps(acc[r][1], _mm512_abs_ps(_mm512_fmadd_ps(b1, minus_one, x)));
        }
      }
      for (int r = 0; r < kRows; ++r) {
        _mm512_storeu_ps(sums + (i + r - i0) * kTileCols + jj, acc[r][0]);
        _mm512_storeu_ps(sums + (i + r - i0) * kTileCols + jj + 16, acc[r][1]);
      }
    }
  }
  return i;
}

template <>
void l1_tile<float>(const float* a, const float* b_t, int64_t m, int64_t K, int64_t i0, int64_t i1, int64_t j0,
                    int64_t w, float* sums) {
  const int64_t w32 = w / 32 * 32;
  int64_t i = l1_rows_avx512<8>(a, b_t, m, K, i0, i1, i0, j0, w32, sums);
  i = l1_rows_avx512<1>(a, b_t, m, K, i, i1, i0, j0, w32, sums);
  if (w32 < w) l1_rows(a, b_t, m, K, i0, i1, j0 + w32, w - w32, sums + w32);
}
#elif defined(__AVX2__) && defined(__FMA__)
// float32 with AVX2: 4 rows x 16 columns of sums held in eight registers over the whole k loop
// (l1_rows keeps them in memory: a load and a store per add). a - b is computed as
// fma(b, -1, a), the same single rounding, so that on cores with separate FMA and add pipes
// the subtractions and the additions run side by side.
template <>
void l1_tile<float>(const float* a, const float* b_t, int64_t m, int64_t K, int64_t i0, int64_t i1, int64_t j0,
                    int64_t w, float* sums) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 minus_one = _mm256_set1_ps(-1.0f);
  const int64_t w16 = w / 16 * 16;
  int64_t i = i0;
  for (; i + 4 <= i1; i += 4) {
    for (int64_t jj = 0; jj < w16; jj += 16) {
      __m256 acc[4][2];
      for (auto& row : acc) row[0] = row[1] = _mm256_setzero_ps();
      const float* b = b_t + j0 + jj;
      for (int64_t k = 0; k < K; ++k) {
        const __m256 b0 = _mm256_loadu_ps(b + k * m), b1 = _mm256_loadu_ps(b + k * m + 8);
        for (int r = 0; r < 4; ++r) {
          const __m256 x = _mm256_set1_ps(a[(i + r) * K + k]);
          acc[r][0] = _mm256_add_ps(acc[r][0], _mm256_and_ps(_mm256_fmadd_ps(b0, minus_one, x), abs_mask));
          acc[r][1] = _mm256_add_ps(acc[r][1], _mm256_and_ps(_mm256_fmadd_ps(b1, minus_one, x), abs_mask));
        }
      }
      for (int r = 0; r < 4; ++r) {
        _mm256_storeu_ps(sums + (i + r - i0) * kTileCols + jj, acc[r][0]);
        _mm256_storeu_ps(sums + (i + r - i0) * kTileCols + jj + 8, acc[r][1]);
      }
    }
    if (w16 < w) l1_rows(a, b_t, m, K, i, i + 4, j0 + w16, w - w16, sums + (i - i0) * kTileCols + w16);
  }
  if (i < i1) l1_rows(a, b_t, m, K, i, i1, j0, w, sums + (i - i0) * kTileCols);
}
#endif

// One tile of distance_block: rows [i0, i1) and columns [j0, j1). Every entry is computed from
// its inputs in L1 and written once; the tile's transpose goes to the rows below through a local
// copy, so both writes are contiguous. hh and ee null: no gradient term (diag_sq zero).
template <typename T>
void distance_tile(T* out, const T* hh, const T* ee, const T* d, const T* d_t, const T* diag_sq, T rho, int64_t r0,
                   int64_t n, int64_t K, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  T l1[kTileRows * kTileCols], value[kTileCols];
  T transposed[kTileCols * kTileRows];
  const int64_t w = j1 - j0, gram_cols = n - r0;
  if (K > 0) l1_tile(d, d_t, n, K, i0, i1, j0, w, l1);
  for (int64_t i = i0; i < i1; ++i) {
    // <g_i, g_j> = <s_i e_i, s_j e_j> (1 + <h_i, h_j>); ||g_i - g_j||^2 from the diagonal.
    const int64_t at = (i - r0) * gram_cols + (j0 - r0);
    const T* hh_row = hh ? hh + at : nullptr;
    const T* ee_row = ee ? ee + at : nullptr;
    const T* l1_row = l1 + (i - i0) * kTileCols;
    const T di = diag_sq[i];
    for (int64_t jj = 0; jj < w; ++jj) {
      const T gram = hh_row ? ee_row[jj] * (T(1) + hh_row[jj]) : T(0);
      const T d2 = di + diag_sq[j0 + jj] - T(2) * gram;
      value[jj] = std::sqrt(d2 > T(0) ? d2 : T(0)) + (K > 0 ? rho * l1_row[jj] : T(0));
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

// ---- Gram products: float, AVX-512 ---------------------------------------------------------
// a a^T for distance_blocks, instead of ATen's GEMM where the build has AVX-512 (MKL keeps to
// 256-bit kernels on AMD CPUs, and computes the whole product where only its upper triangle is
// needed). a is packed once into k-major panels of 8 rows (the left operand) and
// of 32 rows (the right one, zero-padded); an 8 x 32 tile of sums lives in 16 registers over the
// whole k loop, so every entry is one in-order fused multiply-add chain over k, whatever the
// thread count.
constexpr int64_t kGramRows = 8, kGramCols = 32;

int64_t gram_panel_rows(int64_t n, int64_t R) { return (n + R - 1) / R * R; }

bool built_with_avx512() {
#if defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}

int64_t gram_panels_size(int64_t n, int64_t D) {
  return (gram_panel_rows(n, kGramRows) + gram_panel_rows(n, kGramCols)) * D;
}

namespace {
// out[p][k][r] = a[p R + r][k] for panels of R rows, zero past row n.
// dst[k][r] = a[r][k] for the `rows` rows of one panel of R, zero past them.
void pack_panel(const float* a, int64_t rows, int64_t D, int64_t R, float* dst) {
#if defined(__AVX2__)
  if (rows == R && R % 8 == 0) {  // a full panel: 8 x 8 blocks transposed in registers
    const int64_t D8 = D / 8 * 8;
    for (int64_t r0 = 0; r0 < R; r0 += 8) {
      for (int64_t k0 = 0; k0 < D8; k0 += 8) {
        __m256 x[8];
        for (int i = 0; i < 8; ++i) x[i] = _mm256_loadu_ps(a + (r0 + i) * D + k0);
        transpose8(x);
        for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + (k0 + j) * R + r0, x[j]);
      }
      for (int64_t r = r0; r < r0 + 8; ++r)
        for (int64_t k = D8; k < D; ++k) dst[k * R + r] = a[r * D + k];
    }
    return;
  }
#endif
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < D; ++k) dst[k * R + r] = r < rows ? a[r * D + k] : 0.0f;
}

void pack_panels(const float* a, int64_t n, int64_t D, int64_t R, float* out) {
  const int64_t panels = (n + R - 1) / R;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < panels; ++p) pack_panel(a + p * R * D, std::min(R, n - p * R), D, R, out + p * R * D);
}

#if defined(__AVX512F__)
// out[r ld + c] = sum_k left[k][r] right[k][c], r < 8, c < 32.
inline void gram_tile(const float* left, const float* right, int64_t D, float* out, int64_t ld) {
  __m512 acc[kGramRows][2];
  for (auto& row : acc) row[0] = row[1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < D; ++k) {
    const __m512 b0 = _mm512_loadu_ps(right + k * kGramCols), b1 = _mm512_loadu_ps(right + k * kGramCols + 16);
    for (int r = 0; r < kGramRows; ++r) {
      const __m512 x = _mm512_set1_ps(left[k * kGramRows + r]);
      acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < kGramRows; ++r) {
    _mm512_storeu_ps(out + r * ld, acc[r][0]);
    _mm512_storeu_ps(out + r * ld + 16, acc[r][1]);
  }
}
#endif
}  // namespace

void gram_pack(const float* a, int64_t n, int64_t D, float* panels) {
  pack_panels(a, n, D, kGramRows, panels);
  pack_panels(a, n, D, kGramCols, panels + gram_panel_rows(n, kGramRows) * D);
}

int64_t right_panels_size(int64_t m, int64_t D) { return gram_panel_rows(m, kGramCols) * D; }

void pack_right_panels(const float* b, int64_t m, int64_t D, float* panels) {
  pack_panels(b, m, D, kGramCols, panels);
}

void matmul_abt(const float* a, int64_t n, const float* right, int64_t m, int64_t D, float* out) {
#if defined(__AVX512F__)
  const int64_t blocks = (n + kGramRows - 1) / kGramRows, panels = (m + kGramCols - 1) / kGramCols;
#pragma omp parallel
  {
    std::vector<float> left(kGramRows * D);
    alignas(64) float tile[kGramRows * kGramCols];
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i0 = b * kGramRows, rows = std::min(n, i0 + kGramRows) - i0;
      pack_panel(a + i0 * D, rows, D, kGramRows, left.data());
      for (int64_t p = 0; p < panels; ++p) {
        const int64_t j0 = p * kGramCols, w = std::min(m, j0 + kGramCols) - j0;
        float* dst = out + i0 * m + j0;
        if (rows == kGramRows && w == kGramCols) {
          gram_tile(left.data(), right + p * kGramCols * D, D, dst, m);
          continue;
        }
        gram_tile(left.data(), right + p * kGramCols * D, D, tile, kGramCols);
        for (int64_t r = 0; r < rows; ++r) std::copy(tile + r * kGramCols, tile + r * kGramCols + w, dst + r * m);
      }
    }
  }
#else
  (void)a, (void)n, (void)right, (void)m, (void)D, (void)out;
#endif
}

void gram_upper(const float* panels, int64_t n, int64_t D, int64_t r0, int64_t r1, float* gram) {
#if defined(__AVX512F__)
  const float* left = panels;
  const float* right = panels + gram_panel_rows(n, kGramRows) * D;
  const int64_t ld = n - r0, b0 = r0 / kGramRows, b1 = (r1 + kGramRows - 1) / kGramRows;
  const int64_t p0 = r0 / kGramCols, p1 = (n + kGramCols - 1) / kGramCols;
  // The columns distance_tile reads for row i: from the start of the kTileCols-wide tile that
  // holds the first row of i's kTileRows-high tile (r0 is a multiple of both).
  auto first_column = [&](int64_t i) {
    return r0 + ((i - r0) / kTileRows * kTileRows) / kTileCols * kTileCols;
  };
  // Right panel outer (it stays in L2 while the rows' left panels pass by).
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t p = p0; p < p1; ++p) {
    alignas(64) float tile[kGramRows * kGramCols];
    const int64_t j0 = p * kGramCols, w = std::min(n, j0 + kGramCols) - j0;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kGramRows, rows = std::min(r1, i0 + kGramRows) - i0;
      if (first_column(i0) >= j0 + kGramCols) continue;
      float* dst = gram + (i0 - r0) * ld + (j0 - r0);
      if (rows == kGramRows && w == kGramCols) {  // straight from the registers
        gram_tile(left + b * kGramRows * D, right + p * kGramCols * D, D, dst, ld);
        continue;
      }
      gram_tile(left + b * kGramRows * D, right + p * kGramCols * D, D, tile, kGramCols);
      for (int64_t r = 0; r < rows; ++r) std::copy(tile + r * kGramCols, tile + r * kGramCols + w, dst + r * ld);
    }
  }
#else
  (void)panels, (void)n, (void)D, (void)r0, (void)r1, (void)gram;
#endif
}

template <typename T>
void distance_block(T* out, const T* hh, const T* ee, const T* d, const T* d_t, const T* diag_sq, T rho, int64_t r0,
                    int64_t r1, int64_t n, int64_t K) {
  const int64_t row_tiles = (r1 - r0 + kTileRows - 1) / kTileRows;
  const int64_t col_tiles = (n - r0 + kTileCols - 1) / kTileCols;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < row_tiles * col_tiles; ++t) {
    const int64_t i0 = r0 + (t / col_tiles) * kTileRows, i1 = std::min(r1, i0 + kTileRows);
    const int64_t j0 = r0 + (t % col_tiles) * kTileCols, j1 = std::min(n, j0 + kTileCols);
    if (j1 <= i0) continue;  // entirely below the diagonal: written as the mirror of another tile
    distance_tile(out, hh, ee, d, d_t, diag_sq, rho, r0, n, K, i0, i1, j0, j1);
  }
}

namespace {

#if defined(__AVX512F__)
// The weight coordinates' moments, register-blocked: sum_i a_ic h_id^2 and sum_i a_ic^2 h_id^4
// with a = s q and a^2 given transposed (a_t, a2_t [C, n]). A task is 16 columns d of up to 64
// classes; rows go in blocks of 256 whose h^2 and h^4 (zero-padded to 16 columns) sit in an
// L1-resident buffer; four classes at a time keep their 4 x 2 x 16 sums in 16 registers over a
// row block: per row 4 loads and 8 broadcasts for 16 FMAs. Every sum runs over the rows in order.
template <typename T>
void weight_moments_avx512(const T* embeddings, const double* a_t, const double* a2_t, int64_t n, int64_t C,
                           int64_t D, double* m1, double* m2) {
  constexpr int64_t kSlice = 16, kRows = 256, kClasses = 64, kGroup = 4;
  const int64_t slices = (D + kSlice - 1) / kSlice, chunks = (C + kClasses - 1) / kClasses;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < slices * chunks; ++task) {
    const int64_t d0 = (task / chunks) * kSlice, w = std::min(D, d0 + kSlice) - d0;
    const int64_t c0 = (task % chunks) * kClasses, c1 = std::min(C, c0 + kClasses);
    std::vector<double> buffers(2 * kRows * kSlice + 2 * kClasses * kSlice, 0.0);  // heap, not an OpenMP stack
    double* h2 = buffers.data();
    double* h4 = h2 + kRows * kSlice;
    double* acc1 = h4 + kRows * kSlice;
    double* acc2 = acc1 + kClasses * kSlice;
    for (int64_t ib = 0; ib < n; ib += kRows) {
      const int64_t rows = std::min(kRows, n - ib);
      for (int64_t r = 0; r < rows; ++r) {
        const T* h = embeddings + (ib + r) * D + d0;
        if (w < kSlice) {  // the last, narrower slice: zeros past w
          for (int64_t dd = 0; dd < kSlice; ++dd) {
            const double x = dd < w ? static_cast<double>(h[dd]) : 0.0;
            h2[r * kSlice + dd] = x * x;
            h4[r * kSlice + dd] = (x * x) * (x * x);
          }
          continue;
        }
        for (int v = 0; v < 2; ++v) {
          __m512d x;
          if constexpr (std::is_same_v<T, float>) {
            x = _mm512_cvtps_pd(_mm256_loadu_ps(h + 8 * v));
          } else {
            x = _mm512_loadu_pd(h + 8 * v);
          }
          const __m512d x2 = _mm512_mul_pd(x, x);
          _mm512_storeu_pd(h2 + r * kSlice + 8 * v, x2);
          _mm512_storeu_pd(h4 + r * kSlice + 8 * v, _mm512_mul_pd(x2, x2));
        }
      }
      for (int64_t c = c0; c < c1; c += kGroup) {
        // a group past c1 repeats the last class (its sums are computed, never stored)
        const double* a[kGroup];
        const double* a2[kGroup];
        __m512d s1[kGroup][2], s2[kGroup][2];
        for (int g = 0; g < kGroup; ++g) {
          const int64_t cg = std::min(c + g, c1 - 1);
          a[g] = a_t + cg * n + ib;
          a2[g] = a2_t + cg * n + ib;
          for (int v = 0; v < 2; ++v) {
            s1[g][v] = _mm512_loadu_pd(acc1 + (cg - c0) * kSlice + 8 * v);
            s2[g][v] = _mm512_loadu_pd(acc2 + (cg - c0) * kSlice + 8 * v);
          }
        }
        for (int64_t r = 0; r < rows; ++r) {
          __m512d g2a = _mm512_loadu_pd(h2 + r * kSlice), g2b = _mm512_loadu_pd(h2 + r * kSlice + 8);
          __m512d g4a = _mm512_loadu_pd(h4 + r * kSlice), g4b = _mm512_loadu_pd(h4 + r * kSlice + 8);
          // Keep the four in registers: GCC would otherwise fold each load into all four FMAs that
          // use it, and the loop would be bound by 24 loads a row instead of 12.
          __asm__("" : "+v"(g2a), "+v"(g2b), "+v"(g4a), "+v"(g4b));
          for (int g = 0; g < kGroup; ++g) {
            const __m512d x = _mm512_set1_pd(a[g][r]), y = _mm512_set1_pd(a2[g][r]);
            s1[g][0] = _mm512_fmadd_pd(x, g2a, s1[g][0]);
            s1[g][1] = _mm512_fmadd_pd(x, g2b, s1[g][1]);
            s2[g][0] = _mm512_fmadd_pd(y, g4a, s2[g][0]);
            s2[g][1] = _mm512_fmadd_pd(y, g4b, s2[g][1]);
          }
        }
        for (int g = 0; g < kGroup && c + g < c1; ++g)
          for (int v = 0; v < 2; ++v) {
            _mm512_storeu_pd(acc1 + (c + g - c0) * kSlice + 8 * v, s1[g][v]);
            _mm512_storeu_pd(acc2 + (c + g - c0) * kSlice + 8 * v, s2[g][v]);
          }
      }
    }
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t dd = 0; dd < w; ++dd) {
        m1[c * D + d0 + dd] = acc1[(c - c0) * kSlice + dd];
        m2[c * D + d0 + dd] = acc2[(c - c0) * kSlice + dd];
      }
  }
}
#endif

}  // namespace

int64_t curvature_moments_workspace(int64_t n, int64_t C) {
#if defined(__AVX512F__)
  return 2 * n * C;
#else
  (void)n, (void)C;
  return 0;
#endif
}

template <typename T, typename Q>
void curvature_moments(const T* embeddings, const Q* q, const double* scale, int64_t n, int64_t C, int64_t D,
                       double* workspace, double* mean, double* second) {
#if defined(__AVX512F__)
  // a = s q and a^2 transposed, [C, n] each, in the workspace; the bias moments are their rows'
  // sums, in row order. (16 rows at a time: a row-by-row transpose writes with a stride of n.)
  double* a_t = workspace;
  double* a2_t = workspace + n * C;
  constexpr int64_t kRowBlock = 16;
  for (int64_t i0 = 0; i0 < n; i0 += kRowBlock) {
    const int64_t i1 = std::min(n, i0 + kRowBlock);
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t i = i0; i < i1; ++i) {
        const double v = (scale ? scale[i] : 1.0) * static_cast<double>(q[i * C + c]);
        a_t[c * n + i] = v;
        a2_t[c * n + i] = v * v;
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    double m = 0.0, m2 = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      m += a_t[c * n + i];
      m2 += a2_t[c * n + i];
    }
    mean[c] = m;
    second[c] = m2;
  }
  weight_moments_avx512(embeddings, a_t, a2_t, n, C, D, mean + C, second + C);
#else
  (void)workspace;
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
          const double a = s * static_cast<double>(q[i * C + c]);
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
        const double a = s * static_cast<double>(q[i * C + c]), a2 = a * a;
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
#endif
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

template <typename T>
void pairwise_l1(const T* a, int64_t n, const T* b_t, int64_t m, int64_t K, bool symmetric, T* out) {
  if (symmetric) {  // the upper triangle, mirrored: the distance block with no gradient term
    const std::vector<T> zeros(n, T(0));
    distance_block(out, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), a, b_t, zeros.data(), T(1),
                   0, n, n, K);
    return;
  }
  const int64_t row_tiles = (n + kTileRows - 1) / kTileRows, col_tiles = (m + kTileCols - 1) / kTileCols;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < row_tiles * col_tiles; ++t) {
    const int64_t i0 = (t / col_tiles) * kTileRows, i1 = std::min(n, i0 + kTileRows);
    const int64_t j0 = (t % col_tiles) * kTileCols, w = std::min(m, j0 + kTileCols) - j0;
    T sums[kTileRows * kTileCols];
    l1_tile(a, b_t, m, K, i0, i1, j0, w, sums);
    for (int64_t i = i0; i < i1; ++i) std::copy(sums + (i - i0) * kTileCols, sums + (i - i0) * kTileCols + w, out + i * m + j0);
  }
}

#define LCMAT_INSTANTIATE(T)                                                                     \
  template void distance_block<T>(T*, const T*, const T*, const T*, const T*, const T*, T, int64_t,  \
                                  int64_t, int64_t, int64_t);                                     \
  template void curvature_moments<T, float>(const T*, const float*, const double*, int64_t, int64_t, int64_t, \
                                            double*, double*, double*);                                      \
  template void curvature_moments<T, double>(const T*, const double*, const double*, int64_t, int64_t, int64_t, \
                                             double*, double*, double*);                                       \
  template void hessian_diag_coords<T>(const T*, const T*, const int64_t*, const T*, int64_t,  \
                                       int64_t, int64_t, int64_t, T*, T*);                     \
  template void pairwise_l1<T>(const T*, int64_t, const T*, int64_t, int64_t, bool, T*);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cpu
}  // namespace lcmat
