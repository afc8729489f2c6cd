// FDMat's transport score (lcmat/reference/fdmat.py), one warp per row of M:
//     s_i = sum_c (P_ic M_ic)^2,   P_ic = exp((f_i + g_c - M_ic) / reg), P never stored.
#include "cuda_kernels.h"
#include "device_utils.cuh"

namespace lcmat {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarp;

template <typename T>
__global__ void scores_kernel(const T* __restrict__ M, const T* __restrict__ f, const T* __restrict__ g, int64_t N,
                              int64_t C, T reg, T* __restrict__ out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t i = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp; i < N; i += warps) {
    const T* row = M + i * C;
    const T fi = f[i];
    T s = 0;
    for (int64_t c = lane; c < C; c += kWarp) {
      const T pm = dexp((fi + g[c] - row[c]) / reg) * row[c];
      s += pm * pm;
    }
    s = warp_sum(s);
    if (lane == 0) out[i] = s;
  }
}

}  // namespace

template <typename T>
cudaError_t fdmat_scores(const T* M, const T* f, const T* g, int64_t N, int64_t C, double reg, T* out,
                         cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  scores_kernel<T><<<blocks_for(N, kWarpsPerBlock), kThreads, 0, stream>>>(M, f, g, N, C, static_cast<T>(reg), out);
  return cudaGetLastError();
}

template cudaError_t fdmat_scores<float>(const float*, const float*, const float*, int64_t, int64_t, double, float*,
                                         cudaStream_t);
template cudaError_t fdmat_scores<double>(const double*, const double*, const double*, int64_t, int64_t, double,
                                          double*, cudaStream_t);

}  // namespace cuda
}  // namespace lcmat
