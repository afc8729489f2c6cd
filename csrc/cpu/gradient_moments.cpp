// Per-class mean and variance of last-layer per-sample gradients, and their backward
// (lcmat/reference/gradient_moments.py has the mathematics).
//
// Forward: the members of each class are listed once (a counting sort of the labels); then every
// (class k, output c) pair owns one bias entry and one weight row of D entries in both outputs, so
// the pairs run in parallel with no reduction across threads. Each pair streams its members'
// embedding rows, accumulating e_ic h_i and e_ic^2 h_i^2 (the inner loop over d vectorises).
// Backward: one sample per iteration, reading only its own class's [C, P] blocks of A and B.
#include "gradient_moments.h"

#include <vector>

namespace lcmat {
namespace cpu {

namespace {

// Below this many multiply-adds a team of threads costs more than it saves.
constexpr int64_t kParallelWork = int64_t(1) << 16;

// members sorted by class: order[start[k] .. start[k + 1]) are the rows labelled k.
void class_members(const int64_t* labels, int64_t n, int64_t C, std::vector<int64_t>& start,
                   std::vector<int64_t>& order) {
  start.assign(C + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++start[labels[i] + 1];
  for (int64_t k = 0; k < C; ++k) start[k + 1] += start[k];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  order.resize(n);
  for (int64_t i = 0; i < n; ++i) order[fill[labels[i]]++] = i;
}

}  // namespace

template <typename T>
void gradient_moments(const T* h, const T* e, const int64_t* labels, int64_t n, int64_t C, int64_t D, T* mean,
                      T* var) {
  std::vector<int64_t> start, order;
  class_members(labels, n, C, start, order);
  const int64_t P = C * (D + 1);
  const bool parallel = n * C * (D + 1) >= kParallelWork;
#pragma omp parallel for collapse(2) schedule(dynamic) if (parallel)
  for (int64_t k = 0; k < C; ++k) {
    for (int64_t c = 0; c < C; ++c) {
      T* mw = mean + k * P + C + c * D;
      T* vw = var + k * P + C + c * D;
      for (int64_t d = 0; d < D; ++d) mw[d] = vw[d] = T(0);
      T mb = 0, vb = 0;
      for (int64_t j = start[k]; j < start[k + 1]; ++j) {
        const int64_t i = order[j];
        const T ec = e[i * C + c], ec2 = ec * ec;
        const T* hi = h + i * D;
        mb += ec;
        vb += ec2;
        for (int64_t d = 0; d < D; ++d) {
          mw[d] += ec * hi[d];
          vw[d] += ec2 * hi[d] * hi[d];
        }
      }
      const int64_t count = start[k + 1] - start[k];
      const T inv = count > 0 ? T(1) / T(count) : T(0);
      mb *= inv;
      mean[k * P + c] = mb;
      var[k * P + c] = vb * inv - mb * mb;
      for (int64_t d = 0; d < D; ++d) {
        mw[d] *= inv;
        vw[d] = vw[d] * inv - mw[d] * mw[d];
      }
    }
  }
}

template <typename T>
void gradient_moments_backward(const T* A, const T* B, const T* h, const T* e, const int64_t* labels, int64_t n,
                               int64_t C, int64_t D, T* grad_h, T* grad_z) {
  std::vector<int64_t> count(C, 0);
  for (int64_t i = 0; i < n; ++i) ++count[labels[i]];
  const int64_t P = C * (D + 1);
  const bool parallel = n * C * (D + 1) >= kParallelWork;
#pragma omp parallel if (parallel)
  {
    std::vector<T> h2(D), ge(C);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t k = labels[i];
      const T inv = T(1) / T(count[k]);
      const T* hi = h + i * D;
      const T* ei = e + i * C;
      const T* Ak = A + k * P;
      const T* Bk = B + k * P;
      T* gh = grad_h + i * D;
      for (int64_t d = 0; d < D; ++d) {
        gh[d] = T(0);
        h2[d] = hi[d] * hi[d];
      }
      for (int64_t c = 0; c < C; ++c) {
        const T* Aw = Ak + C + c * D;
        const T* Bw = Bk + C + c * D;
        const T ec = ei[c], ec2 = ec * ec;
        T lin = Ak[c], quad = Bk[c];  // the bias coordinate: its "embedding" is 1
        for (int64_t d = 0; d < D; ++d) {
          gh[d] += ec * Aw[d] + T(2) * ec2 * hi[d] * Bw[d];
          lin += Aw[d] * hi[d];
          quad += Bw[d] * h2[d];
        }
        ge[c] = inv * (lin + T(2) * ec * quad);
      }
      for (int64_t d = 0; d < D; ++d) gh[d] *= inv;
      // softmax backward, p = e + onehot(y)
      T dot = 0;
      for (int64_t c = 0; c < C; ++c) dot += ge[c] * (ei[c] + (c == k ? T(1) : T(0)));
      for (int64_t c = 0; c < C; ++c) grad_z[i * C + c] = (ei[c] + (c == k ? T(1) : T(0))) * (ge[c] - dot);
    }
  }
}

#define LCMAT_INSTANTIATE(T)                                                                                   \
  template void gradient_moments<T>(const T*, const T*, const int64_t*, int64_t, int64_t, int64_t, T*, T*);   \
  template void gradient_moments_backward<T>(const T*, const T*, const T*, const T*, const int64_t*, int64_t, \
                                             int64_t, int64_t, T*, T*);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cpu
}  // namespace lcmat
