// Last-layer per-sample quantities (lcmat/reference/last_layer.py), one warp per row:
// p = softmax(z), e = p - onehot(y), q = p (1 - p).
#include "cuda_kernels.h"
#include "device_utils.cuh"

namespace lcmat {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarp;

// max_c z_c and sum_c exp(z_c - max) of one row, reduced across the warp.
template <typename T>
__device__ void softmax_stats(const T* z, int64_t C, int lane, T* mx_out, T* sum_out) {
  T mx = neg_inf<T>();
  for (int64_t c = lane; c < C; c += kWarp) mx = z[c] > mx ? z[c] : mx;
  mx = warp_max(mx);
  T s = 0;
  for (int64_t c = lane; c < C; c += kWarp) s += dexp(z[c] - mx);
  *mx_out = mx;
  *sum_out = warp_sum(s);
}

template <typename T>
__global__ void factors_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels, int64_t n,
                               int64_t C, T* __restrict__ e, T* __restrict__ q) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t i = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp; i < n; i += warps) {
    const T* z = logits + i * C;
    T mx, s;
    softmax_stats(z, C, lane, &mx, &s);
    const T inv = T(1) / s;
    const int64_t y = labels[i];
    for (int64_t c = lane; c < C; c += kWarp) {
      const T p = dexp(z[c] - mx) * inv;
      q[i * C + c] = p * (T(1) - p);
      e[i * C + c] = c == y ? p - T(1) : p;
    }
  }
}

template <typename T>
__global__ void grad_norms_kernel(const T* __restrict__ h, const T* __restrict__ logits,
                                  const int64_t* __restrict__ labels, const T* __restrict__ scale, int64_t n,
                                  int64_t C, int64_t D, T* __restrict__ grad_norm, T* __restrict__ error_norm) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t i = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp; i < n; i += warps) {
    const T* z = logits + i * C;
    T mx, s;
    softmax_stats(z, C, lane, &mx, &s);
    const T inv = T(1) / s;
    const int64_t y = labels[i];
    T e2 = 0;
    for (int64_t c = lane; c < C; c += kWarp) {
      const T p = dexp(z[c] - mx) * inv;
      const T ec = c == y ? p - T(1) : p;
      e2 += ec * ec;
    }
    e2 = warp_sum(e2);
    T h2 = 0;
    for (int64_t d = lane; d < D; d += kWarp) h2 += h[i * D + d] * h[i * D + d];
    h2 = warp_sum(h2);
    if (lane == 0) {
      const T err = dsqrt(e2);
      T grad = err * dsqrt(T(1) + h2);
      if (scale) grad *= fabs(scale[i]);
      error_norm[i] = err;
      grad_norm[i] = grad;
    }
  }
}

}  // namespace

template <typename T>
cudaError_t last_layer_factors(const T* logits, const int64_t* labels, int64_t n, int64_t C, T* e, T* q,
                               cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  factors_kernel<T><<<blocks_for(n, kWarpsPerBlock), kThreads, 0, stream>>>(logits, labels, n, C, e, q);
  return cudaGetLastError();
}

template <typename T>
cudaError_t last_layer_grad_norms(const T* embeddings, const T* logits, const int64_t* labels, const T* scale,
                                  int64_t n, int64_t C, int64_t D, T* grad_norm, T* error_norm, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  grad_norms_kernel<T><<<blocks_for(n, kWarpsPerBlock), kThreads, 0, stream>>>(embeddings, logits, labels, scale, n,
                                                                              C, D, grad_norm, error_norm);
  return cudaGetLastError();
}

#define LCMAT_INSTANTIATE(T)                                                                                \
  template cudaError_t last_layer_factors<T>(const T*, const int64_t*, int64_t, int64_t, T*, T*, cudaStream_t); \
  template cudaError_t last_layer_grad_norms<T>(const T*, const T*, const int64_t*, const T*, int64_t, int64_t,  \
                                                int64_t, T*, T*, cudaStream_t);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cuda
}  // namespace lcmat
