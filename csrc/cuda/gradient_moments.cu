// Per-class mean and variance of last-layer per-sample gradients and their backward
// (lcmat/reference/gradient_moments.py). Column j of a class block is the bias for j = 0 and
// weight column j - 1 otherwise (the bias's "embedding" is the constant 1).
//   moments     block (k, c) x column tile, one thread per column: walks the members of class k.
//   grad_h      block per row i x column tile, one thread per embedding column: loops over c.
//   grad_e      one warp per (i, c): a dot product over the D + 1 columns.
#include "device_utils.cuh"
#include "gradient_moments.h"

namespace lcmat {
namespace cuda {

namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T column(const T* hi, int64_t j) {
  return j == 0 ? T(1) : hi[j - 1];
}

template <typename T>
__global__ void moments_kernel(const T* __restrict__ h, const T* __restrict__ e, const int64_t* __restrict__ order,
                               const int64_t* __restrict__ start, int64_t C, int64_t D, T* __restrict__ mean,
                               T* __restrict__ var) {
  const int64_t k = blockIdx.x / C, c = blockIdx.x % C;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j > D) return;
  const int64_t lo = start[k], hi_ = start[k + 1];
  T s1 = 0, s2 = 0;
  for (int64_t r = lo; r < hi_; ++r) {
    const int64_t i = order[r];
    const T ec = e[i * C + c];
    const T x = column(h + i * D, j);
    s1 += ec * x;
    s2 += ec * ec * x * x;
  }
  const T inv = hi_ > lo ? T(1) / T(hi_ - lo) : T(0);
  const T m = s1 * inv;
  const int64_t P = C * (D + 1);
  const int64_t at = k * P + (j == 0 ? c : C + c * D + (j - 1));
  mean[at] = m;
  var[at] = s2 * inv - m * m;
}

template <typename T>
__global__ void grad_h_kernel(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ h,
                              const T* __restrict__ e, const int64_t* __restrict__ labels, const T* __restrict__ inv,
                              int64_t C, int64_t D, T* __restrict__ grad_h) {
  const int64_t i = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const int64_t P = C * (D + 1);
  const T* Aw = A + labels[i] * P + C + d;
  const T* Bw = B + labels[i] * P + C + d;
  const T x = h[i * D + d];
  T acc = 0;
  for (int64_t c = 0; c < C; ++c) {
    const T ec = e[i * C + c];
    acc += ec * Aw[c * D] + T(2) * ec * ec * x * Bw[c * D];
  }
  grad_h[i * D + d] = acc * inv[i];
}

template <typename T>
__global__ void grad_e_kernel(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ h,
                              const T* __restrict__ e, const int64_t* __restrict__ labels, const T* __restrict__ inv,
                              int64_t n, int64_t C, int64_t D, T* __restrict__ grad_e) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (warp >= n * C) return;
  const int64_t i = warp / C, c = warp % C;
  const int64_t P = C * (D + 1);
  const T* Ak = A + labels[i] * P;
  const T* Bk = B + labels[i] * P;
  const T* hi = h + i * D;
  T lin = 0, quad = 0;
  for (int64_t d = lane; d < D; d += kWarp) {
    lin += Ak[C + c * D + d] * hi[d];
    quad += Bk[C + c * D + d] * hi[d] * hi[d];
  }
  lin = warp_sum(lin);
  quad = warp_sum(quad);
  if (lane == 0) {
    const T ec = e[i * C + c];
    grad_e[i * C + c] = inv[i] * (Ak[c] + lin + T(2) * ec * (Bk[c] + quad));
  }
}

unsigned int tiles(int64_t width) { return static_cast<unsigned int>((width + kThreads - 1) / kThreads); }

}  // namespace

template <typename T>
cudaError_t gradient_moments(const T* h, const T* e, const int64_t* order, const int64_t* start, int64_t n,
                             int64_t C, int64_t D, T* mean, T* var, cudaStream_t stream) {
  if (C == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned int>(C * C), tiles(D + 1));
  moments_kernel<T><<<grid, kThreads, 0, stream>>>(h, e, order, start, C, D, mean, var);
  return cudaGetLastError();
}

template <typename T>
cudaError_t gradient_moments_backward(const T* A, const T* B, const T* h, const T* e, const int64_t* labels,
                                      const T* inv, int64_t n, int64_t C, int64_t D, T* grad_h, T* grad_e,
                                      cudaStream_t stream) {
  if (n == 0 || C == 0) return cudaSuccess;
  if (D > 0) {
    grad_h_kernel<T><<<dim3(static_cast<unsigned int>(n), tiles(D)), kThreads, 0, stream>>>(A, B, h, e, labels, inv,
                                                                                          C, D, grad_h);
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return status;
  }
  grad_e_kernel<T><<<blocks_for(n * C, kThreads / kWarp), kThreads, 0, stream>>>(A, B, h, e, labels, inv, n, C, D,
                                                                                  grad_e);
  return cudaGetLastError();
}

#define LCMAT_INSTANTIATE(T)                                                                                        \
  template cudaError_t gradient_moments<T>(const T*, const T*, const int64_t*, const int64_t*, int64_t, int64_t, \
                                           int64_t, T*, T*, cudaStream_t);                                        \
  template cudaError_t gradient_moments_backward<T>(const T*, const T*, const T*, const T*, const int64_t*,       \
                                                    const T*, int64_t, int64_t, int64_t, T*, T*, cudaStream_t);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cuda
}  // namespace lcmat
