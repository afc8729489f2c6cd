// Greedy graph cut and log-determinant over an n x n similarity block
// (lcmat/reference/submodular.py):
//     graph cut  gain_e = sum_i S_ie - lam (sum_{j in A} (S_je + S_ej) + S_ee)
//     log-det    gain_e = log(S_ee + reg - |c_e|^2), c_e e's row of the incremental Cholesky factor
//
// Exactness of the lazy greedy. Both greedies keep, per candidate, a state that only moves one way
// as picks are added (graph cut: `inside`, a double sum of non-negative terms when S >= 0; log-det:
// `residual`, decreased by squares), updated term by term in pick order by the same out-of-line
// helpers in the naive and the lazy path. So a candidate's state after t picks is bitwise the same
// whichever path computed it, gains never grow (stale gains are exact upper bounds), and the lazy
// greedy makes the naive greedy's picks, lowest index first among equal gains.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <queue>
#include <vector>

#include "cpu_kernels.h"

namespace lcmat {
namespace cpu {

namespace {

// Out of line so that both paths round identically (no FMA contracted in one and not the other).
__attribute__((noinline)) double add_pair(double acc, double a, double b) { return acc + (a + b); }
__attribute__((noinline)) double cut_gain(double coverage, double lam, double inside, double diagonal) {
  return coverage - lam * (inside + diagonal);
}
// Eight independent lanes (vectorisable without reassociation), combined in a fixed order.
__attribute__((noinline)) double dot(const double* a, const double* b, int64_t t) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= t; i += 8)
    for (int l = 0; l < 8; ++l) lane[l] += a[i + l] * b[i + l];
  double s = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  for (; i < t; ++i) s += a[i] * b[i];
  return s;
}
__attribute__((noinline)) double column_entry(double s, double d, double root) { return (s - d) / root; }
__attribute__((noinline)) double shrink(double r, double c) { return r - c * c; }

struct Candidate {
  double gain;
  int64_t index;
  bool operator<(const Candidate& other) const {  // "pops later than": larger gain, then lower index first
    if (gain != other.gain) return gain < other.gain;
    return index > other.index;
  }
};

// S_ej for all e as a row: S itself when exactly symmetric, else its transpose (built once).
template <typename T>
std::vector<T> transpose_unless_symmetric(const T* sim, int64_t n, bool* symmetric) {
  *symmetric = true;
  for (int64_t i = 0; i < n && *symmetric; ++i)
    for (int64_t j = i + 1; j < n; ++j)
      if (sim[i * n + j] != sim[j * n + i]) {
        *symmetric = false;
        break;
      }
  std::vector<T> t;
  if (*symmetric) return t;
  t.resize(static_cast<size_t>(n) * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) t[j * n + i] = sim[i * n + j];
  return t;
}

}  // namespace

template <typename T>
void graph_cut_greedy(const T* sim, int64_t n, int64_t k, double lam, bool lazy, int64_t* picks, T* objective) {
  bool symmetric;
  const std::vector<T> transposed = transpose_unless_symmetric(sim, n, &symmetric);
  const T* sim_t = symmetric ? sim : transposed.data();  // row j: S_ej for all e
  std::vector<double> coverage(n, 0.0), inside(n, 0.0), diagonal(n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t e = 0; e < n; ++e) coverage[e] += sim[i * n + e];
  for (int64_t e = 0; e < n; ++e) diagonal[e] = sim[e * n + e];
  std::vector<char> selected(n, 0);
  std::vector<int64_t> done(n, 0);  // lazy: picks already added into inside[e]
  double total = 0.0;
  auto catch_up = [&](int64_t e, int64_t t) {
    for (int64_t s = done[e]; s < t; ++s) inside[e] = add_pair(inside[e], sim[picks[s] * n + e], sim_t[picks[s] * n + e]);
    done[e] = t;
  };
  std::priority_queue<Candidate> heap;
  if (lazy)
    for (int64_t e = 0; e < n; ++e) heap.push({cut_gain(coverage[e], lam, 0.0, diagonal[e]), e});
  for (int64_t t = 0; t < k; ++t) {
    int64_t best = -1;
    double best_gain = -std::numeric_limits<double>::infinity();
    if (lazy) {
      while (true) {
        const Candidate top = heap.top();
        heap.pop();
        catch_up(top.index, t);
        const double gain = cut_gain(coverage[top.index], lam, inside[top.index], diagonal[top.index]);
        if (heap.empty() || !(Candidate{gain, top.index} < heap.top())) {
          best = top.index;
          best_gain = gain;
          break;
        }
        heap.push({gain, top.index});
      }
    } else {
      for (int64_t e = 0; e < n; ++e) {
        if (selected[e]) continue;
        const double gain = cut_gain(coverage[e], lam, inside[e], diagonal[e]);
        if (best < 0 || gain > best_gain) {
          best = e;
          best_gain = gain;
        }
      }
    }
    selected[best] = 1;
    picks[t] = best;
    total += best_gain;
    objective[t] = static_cast<T>(total);
    if (!lazy) {
      const T* row = sim + best * n;
      const T* col = sim_t + best * n;
      for (int64_t e = 0; e < n; ++e) inside[e] = add_pair(inside[e], row[e], col[e]);
    }
  }
}

template <typename T>
int64_t log_determinant_greedy(const T* sim, int64_t n, int64_t k, double reg, bool lazy, int64_t* picks,
                               T* objective) {
  bool symmetric;
  const std::vector<T> transposed = transpose_unless_symmetric(sim, n, &symmetric);
  const T* sim_t = symmetric ? sim : transposed.data();  // row j: S_ej for all e
  std::vector<double> factor(static_cast<size_t>(n) * std::max<int64_t>(k, 1), 0.0);  // row e: c_e
  std::vector<double> residual(n), roots;
  std::vector<int64_t> done(n, 0);
  for (int64_t e = 0; e < n; ++e) residual[e] = static_cast<double>(sim[e * n + e]) + reg;
  // Bring candidate e's Cholesky row and residual up to the first t picks.
  auto catch_up = [&](int64_t e, int64_t t) {
    double* row = factor.data() + e * k;
    for (int64_t s = done[e]; s < t; ++s) {
      const int64_t p = picks[s];
      row[s] = column_entry(static_cast<double>(sim_t[p * n + e]), dot(row, factor.data() + p * k, s), roots[s]);
      residual[e] = shrink(residual[e], row[s]);
    }
    done[e] = t;
  };
  auto gain_of = [&](int64_t e) {
    return residual[e] > 0 ? std::log(residual[e]) : -std::numeric_limits<double>::infinity();
  };
  std::vector<char> selected(n, 0);
  std::priority_queue<Candidate> heap;
  if (lazy)
    for (int64_t e = 0; e < n; ++e) heap.push({gain_of(e), e});
  double total = 0.0;
  for (int64_t t = 0; t < k; ++t) {
    int64_t best = -1;
    if (lazy) {
      while (true) {
        const Candidate top = heap.top();
        heap.pop();
        catch_up(top.index, t);
        const double gain = gain_of(top.index);
        if (heap.empty() || !(Candidate{gain, top.index} < heap.top())) {
          best = top.index;
          break;
        }
        heap.push({gain, top.index});
      }
    } else {
      double best_gain = -std::numeric_limits<double>::infinity();
      for (int64_t e = 0; e < n; ++e) {
        if (selected[e]) continue;
        const double gain = gain_of(e);
        if (best < 0 || gain > best_gain) {
          best = e;
          best_gain = gain;
        }
      }
    }
    const double pivot = residual[best];
    if (!(pivot > 0)) return t;  // S + reg I is not positive definite
    selected[best] = 1;
    picks[t] = best;
    roots.push_back(std::sqrt(pivot));
    factor[best * k + t] = roots[t];
    done[best] = t + 1;
    total += std::log(pivot);
    objective[t] = static_cast<T>(total);
    if (!lazy) {
#pragma omp parallel for schedule(static) if (n * (t + 1) > 65536)
      for (int64_t e = 0; e < n; ++e)
        if (!selected[e]) catch_up(e, t + 1);
    }
  }
  return -1;
}

template void graph_cut_greedy<float>(const float*, int64_t, int64_t, double, bool, int64_t*, float*);
template void graph_cut_greedy<double>(const double*, int64_t, int64_t, double, bool, int64_t*, double*);
template int64_t log_determinant_greedy<float>(const float*, int64_t, int64_t, double, bool, int64_t*, float*);
template int64_t log_determinant_greedy<double>(const double*, int64_t, int64_t, double, bool, int64_t*, double*);

}  // namespace cpu
}  // namespace lcmat
