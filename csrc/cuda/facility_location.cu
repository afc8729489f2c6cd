// Naive greedy facility location on the device (lcmat/reference/facility_location.py):
//     gain_j = sum_i max(0, sim_ij - cov_i),  sim = max(0, L - D)
// Each step: a block-parallel column reduction (rows split into chunks, one thread per column,
// partial sums in float64), an argmax over the columns (lowest index wins ties), the coverage
// update and the objective. The column sums always run in the same order, so identical columns
// get identical gains and exact ties resolve to the lowest index, as in the reference.
#include "cuda_kernels.h"
#include "device_utils.cuh"

namespace lcmat {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunkRows = 256;
constexpr int kSelectThreads = 1024;

template <typename T>
__device__ __forceinline__ T similarity(const T* L, T d) {
  const T s = *L - d;
  return s > T(0) ? s : T(0);
}

template <typename T>
__global__ void gains_kernel(const T* __restrict__ dist, int64_t n, int64_t m, const T* __restrict__ L,
                             const T* __restrict__ cov, const unsigned char* __restrict__ selected,
                             double* __restrict__ partial) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (j >= m || selected[j]) return;
  const int64_t i0 = chunk * kChunkRows, i1 = i0 + kChunkRows < n ? i0 + kChunkRows : n;
  double s = 0;
  for (int64_t i = i0; i < i1; ++i) {  // consecutive threads read consecutive columns
    const T d = similarity(L, dist[i * m + j]) - cov[i];
    if (d > T(0)) s += static_cast<double>(d);
  }
  partial[chunk * m + j] = s;
}

// One block: total gain per unselected column, argmax with ties to the lowest index.
__global__ void select_kernel(const double* __restrict__ partial, int64_t chunks, int64_t m,
                              unsigned char* __restrict__ selected, int64_t* __restrict__ pick) {
  __shared__ double best_gain[kSelectThreads];
  __shared__ int64_t best_index[kSelectThreads];
  double bg = -1.0;
  int64_t bi = INT64_MAX;
  for (int64_t j = threadIdx.x; j < m; j += kSelectThreads) {
    if (selected[j]) continue;
    double g = 0;
    for (int64_t c = 0; c < chunks; ++c) g += partial[c * m + j];
    if (g > bg) {  // j increases, so equal gains keep the lower index
      bg = g;
      bi = j;
    }
  }
  best_gain[threadIdx.x] = bg;
  best_index[threadIdx.x] = bi;
  __syncthreads();
  for (int stride = kSelectThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const double og = best_gain[threadIdx.x + stride];
      const int64_t oi = best_index[threadIdx.x + stride];
      if (og > best_gain[threadIdx.x] || (og == best_gain[threadIdx.x] && oi < best_index[threadIdx.x])) {
        best_gain[threadIdx.x] = og;
        best_index[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *pick = best_index[0];
    selected[best_index[0]] = 1;
  }
}

template <typename T>
__global__ void cover_kernel(const T* __restrict__ dist, int64_t n, int64_t m, const T* __restrict__ L,
                             const int64_t* __restrict__ pick, T* __restrict__ cov) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (i >= n) return;
  const T s = similarity(L, dist[i * m + *pick]);
  cov[i] = s > cov[i] ? s : cov[i];
}

template <typename T>
__global__ void objective_kernel(const T* __restrict__ cov, int64_t n, T* __restrict__ objective) {
  __shared__ double part[kSelectThreads];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kSelectThreads) s += static_cast<double>(cov[i]);
  part[threadIdx.x] = s;
  __syncthreads();
  for (int stride = kSelectThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) part[threadIdx.x] += part[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) *objective = static_cast<T>(part[0]);
}

// weights: rows whose nearest pick (smallest distance, earlier pick on ties) is each pick
template <typename T>
__global__ void nearest_kernel(const T* __restrict__ dist, int64_t n, int64_t m, const int64_t* __restrict__ picks,
                               int64_t k, unsigned long long* __restrict__ counts) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (i >= n) return;
  const T* row = dist + i * m;
  int64_t best = 0;
  for (int64_t p = 1; p < k; ++p)
    if (row[picks[p]] < row[picks[best]]) best = p;
  atomicAdd(counts + best, 1ULL);
}

template <typename T>
__global__ void counts_to_weights(const unsigned long long* __restrict__ counts, int64_t k, T* __restrict__ weights) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (p < k) weights[p] = static_cast<T>(counts[p]);
}

}  // namespace

int64_t facility_location_chunks(int64_t n) { return n == 0 ? 1 : (n + kChunkRows - 1) / kChunkRows; }

template <typename T>
cudaError_t facility_location_greedy(const T* dist, int64_t n, int64_t m, int64_t k, const T* L, double* partial,
                                     T* cov, unsigned char* selected, unsigned long long* counts, int64_t* picks,
                                     T* objective, T* weights, cudaStream_t stream) {
  if (k == 0) return cudaSuccess;
  const int64_t chunks = facility_location_chunks(n);
  cudaError_t status = cudaMemsetAsync(cov, 0, sizeof(T) * n, stream);
  if (status == cudaSuccess) status = cudaMemsetAsync(selected, 0, m, stream);
  if (status == cudaSuccess) status = cudaMemsetAsync(counts, 0, sizeof(unsigned long long) * k, stream);
  if (status != cudaSuccess) return status;
  const dim3 gains_grid(static_cast<unsigned int>((m + kThreads - 1) / kThreads), static_cast<unsigned int>(chunks));
  const unsigned int row_blocks = static_cast<unsigned int>((n + kThreads - 1) / kThreads);
  for (int64_t step = 0; step < k; ++step) {
    gains_kernel<T><<<gains_grid, kThreads, 0, stream>>>(dist, n, m, L, cov, selected, partial);
    select_kernel<<<1, kSelectThreads, 0, stream>>>(partial, chunks, m, selected, picks + step);
    cover_kernel<T><<<row_blocks, kThreads, 0, stream>>>(dist, n, m, L, picks + step, cov);
    objective_kernel<T><<<1, kSelectThreads, 0, stream>>>(cov, n, objective + step);
  }
  nearest_kernel<T><<<row_blocks, kThreads, 0, stream>>>(dist, n, m, picks, k, counts);
  counts_to_weights<T><<<static_cast<unsigned int>((k + kThreads - 1) / kThreads), kThreads, 0, stream>>>(counts, k,
                                                                                                       weights);
  return cudaGetLastError();
}

#define LCMAT_INSTANTIATE(T)                                                                                     \
  template cudaError_t facility_location_greedy<T>(const T*, int64_t, int64_t, int64_t, const T*, double*, T*,   \
                                                   unsigned char*, unsigned long long*, int64_t*, T*, T*,        \
                                                   cudaStream_t);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cuda
}  // namespace lcmat
