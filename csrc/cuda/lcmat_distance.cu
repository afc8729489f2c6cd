// The memory-bound parts of the per-class LCMat-S distance block (lcmat/reference/lcmat_distance.py);
// the GEMMs of the Gram identity run through ATen in csrc/lcmat_distance.cpp.
#include "cuda_kernels.h"
#include "device_utils.cuh"

namespace lcmat {
namespace cuda {

namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void gram_kernel(T* __restrict__ out, const T* __restrict__ hh, const T* __restrict__ diag_sq, int64_t r0,
                            int64_t rows, int64_t n) {
  const int64_t total = rows * n;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = r0 + t / n, j = t % n;
    T& o = out[i * n + j];
    // ||g_i - g_j||^2 = |g_i|^2 + |g_j|^2 - 2 <s_i e_i, s_j e_j> (1 + <h_i, h_j>)
    const T d2 = diag_sq[i] + diag_sq[j] - T(2) * (o * (T(1) + hh[t]));
    o = i == j ? T(0) : dsqrt(d2 > T(0) ? d2 : T(0));
  }
}

template <typename T>
__global__ void hessian_kernel(const T* __restrict__ h, const T* __restrict__ q, const int64_t* __restrict__ coords,
                               const T* __restrict__ scale, int64_t n, int64_t C, int64_t D, int64_t K,
                               T* __restrict__ out) {
  const int64_t total = n * K;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / K, k = t % K, coord = coords[k];
    // coordinate c < C: bias of class c; C + c D + d: weight[c, d]
    // (with D = 0 every coordinate is a bias one: h is read, and D divides, for weights only)
    const bool bias = coord < C;
    const int64_t w = bias ? 0 : coord - C;
    const int64_t cls = bias ? coord : w / D;
    T v = q[i * C + cls];
    if (!bias) {
      const T hd = h[i * D + w % D];
      v *= hd * hd;
    }
    if (scale) v *= scale[i];
    out[t] = v;
  }
}

constexpr int kTile = 32;   // 32 x 32 outputs per block
constexpr int kRowsPerThread = 4;
constexpr int kChunk = 32;  // K values staged in shared memory at a time

// out_ij (=|+=) alpha sum_k |a_ik - b_jk|: a block stages 32 rows of a and 32 rows of b, 32
// coordinates at a time; thread (tx, ty) owns column tx and rows ty + 8 r.
template <typename T>
__global__ void l1_kernel(const T* __restrict__ a, int64_t n, const T* __restrict__ b, int64_t m, int64_t K, T alpha,
                          bool accumulate, T* __restrict__ out) {
  __shared__ T as[kTile][kChunk + 1];
  __shared__ T bs[kTile][kChunk + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTile, j0 = static_cast<int64_t>(blockIdx.x) * kTile;
  T acc[kRowsPerThread] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    for (int r = ty; r < kTile; r += blockDim.y) {
      const int64_t k = k0 + tx;
      as[r][tx] = (i0 + r < n && k < K) ? a[(i0 + r) * K + k] : T(0);
      bs[r][tx] = (j0 + r < m && k < K) ? b[(j0 + r) * K + k] : T(0);
    }
    __syncthreads();
    const int kk_end = static_cast<int>(K - k0 < kChunk ? K - k0 : kChunk);
    for (int kk = 0; kk < kk_end; ++kk) {
      const T bv = bs[tx][kk];
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) acc[r] += fabs(as[ty + r * 8][kk] - bv);
    }
    __syncthreads();
  }
  const int64_t j = j0 + tx;
  if (j >= m) return;
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const int64_t i = i0 + ty + r * 8;
    if (i < n) out[i * m + j] = accumulate ? out[i * m + j] + alpha * acc[r] : alpha * acc[r];
  }
}

}  // namespace

template <typename T>
cudaError_t gram_rows_to_distance(T* out, const T* hh_tile, const T* diag_sq, int64_t r0, int64_t r1, int64_t n,
                                  cudaStream_t stream) {
  if (r1 <= r0 || n == 0) return cudaSuccess;
  gram_kernel<T><<<blocks_for((r1 - r0) * n, kThreads), kThreads, 0, stream>>>(out, hh_tile, diag_sq, r0, r1 - r0, n);
  return cudaGetLastError();
}

template <typename T>
cudaError_t hessian_diag_coords(const T* embeddings, const T* q, const int64_t* coords, const T* scale, int64_t n,
                                int64_t C, int64_t D, int64_t K, T* out, cudaStream_t stream) {
  if (n * K == 0) return cudaSuccess;
  hessian_kernel<T><<<blocks_for(n * K, kThreads), kThreads, 0, stream>>>(embeddings, q, coords, scale, n, C, D, K,
                                                                          out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t pairwise_l1(const T* a, int64_t n, const T* b, int64_t m, int64_t K, T alpha, bool accumulate, T* out,
                        cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  const dim3 block(kTile, kTile / kRowsPerThread);
  const dim3 grid(static_cast<unsigned int>((m + kTile - 1) / kTile), static_cast<unsigned int>((n + kTile - 1) / kTile));
  l1_kernel<T><<<grid, block, 0, stream>>>(a, n, b, m, K, alpha, accumulate, out);
  return cudaGetLastError();
}

#define LCMAT_INSTANTIATE(T)                                                                                      \
  template cudaError_t gram_rows_to_distance<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, cudaStream_t);  \
  template cudaError_t hessian_diag_coords<T>(const T*, const T*, const int64_t*, const T*, int64_t, int64_t,     \
                                              int64_t, int64_t, T*, cudaStream_t);                                \
  template cudaError_t pairwise_l1<T>(const T*, int64_t, const T*, int64_t, int64_t, T, bool, T*, cudaStream_t);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cuda
}  // namespace lcmat
