// Log-domain Sinkhorn on the device (lcmat/reference/sinkhorn.py), same iteration and fused
// convergence check as csrc/cpu/sinkhorn.cpp:
//   row pass (one warp per row):   f_i = reg log a_i - reg LSE_j((g_j - M_ij) / reg), and, on a
//                                  checked iteration, sum_i |exp((f_i + reg LSE_j) / reg) - a_i|
//   column pass (one thread per column and chunk of rows, online max/sum), then a merge:
//                                  g_j = reg log b_j - reg LSE_i((f_i - M_ij) / reg)
#include <cmath>
#include <limits>

#include "cuda_kernels.h"
#include "device_utils.cuh"

namespace lcmat {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr int64_t kChunkRows = 512;

inline int64_t col_chunks(int64_t n) { return n == 0 ? 1 : (n + kChunkRows - 1) / kChunkRows; }

size_t align_up(size_t x) { return (x + 255) / 256 * 256; }

// Workspace layout: log_a [n], log_b [m], f_new [n] (T); chunk maxima [chunks m] (T);
// chunk sums [chunks m] and the error numerator [1] (double).
template <typename T>
struct Work {
  T *log_a, *log_b, *f_new, *cmax;
  double *csum, *err_num;
  Work(void* base, int64_t n, int64_t m) {
    char* p = static_cast<char*>(base);
    const int64_t c = col_chunks(n);
    log_a = reinterpret_cast<T*>(p);
    p += align_up(sizeof(T) * n);
    log_b = reinterpret_cast<T*>(p);
    p += align_up(sizeof(T) * m);
    f_new = reinterpret_cast<T*>(p);
    p += align_up(sizeof(T) * n);
    cmax = reinterpret_cast<T*>(p);
    p += align_up(sizeof(T) * c * m);
    csum = reinterpret_cast<double*>(p);
    p += align_up(sizeof(double) * c * m);
    err_num = reinterpret_cast<double*>(p);
  }
};

template <typename T>
__global__ void log_mass_kernel(const T* __restrict__ x, int64_t n, T* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = x[i] > T(0) ? dlog(x[i]) : neg_inf<T>();
}

template <typename T>
__global__ void row_kernel(const T* __restrict__ M, const T* __restrict__ a, const T* __restrict__ log_a,
                           const T* __restrict__ f, const T* __restrict__ g, int64_t n, int64_t m, T reg, bool check,
                           T* __restrict__ f_new, double* __restrict__ err_num) {
  __shared__ double block_err[kWarpsPerBlock];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  const T inv_reg = T(1) / reg;
  double err = 0;
  for (int64_t i = blockIdx.x * kWarpsPerBlock + warp; i < n; i += warps) {
    const T* row = M + i * m;
    T mx = neg_inf<T>();
    for (int64_t j = lane; j < m; j += kWarp) {
      const T v = g[j] - row[j];
      mx = v > mx ? v : mx;
    }
    mx = warp_max(mx);
    T lse = neg_inf<T>();  // reg LSE_j((g_j - M_ij) / reg)
    if (mx != neg_inf<T>()) {
      T s = 0;
      for (int64_t j = lane; j < m; j += kWarp) s += dexp((g[j] - row[j] - mx) * inv_reg);
      lse = mx + reg * dlog(warp_sum(s));
    }
    if (lane == 0) {
      if (check) {
        const T z = f[i] + lse;
        const double mass = z == neg_inf<T>() ? 0.0 : exp(static_cast<double>(z) / static_cast<double>(reg));
        err += fabs(mass - static_cast<double>(a[i]));
      }
      f_new[i] = reg * log_a[i] - lse;
    }
  }
  if (!check) return;
  if (lane == 0) block_err[warp] = err;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0;
    for (int w = 0; w < kWarpsPerBlock; ++w) s += block_err[w];
    atomicAdd(err_num, s);
  }
}

// Per column and chunk of rows: the running max and the sum of exp((f_i - M_ij - max) / reg).
template <typename T>
__global__ void col_kernel(const T* __restrict__ M, const T* __restrict__ f, int64_t n, int64_t m, T reg,
                           T* __restrict__ cmax, double* __restrict__ csum) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (j >= m) return;
  const T inv_reg = T(1) / reg;
  const int64_t i0 = chunk * kChunkRows, i1 = i0 + kChunkRows < n ? i0 + kChunkRows : n;
  T mx = neg_inf<T>(), s = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const T v = f[i] - M[i * m + j];
    if (v > mx) {
      s = (mx == neg_inf<T>() ? T(0) : s * dexp((mx - v) * inv_reg)) + T(1);
      mx = v;
    } else if (v != neg_inf<T>()) {
      s += dexp((v - mx) * inv_reg);
    }
  }
  cmax[chunk * m + j] = mx;
  csum[chunk * m + j] = s;
}

template <typename T>
__global__ void col_merge_kernel(const T* __restrict__ cmax, const double* __restrict__ csum, int64_t chunks,
                                 int64_t m, const T* __restrict__ log_b, T reg, T* __restrict__ g) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (j >= m) return;
  T mx = neg_inf<T>();
  for (int64_t c = 0; c < chunks; ++c) mx = cmax[c * m + j] > mx ? cmax[c * m + j] : mx;
  T lse = neg_inf<T>();
  if (mx != neg_inf<T>()) {
    double s = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const T cm = cmax[c * m + j];
      if (cm != neg_inf<T>()) s += csum[c * m + j] * exp(static_cast<double>(cm - mx) / static_cast<double>(reg));
    }
    lse = static_cast<T>(static_cast<double>(mx) + static_cast<double>(reg) * log(s));
  }
  g[j] = reg * log_b[j] - lse;
}

template <typename T>
__global__ void sq_euclid_kernel(T* __restrict__ xy, const T* __restrict__ xx, const T* __restrict__ yy, int64_t n,
                                 int64_t m) {
  const int64_t total = n * m;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T v = (xx[t / m] + yy[t % m]) - T(2) * xy[t];
    xy[t] = v > T(0) ? v : T(0);
  }
}

}  // namespace

size_t sinkhorn_workspace_size(int64_t n, int64_t m) {
  const size_t c = static_cast<size_t>(col_chunks(n));
  const size_t t = sizeof(double);  // room for either dtype
  return align_up(t * n) * 2 + align_up(t * m) + align_up(t * c * m) + align_up(sizeof(double) * c * m) + 256;
}

template <typename T>
cudaError_t sinkhorn_solve(const T* a, const T* b, double sum_a, int64_t n, int64_t m, const T* M,
                           const SinkhornOptions& opt, void* workspace, T* f, T* g, int64_t* n_iter, double* err,
                           cudaStream_t stream) {
  *n_iter = 0;
  *err = std::numeric_limits<double>::infinity();
  cudaError_t status = cudaMemsetAsync(f, 0, sizeof(T) * n, stream);
  if (status == cudaSuccess) status = cudaMemsetAsync(g, 0, sizeof(T) * m, stream);
  if (status != cudaSuccess || opt.max_iter <= 0 || n == 0 || m == 0) return status;
  Work<T> w(workspace, n, m);
  const T reg = static_cast<T>(opt.reg);
  const int64_t chunks = col_chunks(n);
  log_mass_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(a, n, w.log_a);
  log_mass_kernel<T><<<blocks_for(m, kThreads), kThreads, 0, stream>>>(b, m, w.log_b);
  const unsigned int row_blocks = blocks_for(n, kWarpsPerBlock);
  const dim3 col_grid(static_cast<unsigned int>((m + kThreads - 1) / kThreads), static_cast<unsigned int>(chunks));
  const unsigned int merge_blocks = static_cast<unsigned int>((m + kThreads - 1) / kThreads);
  int64_t it = 0;
  bool check = false;
  while (true) {
    if (check && (status = cudaMemsetAsync(w.err_num, 0, sizeof(double), stream)) != cudaSuccess) return status;
    row_kernel<T><<<row_blocks, kThreads, 0, stream>>>(M, a, w.log_a, f, g, n, m, reg, check, w.f_new, w.err_num);
    if (check) {
      double num = 0;
      if ((status = cudaMemcpyAsync(&num, w.err_num, sizeof(double), cudaMemcpyDeviceToHost, stream)) != cudaSuccess)
        return status;
      if ((status = cudaStreamSynchronize(stream)) != cudaSuccess) return status;
      *err = num / sum_a;
      if (!(*err > opt.tol)) break;  // converged (a NaN error stops too, as in the reference)
    }
    if (it == opt.max_iter) break;
    if ((status = cudaMemcpyAsync(f, w.f_new, sizeof(T) * n, cudaMemcpyDeviceToDevice, stream)) != cudaSuccess)
      return status;
    ++it;
    col_kernel<T><<<col_grid, kThreads, 0, stream>>>(M, f, n, m, reg, w.cmax, w.csum);
    col_merge_kernel<T><<<merge_blocks, kThreads, 0, stream>>>(w.cmax, w.csum, chunks, m, w.log_b, reg, g);
    if ((status = cudaGetLastError()) != cudaSuccess) return status;
    check = it % opt.check_every == 0 || it == opt.max_iter;
  }
  *n_iter = it;
  return cudaGetLastError();
}

template <typename T>
cudaError_t squared_euclidean_from_dot(T* xy, const T* xx, const T* yy, int64_t n, int64_t m, cudaStream_t stream) {
  if (n * m == 0) return cudaSuccess;
  sq_euclid_kernel<T><<<blocks_for(n * m, kThreads), kThreads, 0, stream>>>(xy, xx, yy, n, m);
  return cudaGetLastError();
}

#define LCMAT_INSTANTIATE(T)                                                                                       \
  template cudaError_t sinkhorn_solve<T>(const T*, const T*, double, int64_t, int64_t, const T*,                   \
                                         const SinkhornOptions&, void*, T*, T*, int64_t*, double*, cudaStream_t);  \
  template cudaError_t squared_euclidean_from_dot<T>(T*, const T*, const T*, int64_t, int64_t, cudaStream_t);
LCMAT_INSTANTIATE(float)
LCMAT_INSTANTIATE(double)
#undef LCMAT_INSTANTIATE

}  // namespace cuda
}  // namespace lcmat
