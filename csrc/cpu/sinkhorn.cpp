// Log-domain Sinkhorn (lcmat/reference/sinkhorn.py). With potentials f, g:
//     f_i = reg log a_i - reg LSE_j((g_j - M_ij) / reg)          (row pass)
//     g_j = reg log b_j - reg LSE_i((f_i - M_ij) / reg)          (column pass)
//     err = sum_i |(P 1)_i - a_i| / sum_i a_i,  (P 1)_i = exp((f_i + reg LSE_j(...)) / reg)
// The row marginal of (f, g) falls out of the next row pass, so a checked iteration streams the
// cost twice (row pass, column pass), not three times: the check of iteration t happens in the
// row pass of iteration t + 1, whose new f is dropped when iteration t has converged.
// The cost is read one tile of rows at a time (stored, or recomputed from features by the
// caller's CostBlock), so nothing of size n x m is allocated here, except for problems of few
// columns, whose cost is copied once transposed (see row_pass_few).
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "cpu_kernels.h"
#include "vexp.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lcmat {
namespace cpu {

namespace {

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Rows per tile: about 64K cost values (256 KB in float), so a tile read twice stays in L2.
inline int64_t tile_rows(int64_t m) { return std::max<int64_t>(1, std::min<int64_t>(1024, 65536 / std::max<int64_t>(m, 1))); }

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

template <typename T>
struct Workspace {
  int64_t n, m, tr, num_tiles;
  int nt;
  std::vector<T> scratch;  // nt x tr x m, for costs computed on the fly
  std::vector<T> cmax, tmax, tsum, shift;  // nt x m each: per-thread column accumulators
  std::vector<double> csum;
};

// Row pass: f_new_i = reg log a_i - reg LSE_j((g_j - M_ij) / reg). With `check`, also returns
// sum_i |exp((f_i + reg LSE_j(...)) / reg) - a_i|, the row-marginal error numerator of (f, g).
template <typename T>
double row_pass(const CostBlock<T>& cost, const T* a, const T* log_a, const T* f, const T* g,
                T reg, bool check, bool parallel, Workspace<T>& ws, T* f_new) {
  const int64_t n = ws.n, m = ws.m, tr = ws.tr;
  const T inv_reg = T(1) / reg;
  const bool scratch = !ws.scratch.empty();
  double err_num = 0;
#pragma omp parallel for schedule(static) reduction(+ : err_num) num_threads(ws.nt) if (parallel)
  for (int64_t t = 0; t < ws.num_tiles; ++t) {
    const int64_t r0 = t * tr, r1 = std::min(n, r0 + tr);
    T* scr = scratch ? ws.scratch.data() + static_cast<size_t>(thread_id()) * tr * m : nullptr;
    const T* tile = cost.rows(r0, r1, scr);
    for (int64_t i = r0; i < r1; ++i) {
      const T* row = tile + (i - r0) * m;
      T mx = neg_inf<T>();
#pragma omp simd reduction(max : mx)
      for (int64_t j = 0; j < m; ++j) {
        const T v = g[j] - row[j];
        mx = v > mx ? v : mx;
      }
      T lse = neg_inf<T>();  // reg * LSE_j((g_j - M_ij) / reg)
      if (mx != neg_inf<T>()) {
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < m; ++j) s += vexp((g[j] - row[j] - mx) * inv_reg);
        lse = mx + reg * std::log(s);
      }
      if (check) {
        const T z = f[i] + lse;
        const double mass = z == neg_inf<T>() ? 0.0 : std::exp(static_cast<double>(z) / reg);
        err_num += std::abs(mass - static_cast<double>(a[i]));
      }
      f_new[i] = reg * log_a[i] - lse;
    }
  }
  return err_num;
}

// Column pass: g_j = reg log b_j - reg LSE_i((f_i - M_ij) / reg), with a running (max, sum) per
// column and thread, merged at the end. Within a tile: the tile's column maxima first, so that
// each value costs one exp.
template <typename T>
void col_pass(const CostBlock<T>& cost, const T* log_b, const T* f, T reg, bool parallel,
              Workspace<T>& ws, T* g) {
  const int64_t n = ws.n, m = ws.m, tr = ws.tr;
  const T inv_reg = T(1) / reg;
  const bool scratch = !ws.scratch.empty();
  std::fill(ws.cmax.begin(), ws.cmax.end(), neg_inf<T>());
  std::fill(ws.csum.begin(), ws.csum.end(), 0.0);
#pragma omp parallel num_threads(ws.nt) if (parallel)
  {
    const int tid = thread_id();
    T* cm = ws.cmax.data() + tid * m;
    double* cs = ws.csum.data() + tid * m;
    T* tm = ws.tmax.data() + tid * m;
    T* ts = ws.tsum.data() + tid * m;
    T* sh = ws.shift.data() + tid * m;
    T* scr = scratch ? ws.scratch.data() + static_cast<size_t>(tid) * tr * m : nullptr;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ws.num_tiles; ++t) {
      const int64_t r0 = t * tr, r1 = std::min(n, r0 + tr);
      const T* tile = cost.rows(r0, r1, scr);
      for (int64_t j = 0; j < m; ++j) tm[j] = neg_inf<T>();
      for (int64_t i = r0; i < r1; ++i) {
        const T fi = f[i];
        const T* row = tile + (i - r0) * m;
        for (int64_t j = 0; j < m; ++j) {
          const T v = fi - row[j];
          tm[j] = v > tm[j] ? v : tm[j];
        }
      }
      for (int64_t j = 0; j < m; ++j) {
        if (tm[j] > cm[j]) {  // raise the running maximum, rescaling the running sum
          cs[j] = cm[j] == neg_inf<T>() ? 0.0 : cs[j] * std::exp(static_cast<double>(cm[j] - tm[j]) / reg);
          cm[j] = tm[j];
        }
        sh[j] = cm[j] == neg_inf<T>() ? T(0) : cm[j];  // a finite shift: -inf terms give exp = 0
        ts[j] = 0;
      }
      for (int64_t i = r0; i < r1; ++i) {
        const T fi = f[i];
        const T* row = tile + (i - r0) * m;
        for (int64_t j = 0; j < m; ++j) ts[j] += vexp((fi - row[j] - sh[j]) * inv_reg);
      }
      for (int64_t j = 0; j < m; ++j) cs[j] += ts[j];
    }
  }
  for (int64_t j = 0; j < m; ++j) {
    T mx = neg_inf<T>();
    for (int t = 0; t < ws.nt; ++t) mx = std::max(mx, ws.cmax[t * m + j]);
    T lse = neg_inf<T>();
    if (mx != neg_inf<T>()) {
      double s = 0;
      for (int t = 0; t < ws.nt; ++t) {
        const T ct = ws.cmax[t * m + j];
        if (ct != neg_inf<T>()) s += ws.csum[t * m + j] * std::exp(static_cast<double>(ct - mx) / reg);
      }
      lse = static_cast<T>(mx + static_cast<double>(reg) * std::log(s));
    }
    g[j] = reg * log_b[j] - lse;
  }
}

// ---- few columns (m <= kFewCols) ----
// A row of a handful of costs fills less than one vector, so the row-major passes above run
// mostly scalar. With few columns the cost is copied once transposed, [m][n] (n m values, the
// size of the cost itself), and both passes run along n in full vector lanes: the row pass keeps
// a block of rows' running maxima and sums, the column pass reduces each contiguous cost column.
constexpr int64_t kFewCols = 32;
constexpr int64_t kRowBlock = 512;

template <typename T>
void transpose_cost(const CostBlock<T>& cost, bool parallel, Workspace<T>& ws, T* mt) {
  const int64_t n = ws.n, m = ws.m, tr = ws.tr;
  const bool scratch = !ws.scratch.empty();
#pragma omp parallel for schedule(static) num_threads(ws.nt) if (parallel)
  for (int64_t t = 0; t < ws.num_tiles; ++t) {
    const int64_t r0 = t * tr, r1 = std::min(n, r0 + tr);
    T* scr = scratch ? ws.scratch.data() + static_cast<size_t>(thread_id()) * tr * m : nullptr;
    const T* tile = cost.rows(r0, r1, scr);
    for (int64_t j = 0; j < m; ++j)
      for (int64_t i = r0; i < r1; ++i) mt[j * n + i] = tile[(i - r0) * m + j];
  }
}

// The row pass of row_pass() on the transposed cost mt [m][n].
template <typename T>
double row_pass_few(const T* mt, const T* a, const T* log_a, const T* f, const T* g, T reg,
                    bool check, bool parallel, const Workspace<T>& ws, T* f_new) {
  const int64_t n = ws.n, m = ws.m;
  const T inv_reg = T(1) / reg;
  const int64_t num_blocks = (n + kRowBlock - 1) / kRowBlock;
  double err_num = 0;
#pragma omp parallel for schedule(static) reduction(+ : err_num) num_threads(ws.nt) if (parallel)
  for (int64_t blk = 0; blk < num_blocks; ++blk) {
    const int64_t i0 = blk * kRowBlock, len = std::min(kRowBlock, n - i0);
    alignas(64) T mx[kRowBlock];
    alignas(64) T sum[kRowBlock];
    for (int64_t i = 0; i < len; ++i) mx[i] = neg_inf<T>();
    for (int64_t j = 0; j < m; ++j) {
      const T gj = g[j];
      const T* col = mt + j * n + i0;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const T v = gj - col[i];
        mx[i] = v > mx[i] ? v : mx[i];
      }
    }
    for (int64_t i = 0; i < len; ++i) {
      mx[i] = mx[i] == neg_inf<T>() ? T(0) : mx[i];  // a finite shift; an all -inf row sums to 0
      sum[i] = 0;
    }
    for (int64_t j = 0; j < m; ++j) {
      const T gj = g[j];
      const T* col = mt + j * n + i0;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) sum[i] += vexp((gj - col[i] - mx[i]) * inv_reg);
    }
    double blk_err = 0;
#pragma omp simd reduction(+ : blk_err)
    for (int64_t i = 0; i < len; ++i) {
      const T lse = mx[i] + reg * vlog(sum[i]);  // reg * LSE_j((g_j - M_ij) / reg)
      if (check) {
        const T mass = vexp((f[i0 + i] + lse) * inv_reg);
        blk_err += std::abs(static_cast<double>(mass) - static_cast<double>(a[i0 + i]));
      }
      f_new[i0 + i] = reg * log_a[i0 + i] - lse;
    }
    err_num += blk_err;
  }
  return err_num;
}

// The column pass of col_pass() on the transposed cost: per thread a slice of the rows, per
// column its (max, sum of exponentials) over the slice, merged as in col_pass.
template <typename T>
void col_pass_few(const T* mt, const T* log_b, const T* f, T reg, bool parallel, Workspace<T>& ws,
                  T* g) {
  const int64_t n = ws.n, m = ws.m;
  const T inv_reg = T(1) / reg;
  const int nt = parallel ? ws.nt : 1;
#pragma omp parallel num_threads(nt) if (parallel)
  {
    const int tid = thread_id();
    const int64_t i0 = n * tid / nt, i1 = n * (tid + 1) / nt;
    for (int64_t j = 0; j < m; ++j) {
      const T* col = mt + j * n;
      T mx = neg_inf<T>();
#pragma omp simd reduction(max : mx)
      for (int64_t i = i0; i < i1; ++i) {
        const T v = f[i] - col[i];
        mx = v > mx ? v : mx;
      }
      const T shift = mx == neg_inf<T>() ? T(0) : mx;
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = i0; i < i1; ++i) s += vexp((f[i] - col[i] - shift) * inv_reg);
      ws.cmax[tid * m + j] = mx;
      ws.csum[tid * m + j] = static_cast<double>(s) * std::exp(static_cast<double>(shift - mx) / reg);
    }
  }
  for (int64_t j = 0; j < m; ++j) {
    T mx = neg_inf<T>();
    for (int t = 0; t < nt; ++t) mx = std::max(mx, ws.cmax[t * m + j]);
    T lse = neg_inf<T>();
    if (mx != neg_inf<T>()) {
      double s = 0;
      for (int t = 0; t < nt; ++t) {
        const T ct = ws.cmax[t * m + j];
        if (ct != neg_inf<T>()) s += ws.csum[t * m + j] * std::exp(static_cast<double>(ct - mx) / reg);
      }
      lse = static_cast<T>(mx + static_cast<double>(reg) * std::log(s));
    }
    g[j] = reg * log_b[j] - lse;
  }
}

template <typename T>
T log_mass(T x) {
  return x > T(0) ? std::log(x) : neg_inf<T>();
}

}  // namespace

template <typename T>
void sinkhorn_solve(const T* a, const T* b, int64_t n, int64_t m, const CostBlock<T>& cost,
                    const SinkhornOptions& opt, bool parallel, T* f, T* g, int64_t* n_iter, T* err) {
  std::fill(f, f + n, T(0));
  std::fill(g, g + m, T(0));
  *n_iter = 0;
  *err = std::numeric_limits<T>::infinity();
  if (opt.max_iter <= 0 || n == 0 || m == 0) return;
  const T reg = static_cast<T>(opt.reg);
  std::vector<T> log_a(n), log_b(m), f_new(n);
  double sum_a = 0;
  for (int64_t i = 0; i < n; ++i) {
    log_a[i] = log_mass(a[i]);
    sum_a += a[i];
  }
  for (int64_t j = 0; j < m; ++j) log_b[j] = log_mass(b[j]);

  Workspace<T> ws;
  ws.n = n;
  ws.m = m;
  ws.tr = tile_rows(m);
  ws.num_tiles = (n + ws.tr - 1) / ws.tr;
  ws.nt = parallel ? std::max(1, std::min<int>(max_threads(), static_cast<int>(ws.num_tiles))) : 1;
  if (cost.needs_scratch()) ws.scratch.resize(static_cast<size_t>(ws.nt) * ws.tr * m);
  for (auto* v : {&ws.cmax, &ws.tmax, &ws.tsum, &ws.shift}) v->resize(static_cast<size_t>(ws.nt) * m);
  ws.csum.resize(static_cast<size_t>(ws.nt) * m);

  std::vector<T> mt;  // the transposed cost, when there are few columns
  if (m <= kFewCols) {
    mt.resize(static_cast<size_t>(n) * m);
    transpose_cost(cost, parallel, ws, mt.data());
  }
  int64_t it = 0;
  bool check = false;
  while (true) {
    const double err_num =
        mt.empty() ? row_pass(cost, a, log_a.data(), f, g, reg, check, parallel, ws, f_new.data())
                   : row_pass_few(mt.data(), a, log_a.data(), f, g, reg, check, parallel, ws, f_new.data());
    if (check) {
      *err = static_cast<T>(err_num / sum_a);
      if (!(*err > opt.tol)) break;  // converged (a NaN error stops too, as in the reference)
    }
    if (it == opt.max_iter) break;
    std::copy(f_new.begin(), f_new.end(), f);
    ++it;
    if (mt.empty())
      col_pass(cost, log_b.data(), f, reg, parallel, ws, g);
    else
      col_pass_few(mt.data(), log_b.data(), f, reg, parallel, ws, g);
    check = it % opt.check_every == 0 || it == opt.max_iter;
  }
  *n_iter = it;
}

template <typename T>
void sinkhorn_ragged(const T* a, const T* b, const int64_t* row_off, const int64_t* col_off,
                     int64_t num_problems, CostFactory<T> make_cost, const void* ctx,
                     const SinkhornOptions& opt, T* f, T* g, int64_t* n_iter, T* err) {
  std::vector<std::pair<int64_t, int64_t>> work;  // (n_p m_p, p) of the non-empty problems
  int64_t total = 0;
  for (int64_t p = 0; p < num_problems; ++p) {
    n_iter[p] = 0;
    err[p] = T(0);
    const int64_t size = (row_off[p + 1] - row_off[p]) * (col_off[p + 1] - col_off[p]);
    if (size > 0) work.emplace_back(size, p);
    total += size;
  }
  // largest first: the big ones get all threads, the rest share the threads one problem each
  std::sort(work.begin(), work.end(), [](const auto& x, const auto& y) {
    return x.first != y.first ? x.first > y.first : x.second < y.second;
  });
  const int nt = max_threads();
  constexpr int64_t kParallelWork = 1 << 15;  // below this, threads cost more than they give
  auto solve = [&](int64_t p, bool parallel) {
    const int64_t r0 = row_off[p], c0 = col_off[p];
    const int64_t n = row_off[p + 1] - r0, m = col_off[p + 1] - c0;
    std::unique_ptr<CostBlock<T>> cost = make_cost(ctx, p);
    sinkhorn_solve(a + r0, b + c0, n, m, *cost, opt, parallel, f + r0, g + c0,
                   n_iter + p, err + p);
  };
  size_t first_small = 0;
  while (first_small < work.size() && work[first_small].first * nt >= total) {
    solve(work[first_small].second, work[first_small].first >= kParallelWork);
    ++first_small;
  }
  const int64_t num_small = static_cast<int64_t>(work.size() - first_small);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t s = 0; s < num_small; ++s) solve(work[first_small + s].second, false);
}

template <typename T>
void squared_euclidean_from_dot(T* xy, const T* xx, const T* yy, int64_t n, int64_t m,
                                bool parallel) {
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < n; ++i) {
    T* row = xy + i * m;
    const T xi = xx[i];
    for (int64_t j = 0; j < m; ++j) {
      const T v = (xi + yy[j]) - T(2) * row[j];
      row[j] = v > T(0) ? v : T(0);
    }
  }
}

// Rows of fewer than kFewCols entries are too short for the exp to vectorise one row at a time:
// a run of rows first gets f_i + g_j written into P, then one flat loop over the run's values
// takes P <- exp((P - M) / reg) in full vector lanes.
template <typename T>
void sinkhorn_plan(const T* f, const T* g, const T* M, int64_t batch, int64_t n, int64_t m, T reg,
                   bool parallel, T* P) {
  const T inv_reg = T(1) / reg;
  const int64_t run = m < kFewCols ? std::max<int64_t>(1, 4096 / std::max<int64_t>(m, 1)) : 1;
  const int64_t runs_per_problem = (n + run - 1) / run;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < batch * runs_per_problem; ++r) {
    const int64_t p = r / runs_per_problem;
    const int64_t i0 = (r % runs_per_problem) * run, i1 = std::min(n, i0 + run);
    const T* gp = g + p * m;
    if (run == 1) {
      const T fi = f[p * n + i0];
      const T* row = M + (p * n + i0) * m;
      T* out = P + (p * n + i0) * m;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) out[j] = vexp((fi + gp[j] - row[j]) * inv_reg);
      continue;
    }
    T* out = P + (p * n + i0) * m;
    const T* cost = M + (p * n + i0) * m;
    for (int64_t i = i0; i < i1; ++i) {
      const T fi = f[p * n + i];
      for (int64_t j = 0; j < m; ++j) out[(i - i0) * m + j] = fi + gp[j];
    }
    const int64_t len = (i1 - i0) * m;
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) out[k] = vexp((out[k] - cost[k]) * inv_reg);
  }
}

#define LCMAT_INSTANTIATE(T)                                                                      \
  template void sinkhorn_solve<T>(const T*, const T*, int64_t, int64_t, const CostBlock<T>&,      \
                                  const SinkhornOptions&, bool, T*, T*, int64_t*, T*);            \
  template void sinkhorn_ragged<T>(const T*, const T*, const int64_t*, const int64_t*, int64_t,   \
                                   CostFactory<T>, const void*, const SinkhornOptions&, T*, T*,   \
                                   int64_t*, T*);                                                 \
  template void squared_euclidean_from_dot<T>(T*, const T*, const T*, int64_t, int64_t, bool);     \
  template void sinkhorn_plan<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, T, bool, T*);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cpu
}  // namespace lcmat
