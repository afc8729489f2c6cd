// ATen-side helpers of the CUDA bindings (the WITH_CUDA parts of csrc/<family>.cpp): the launch
// status check and the stream the launchers of csrc/cuda/*.cu run on.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/cuda_kernels.h"

namespace lcmat {

inline void check_cuda(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, "lcmat: CUDA error in ", what, ": ", cudaGetErrorString(status));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace lcmat
