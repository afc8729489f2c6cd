// Per-class mean and variance of last-layer per-sample gradients (lcmat/reference/gradient_moments.py)
// on raw pointers: no torch header, like the other csrc/cpu kernels.
#pragma once

#include <cstdint>

namespace lcmat {
namespace cpu {

// h [n, D], e [n, C] (softmax error factors), labels [n] in [0, C). Writes mean and var, both
// [C, P] with P = C (D + 1), laid out as [bias (C); weight (C x D)] per row. Labels must be checked.
template <typename T>
void gradient_moments(const T* h, const T* e, const int64_t* labels, int64_t n, int64_t C, int64_t D, T* mean,
                      T* var);

// A = dL/dmean - 2 mean dL/dvar and B = dL/dvar ([C, P] each), h, e, labels as above.
// Writes grad_h [n, D] and grad_z [n, C] (through the softmax: p = e + onehot(y)).
template <typename T>
void gradient_moments_backward(const T* A, const T* B, const T* h, const T* e, const int64_t* labels, int64_t n,
                               int64_t C, int64_t D, T* grad_h, T* grad_z);

}  // namespace cpu
}  // namespace lcmat
