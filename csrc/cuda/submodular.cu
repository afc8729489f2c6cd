// Greedy graph cut and log-determinant on the device (lcmat/reference/submodular.py; the CPU twin
// is csrc/cpu/submodular.cpp):
//     graph cut  gain_e = coverage_e - lam (inside_e + S_ee),  coverage_e = sum_i S_ie,
//                inside_e = sum_{j in A} (S_je + S_ej)
//     log-det    gain_e = log r_e,  r_e = S_ee + reg - |c_e|^2,  c_e e's row of the incremental
//                Cholesky factor (a pick j appends (S_ej - c_e . c_j) / sqrt(r_j) to every c_e)
// One thread per candidate holds its state in float64. Each step is two launches and no host
// synchronisation: a step kernel folds the previous pick into every candidate's state and reduces
// its block's best (gain, index), then a one-block kernel reduces the block bests (largest gain,
// then lowest index), records the pick and marks it selected. Every candidate's state is updated by
// the same arithmetic in pick order (the factor dot runs sequentially over the earlier picks), so
// candidates with equal rows and columns of S tie exactly and the lowest index wins, as in the
// reference. The log-det argmax is over r itself (log is increasing); the pivots are returned and
// the binding forms the objective and refuses a non-positive one. NaN gains never beat a number,
// and a selected candidate is never picked. Naive greedy only: the lazy greedy's picks are the same.
#include "cuda_kernels.h"
#include "device_utils.cuh"

namespace lcmat {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kSelectThreads = 1024;
constexpr int64_t kNone = INT64_MAX;  // "no candidate": loses to every index

struct Best {
  double gain;
  int64_t index;
};

__device__ __forceinline__ bool better(double g, int64_t i, const Best& b) {
  return g > b.gain || (g == b.gain && i < b.index);
}

// The best (gain, index) over the block; the result is valid in thread 0.
template <int THREADS>
__device__ Best block_best(Best mine) {
  __shared__ double gain[THREADS];
  __shared__ int64_t index[THREADS];
  gain[threadIdx.x] = mine.gain;
  index[threadIdx.x] = mine.index;
  __syncthreads();
  for (int stride = THREADS / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const Best here{gain[threadIdx.x], index[threadIdx.x]};
      if (better(gain[threadIdx.x + stride], index[threadIdx.x + stride], here)) {
        gain[threadIdx.x] = gain[threadIdx.x + stride];
        index[threadIdx.x] = index[threadIdx.x + stride];
      }
    }
    __syncthreads();
  }
  return {gain[0], index[0]};
}

// A candidate's entry in the block reduction: NaN counts as -inf, a selected one is absent.
__device__ __forceinline__ Best candidate(double gain, int64_t e, bool selected) {
  if (selected) return {neg_inf<double>(), kNone};
  return {gain == gain ? gain : neg_inf<double>(), e};
}

// coverage_e = sum_i S_ie (rows in order, as the CPU twin sums) and diagonal_e = S_ee.
template <typename T>
__global__ void cut_init_kernel(const T* __restrict__ sim, int64_t n, double* __restrict__ coverage,
                                double* __restrict__ diagonal) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (e >= n) return;
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(sim[i * n + e]);  // coalesced over e
  coverage[e] = s;
  diagonal[e] = static_cast<double>(sim[e * n + e]);
}

template <typename T>
__global__ void cut_step_kernel(const T* __restrict__ sim, int64_t n, const double* __restrict__ coverage,
                                const double* __restrict__ diagonal, double lam, double* __restrict__ inside,
                                const unsigned char* __restrict__ selected, const int64_t* __restrict__ picks,
                                int64_t step, double* __restrict__ block_gain, int64_t* __restrict__ block_index) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  Best mine{neg_inf<double>(), kNone};
  if (e < n) {
    double in = inside[e];
    if (step > 0) {  // fold in the previous pick j
      const int64_t j = picks[step - 1];
      in = in + (static_cast<double>(sim[j * n + e]) + static_cast<double>(sim[e * n + j]));
      inside[e] = in;
    }
    mine = candidate(coverage[e] - lam * (in + diagonal[e]), e, selected[e]);
  }
  const Best best = block_best<kThreads>(mine);
  if (threadIdx.x == 0) {
    block_gain[blockIdx.x] = best.gain;
    block_index[blockIdx.x] = best.index;
  }
}

// r_e = S_ee + reg.
template <typename T>
__global__ void logdet_init_kernel(const T* __restrict__ sim, int64_t n, double reg, double* __restrict__ residual) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (e < n) residual[e] = static_cast<double>(sim[e * n + e]) + reg;
}

// factor is [k, n]: row t holds entry t of every candidate's c_e (column t of the Cholesky factor).
template <typename T>
__global__ void logdet_step_kernel(const T* __restrict__ sim, int64_t n, double* __restrict__ factor,
                                   double* __restrict__ residual, const double* __restrict__ pivots,
                                   const unsigned char* __restrict__ selected, const int64_t* __restrict__ picks,
                                   int64_t step, double* __restrict__ block_gain, int64_t* __restrict__ block_index) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  Best mine{neg_inf<double>(), kNone};
  if (e < n) {
    double r = residual[e];
    if (step > 0) {  // fold in the previous pick j, the t-th
      const int64_t t = step - 1, j = picks[t];
      const double root = dsqrt(pivots[t]);
      double dot = 0;
      for (int64_t u = 0; u < t; ++u) dot += factor[u * n + e] * factor[u * n + j];
      const double c = e == j ? root : (static_cast<double>(sim[e * n + j]) - dot) / root;
      factor[t * n + e] = c;
      r -= c * c;
      residual[e] = r;
    }
    mine = candidate(r, e, selected[e]);
  }
  const Best best = block_best<kThreads>(mine);
  if (threadIdx.x == 0) {
    block_gain[blockIdx.x] = best.gain;
    block_index[blockIdx.x] = best.index;
  }
}

// One block: the best of the block bests becomes pick `step`. record[step] is its gain, or
// state[j] when state is given (the log-det pivot r_j).
__global__ void pick_kernel(const double* __restrict__ block_gain, const int64_t* __restrict__ block_index,
                            int64_t blocks, int64_t n, int64_t step, unsigned char* __restrict__ selected,
                            int64_t* __restrict__ picks, const double* __restrict__ state,
                            double* __restrict__ record) {
  Best mine{neg_inf<double>(), kNone};
  for (int64_t b = threadIdx.x; b < blocks; b += kSelectThreads)
    if (better(block_gain[b], block_index[b], mine)) mine = {block_gain[b], block_index[b]};
  const Best best = block_best<kSelectThreads>(mine);
  if (threadIdx.x == 0) {
    const int64_t j = best.index < n ? best.index : n - 1;  // a candidate always remains (k <= n)
    picks[step] = j;
    selected[j] = 1;
    record[step] = state != nullptr ? state[j] : best.gain;
  }
}

}  // namespace

int64_t submodular_blocks(int64_t n) { return n == 0 ? 1 : (n + kThreads - 1) / kThreads; }

template <typename T>
cudaError_t graph_cut_greedy(const T* sim, int64_t n, int64_t k, double lam, double* work, int64_t* block_index,
                             unsigned char* selected, int64_t* picks, double* gains, cudaStream_t stream) {
  if (k == 0) return cudaSuccess;
  const int64_t blocks = submodular_blocks(n);
  double *coverage = work, *diagonal = work + n, *inside = work + 2 * n, *block_gain = work + 3 * n;
  cudaError_t status = cudaMemsetAsync(inside, 0, sizeof(double) * n, stream);
  if (status == cudaSuccess) status = cudaMemsetAsync(selected, 0, n, stream);
  if (status != cudaSuccess) return status;
  const unsigned int grid = static_cast<unsigned int>(blocks);
  cut_init_kernel<T><<<grid, kThreads, 0, stream>>>(sim, n, coverage, diagonal);
  for (int64_t step = 0; step < k; ++step) {
    cut_step_kernel<T><<<grid, kThreads, 0, stream>>>(sim, n, coverage, diagonal, lam, inside, selected, picks, step,
                                                      block_gain, block_index);
    pick_kernel<<<1, kSelectThreads, 0, stream>>>(block_gain, block_index, blocks, n, step, selected, picks, nullptr,
                                                  gains);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t log_determinant_greedy(const T* sim, int64_t n, int64_t k, double reg, double* work,
                                   int64_t* block_index, unsigned char* selected, int64_t* picks, double* pivots,
                                   cudaStream_t stream) {
  if (k == 0) return cudaSuccess;
  const int64_t blocks = submodular_blocks(n);
  double *residual = work, *block_gain = work + n, *factor = work + n + blocks;
  const cudaError_t status = cudaMemsetAsync(selected, 0, n, stream);
  if (status != cudaSuccess) return status;
  const unsigned int grid = static_cast<unsigned int>(blocks);
  logdet_init_kernel<T><<<grid, kThreads, 0, stream>>>(sim, n, reg, residual);
  for (int64_t step = 0; step < k; ++step) {
    logdet_step_kernel<T><<<grid, kThreads, 0, stream>>>(sim, n, factor, residual, pivots, selected, picks, step,
                                                         block_gain, block_index);
    pick_kernel<<<1, kSelectThreads, 0, stream>>>(block_gain, block_index, blocks, n, step, selected, picks, residual,
                                                  pivots);
  }
  return cudaGetLastError();
}

#define LCMAT_INSTANTIATE(T)                                                                                  \
  template cudaError_t graph_cut_greedy<T>(const T*, int64_t, int64_t, double, double*, int64_t*,             \
                                           unsigned char*, int64_t*, double*, cudaStream_t);                  \
  template cudaError_t log_determinant_greedy<T>(const T*, int64_t, int64_t, double, double*, int64_t*,       \
                                                 unsigned char*, int64_t*, double*, cudaStream_t);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cuda
}  // namespace lcmat
