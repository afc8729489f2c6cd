// Greedy facility location (lcmat/reference/facility_location.py):
//     F(S) = sum_i max(0, max_{j in S} (L - D_ij))
// gain_j = sum_i max(0, sim_ij - m_i), sim = max(0, L - D), m_i the current coverage of row i.
//
// Exactness of the lazy greedy. Each gain is summed by `Columns::gain` in one fixed order (eight
// lanes, then the lanes in order), each term max(0, sim - m) is non-increasing in m and rounding
// is monotone, so a gain computed later (larger coverage) is never above one computed earlier:
// stale gains are exact upper bounds in floating point too, and the lazy greedy makes the naive
// greedy's picks, lowest index first among equal gains.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <queue>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu_kernels.h"
#include "transpose8.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lcmat {
namespace cpu {

namespace {

// Heap entry: larger gain first, then lower index. `step`: the greedy step whose coverage the
// gain was computed with (fresh at that step, an upper bound after it).
struct Candidate {
  double gain;
  int64_t index;
  int64_t step;
  bool operator<(const Candidate& other) const {  // "pops later than"
    if (gain != other.gain) return gain < other.gain;
    return index > other.index;
  }
};

}  // namespace

// Is the n x n block exactly symmetric? Then a column of sim is a row of max(0, L - D), read in
// place; otherwise sim^T is built once. Compared in 64 x 64 tiles: the tile below the diagonal is
// copied transposed into a local buffer (reading rows), then compared row against row, so no
// loop reads memory with a stride of n. `!=` throughout: a NaN
// entry makes the block non-symmetric, -0 equals +0. When the block is symmetric, *largest is its
// largest entry (read on the way: every entry of the upper triangle passes through the check), so
// the paper mode's L needs no pass of its own.
template <typename T>
bool exactly_symmetric_tiled(const T* dist, int64_t n, T* largest) {
  constexpr int64_t B = 64;
  const int64_t tiles = (n + B - 1) / B;
  bool symmetric = true;
  T top = -std::numeric_limits<T>::infinity();
#pragma omp parallel for schedule(dynamic, 1) reduction(&& : symmetric) reduction(max : top)
  for (int64_t ti = 0; ti < tiles; ++ti) {
    T lower_t[B * B];
    bool ok = true;
    const int64_t ib = ti * B, ie = std::min(n, ib + B);
    for (int64_t jb = ib; jb < n && ok; jb += B) {
      const int64_t je = std::min(n, jb + B);
      for (int64_t j = jb; j < je; ++j)
        for (int64_t i = ib; i < ie; ++i) lower_t[(i - ib) * B + (j - jb)] = dist[j * n + i];
      bool differ = false;
      for (int64_t i = ib; i < ie; ++i) {
        const T* row = dist + i * n + jb;
        const T* other = lower_t + (i - ib) * B;
        for (int64_t j = 0; j < je - jb; ++j) {
          differ |= row[j] != other[j];
          top = row[j] > top ? row[j] : top;
        }
      }
      ok = !differ;
    }
    symmetric = symmetric && ok;
  }
  *largest = top;
  return symmetric;
}

template <typename T>
bool exactly_symmetric(const T* dist, int64_t n, int64_t m, T* largest) {
  return n == m && exactly_symmetric_tiled(dist, n, largest);
}

#if defined(__AVX2__)
// float: 8 x 8 blocks of the upper triangle against the register-transposed mirror block (no copy
// through memory, unlike the tiled check); the last n mod 8 rows and columns entry by entry.
// NEQ_UQ is `!=` (true on NaN).
template <>
bool exactly_symmetric<float>(const float* dist, int64_t n, int64_t m, float* largest) {
  if (n != m) return false;
  const int64_t blocks = n / 8, n8 = blocks * 8;
  bool symmetric = true;
  float top = -std::numeric_limits<float>::infinity();
#pragma omp parallel for schedule(dynamic, 4) reduction(&& : symmetric) reduction(max : top)
  for (int64_t bi = 0; bi < blocks; ++bi) {
    __m256 differ = _mm256_setzero_ps();
    __m256 block_top = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t bj = bi; bj < blocks; ++bj) {
      __m256 r[8];
      for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(dist + (bj * 8 + k) * n + bi * 8);
      transpose8(r);
      for (int k = 0; k < 8; ++k) {
        const __m256 upper = _mm256_loadu_ps(dist + (bi * 8 + k) * n + bj * 8);
        differ = _mm256_or_ps(differ, _mm256_cmp_ps(upper, r[k], _CMP_NEQ_UQ));
        block_top = _mm256_max_ps(block_top, upper);
      }
    }
    bool ok = _mm256_movemask_ps(differ) == 0;
    float lane[8];
    _mm256_storeu_ps(lane, block_top);
    for (int l = 0; l < 8; ++l) top = lane[l] > top ? lane[l] : top;
    for (int64_t i = bi * 8; i < bi * 8 + 8 && ok; ++i)
      for (int64_t j = n8; j < n; ++j) {
        ok = ok && !(dist[i * n + j] != dist[j * n + i]);
        top = dist[i * n + j] > top ? dist[i * n + j] : top;
      }
    symmetric = symmetric && ok;
  }
  for (int64_t i = n8; i < n && symmetric; ++i)
    for (int64_t j = i; j < n; ++j) {
      symmetric = symmetric && !(dist[i * n + j] != dist[j * n + i]);
      top = dist[i * n + j] > top ? dist[i * n + j] : top;
    }
  *largest = top;
  return symmetric;
}
#endif

// sim = max(0, L - D) for one entry
template <typename T>
inline T similarity(T L, T d) {
  const T s = L - d;
  return s > T(0) ? s : T(0);
}

// Column j of sim, as a contiguous row: either sim^T's row j, or row j of a symmetric D turned
// into similarities on the fly. gain() and cover() give the same values either way.
template <typename T>
struct Columns {
  const T* dist;  // symmetric case: D itself
  std::vector<T> sim_t;  // otherwise: sim^T [m, n]
  int64_t n;
  T L;
  bool symmetric;

  const T* column(int64_t j) const { return symmetric ? dist + j * n : sim_t.data() + j * n; }

  // buf_t = max(0, sim - cov_t) for the w entries col_t of a column and their coverages cov_t.
  // A plain loop that vectorises.
  void excess(const T* __restrict col, const T* __restrict cov, int64_t w, T* __restrict buf) const {
    const T Lv = L;
    if (symmetric) {
      for (int64_t t = 0; t < w; ++t) {
        const T d = similarity(Lv, col[t]) - cov[t];
        buf[t] = d > T(0) ? d : T(0);
      }
    } else {
      for (int64_t t = 0; t < w; ++t) {
        const T d = col[t] - cov[t];
        buf[t] = d > T(0) ? d : T(0);
      }
    }
  }

  // sum_i max(0, sim_ij - cov_i) in a fixed order: element i goes to lane i mod 8, summed in
  // float64, then the lanes in order. Computed a chunk at a time (the excesses, then their lane
  // sums: two loops the compiler vectorises; one fused loop it does not).
  double gain(int64_t j, const T* cov) const {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) return gain_avx512(j, cov);
#endif
    constexpr int kLanes = 8;
    constexpr int64_t kChunk = 256;
    double lane[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    T buf[kChunk];
    const T* col = column(j);
    for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
      const int64_t w = std::min(kChunk, n - c0);
      excess(col + c0, cov + c0, w, buf);
      const int64_t full = w / kLanes * kLanes;
      for (int64_t t = 0; t < full; t += kLanes)
        for (int l = 0; l < kLanes; ++l) lane[l] += static_cast<double>(buf[t + l]);
      for (int64_t t = full; t < w; ++t) lane[t - full] += static_cast<double>(buf[t]);
    }
    double total = 0;
    for (int l = 0; l < kLanes; ++l) total += lane[l];
    return total;
  }

#if defined(__AVX512F__)
  // float: the same sums in the same order (lane i mod 8 in float64, then the lanes in order),
  // 16 rows a step in registers: the eight lanes are the eight float64 slots of one register, and
  // the low and high halves of 16 excesses are rows t..t+7 and t+8..t+15. max_ps(x, 0) is the
  // scalar x > 0 ? x : 0, NaN and -0 included. With this, reading the columns from memory bounds
  // the greedy.
  double gain_avx512(int64_t j, const float* cov) const {
    const float* col = column(j);
    const __m512 zero = _mm512_setzero_ps(), Lv = _mm512_set1_ps(L);
    __m512d acc = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      __m512 sim = _mm512_loadu_ps(col + i);
      if (symmetric) sim = _mm512_max_ps(_mm512_sub_ps(Lv, sim), zero);
      const __m512 x = _mm512_max_ps(_mm512_sub_ps(sim, _mm512_loadu_ps(cov + i)), zero);
      acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(x)));
      acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1))));
    }
    alignas(64) double lane[8];
    _mm512_store_pd(lane, acc);
    float buf[16];
    excess(col + i, cov + i, n - i, buf);
    for (int64_t t = 0; t < n - i; ++t) lane[t % 8] += static_cast<double>(buf[t]);  // row i + t: lane t mod 8
    double total = 0;
    for (int l = 0; l < 8; ++l) total += lane[l];
    return total;
  }
#endif

  // cov_i = max(cov_i, sim_ij)
  void cover(int64_t j, T* __restrict cov) const {
    const T* __restrict col = column(j);
    const T Lv = L;
    if (symmetric) {
      for (int64_t i = 0; i < n; ++i) {
        const T s = similarity(Lv, col[i]);
        cov[i] = cov[i] < s ? s : cov[i];
      }
    } else {
      for (int64_t i = 0; i < n; ++i) cov[i] = cov[i] < col[i] ? col[i] : cov[i];
    }
  }
};

// The largest entry (NaN ignored), in eight lanes so that the loop vectorises.
template <typename T>
T max_entry(const T* x, int64_t count) {
  constexpr int kLanes = 8;
  T lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = -std::numeric_limits<T>::infinity();
  const int64_t full = count / kLanes * kLanes;
  for (int64_t t = 0; t < full; t += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] = x[t + l] > lane[l] ? x[t + l] : lane[l];
  for (int64_t t = full; t < count; ++t) lane[0] = x[t] > lane[0] ? x[t] : lane[0];
  T best = lane[0];
  for (int l = 1; l < kLanes; ++l) best = lane[l] > best ? lane[l] : best;
  return best;
}

template <typename T>
void facility_location_greedy(const T* dist, int64_t n, int64_t m, int64_t k, bool has_L, double L,
                              bool lazy, int64_t* picks, T* objective, T* weights) {
  if (k == 0) return;
  // L defaults to the largest distance (the paper mode); it is cast to T before use, as in the
  // reference, so that sim = max(0, L - D) is computed in T.
  T largest;
  const bool symmetric = exactly_symmetric(dist, n, m, &largest);
  T Lt;
  if (has_L) {
    Lt = static_cast<T>(L);
  } else if (symmetric) {
    Lt = largest;
  } else {
    Lt = -std::numeric_limits<T>::infinity();
#pragma omp parallel for schedule(static) reduction(max : Lt)
    for (int64_t i = 0; i < n; ++i) {
      const T row_max = max_entry(dist + i * m, m);
      Lt = row_max > Lt ? row_max : Lt;
    }
  }
  Columns<T> cols{dist, {}, n, Lt, symmetric};
  if (!cols.symmetric) {  // sim^T [m, n], built in cache-sized blocks
    cols.sim_t.resize(static_cast<size_t>(m) * n);
    constexpr int64_t B = 64;
    const int64_t row_blocks = (n + B - 1) / B, col_blocks = (m + B - 1) / B;
#pragma omp parallel for schedule(static)
    for (int64_t blk = 0; blk < row_blocks * col_blocks; ++blk) {
      const int64_t ib = (blk / col_blocks) * B, jb = (blk % col_blocks) * B;
      const int64_t ie = std::min(n, ib + B), je = std::min(m, jb + B);
      for (int64_t i = ib; i < ie; ++i) {
        for (int64_t j = jb; j < je; ++j) {
          cols.sim_t[j * n + i] = similarity(Lt, dist[i * m + j]);
        }
      }
    }
  }
  std::vector<T> cov(n, T(0));
  std::vector<double> gain(m);
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < m; ++j) gain[j] = cols.gain(j, cov.data());

  auto take = [&](int64_t step, int64_t j) {
    picks[step] = j;
    cols.cover(j, cov.data());
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += cov[i];
    objective[step] = static_cast<T>(total);
  };

  if (lazy) {
    // Batched lazy greedy: re-evaluate the `batch` best bounds at once (in parallel), take the
    // best fresh gain if it beats every remaining bound, else push the fresh gains back and
    // double the batch. Exact: fresh gains are true gains and stale ones upper bounds.
    std::vector<Candidate> init(m);
    for (int64_t j = 0; j < m; ++j) init[j] = {gain[j], j, 0};
    std::priority_queue<Candidate> heap(std::less<Candidate>(), std::move(init));
    constexpr int64_t kMaxBatch = 64;
    // A batch goes parallel only when its gains outweigh waking the team (tens of microseconds
    // with OMP_WAIT_POLICY=passive): on small blocks a parallel batch slows the greedy down.
    constexpr int64_t kParallelWork = int64_t(1) << 18;
    std::vector<Candidate> batch;
    for (int64_t step = 0; step < k; ++step) {
      int64_t size = 1;
      while (true) {
        batch.clear();
        while (static_cast<int64_t>(batch.size()) < size && !heap.empty()) {
          batch.push_back(heap.top());
          heap.pop();
        }
        const int64_t bs = static_cast<int64_t>(batch.size());
        // Only stale entries are re-evaluated: a fresh one popped again would give the same gain.
#pragma omp parallel for schedule(dynamic, 1) if (bs * n >= kParallelWork)
        for (int64_t b = 0; b < bs; ++b) {
          if (batch[b].step != step) batch[b] = {cols.gain(batch[b].index, cov.data()), batch[b].index, step};
        }
        int64_t best = 0;
        for (int64_t b = 1; b < bs; ++b)
          if (batch[best] < batch[b]) best = b;
        if (heap.empty() || !(batch[best] < heap.top())) {
          for (int64_t b = 0; b < bs; ++b)
            if (b != best) heap.push(batch[b]);
          take(step, batch[best].index);
          break;
        }
        for (const Candidate& c : batch) heap.push(c);
        size = std::min(kMaxBatch, size * 2);
      }
    }
  } else {
    std::vector<char> selected(m, 0);
    for (int64_t step = 0; step < k; ++step) {
      if (step > 0) {
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < m; ++j)
          if (!selected[j]) gain[j] = cols.gain(j, cov.data());
      }
      int64_t best = -1;
      for (int64_t j = 0; j < m; ++j)
        if (!selected[j] && (best < 0 || gain[j] > gain[best])) best = j;
      selected[best] = 1;
      take(step, best);
    }
  }

  // weights: rows whose nearest pick (smallest distance, earlier pick on ties) is each pick
  std::vector<int64_t> counts(k, 0);
  if (cols.symmetric) {
    // D_i,pick = D_pick,i: stream the picks' rows, keeping each row's nearest so far (a loop
    // that vectorises, where reading D_i,pick row by row gathers k scattered entries per row)
    std::vector<T> nearest(dist + picks[0] * n, dist + picks[0] * n + n);
    std::vector<int32_t> owner(n, 0);
#pragma omp parallel for schedule(static)
    for (int64_t i0 = 0; i0 < n; i0 += 1024) {
      const int64_t i1 = std::min(n, i0 + 1024);
      for (int64_t p = 1; p < k; ++p) {
        const T* col = dist + picks[p] * n;
        for (int64_t i = i0; i < i1; ++i) {
          const bool closer = col[i] < nearest[i];
          nearest[i] = closer ? col[i] : nearest[i];
          owner[i] = closer ? static_cast<int32_t>(p) : owner[i];
        }
      }
    }
    for (int64_t i = 0; i < n; ++i) ++counts[owner[i]];
  } else {
#pragma omp parallel
    {
      std::vector<int64_t> local(k, 0);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        const T* row = dist + i * m;
        int64_t best = 0;
        for (int64_t p = 1; p < k; ++p)
          if (row[picks[p]] < row[picks[best]]) best = p;
        ++local[best];
      }
#pragma omp critical(lcmat_fl_counts)
      for (int64_t p = 0; p < k; ++p) counts[p] += local[p];
    }
  }
  for (int64_t p = 0; p < k; ++p) weights[p] = static_cast<T>(counts[p]);
}

template <typename T>
void facility_location_greedy_batch(const GreedyBlock<T>* blocks, int64_t count, bool has_L, double L, bool lazy) {
  auto run = [&](const GreedyBlock<T>& b) {
    facility_location_greedy(b.dist, b.n, b.m, b.k, has_L, L, lazy, b.picks, b.objective, b.weights);
  };
  const int threads = max_threads();
  if (threads < 2 || count < threads) {
    for (int64_t b = 0; b < count; ++b) run(blocks[b]);
    return;
  }
  // Largest blocks first, so that the last ones to start are the short ones.
  std::vector<int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return blocks[a].n * blocks[a].m > blocks[b].n * blocks[b].m;
  });
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < count; ++t) {
#ifdef _OPENMP
    omp_set_num_threads(1);  // the block's own parallel loops run on this thread alone
#endif
    run(blocks[order[t]]);
  }
}

#define LCMAT_INSTANTIATE(T)                                                                          \
  template void facility_location_greedy<T>(const T*, int64_t, int64_t, int64_t, bool, double, bool, \
                                            int64_t*, T*, T*);                                       \
  template void facility_location_greedy_batch<T>(const GreedyBlock<T>*, int64_t, bool, double, bool);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cpu
}  // namespace lcmat
