// Launchers of csrc/cuda/gradient_moments.cu (raw device pointers, no torch header), bound to the
// ops in csrc/cuda/gradient_moments_ops.cpp. Mathematics: lcmat/reference/gradient_moments.py.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace lcmat {
namespace cuda {

// h [n, D], e [n, C]; order [n] the rows sorted by label and start [C + 1] the class offsets into
// it. Writes mean and var [C, P], P = C (D + 1), rows laid out as [bias (C); weight (C x D)].
template <typename T>
cudaError_t gradient_moments(const T* h, const T* e, const int64_t* order, const int64_t* start, int64_t n,
                             int64_t C, int64_t D, T* mean, T* var, cudaStream_t stream);

// A = dL/dmean - 2 mean dL/dvar, B = dL/dvar ([C, P]); inv [n] = 1 / n_{y_i}. Writes grad_h [n, D]
// and grad_e [n, C] (the gradient with respect to e; the softmax backward is left to the caller).
template <typename T>
cudaError_t gradient_moments_backward(const T* A, const T* B, const T* h, const T* e, const int64_t* labels,
                                      const T* inv, int64_t n, int64_t C, int64_t D, T* grad_h, T* grad_e,
                                      cudaStream_t stream);

}  // namespace cuda
}  // namespace lcmat
