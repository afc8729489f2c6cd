// ATen-side helpers of the CPU bindings (csrc/<family>.cpp): result and scratch memory, and the
// choice between the packed AVX-512 Gram kernel and ATen's GEMM. The kernels themselves are in
// csrc/cpu/ and see no torch header.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "cpu/cpu_kernels.h"

namespace lcmat {

// An n x m result matrix. On Linux, transparent huge pages are requested before its first touch,
// so that a fresh matrix of hundreds of MB costs a few page faults per 2 MB instead of one per
// 4 KB. Only a hint.
inline at::Tensor empty_matrix(int64_t n, int64_t m, const at::TensorOptions& options) {
  at::Tensor out = at::empty({n, m}, options);
#ifdef __linux__
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t start = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t begin = (start + kHuge - 1) & ~(kHuge - 1), end = (start + out.nbytes()) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
  return out;
}

// Scratch tensors (Gram panels, row-block buffers, workspaces) of the given sizes, carved from
// memory that each thread keeps between calls: allocated afresh, their tens of MB would be
// page-faulted in again for every class. The memory grows to the largest call seen and is never
// returned; the tensors are valid until the thread's next call.
inline std::vector<at::Tensor> scratch_tensors(const std::vector<int64_t>& numels, const at::TensorOptions& options) {
  thread_local std::vector<char> memory;
  auto bytes = [&](int64_t numel) { return (static_cast<size_t>(numel) * options.dtype().itemsize() + 63) / 64 * 64; };
  size_t total = 0;
  for (const int64_t numel : numels) total += bytes(numel);
  if (memory.size() < total) {
    memory = std::vector<char>();
    memory.resize(total);
  }
  std::vector<at::Tensor> out;
  size_t at = 0;
  for (const int64_t numel : numels) {
    out.push_back(at::from_blob(memory.data() + at, {numel}, options));
    at += bytes(numel);
  }
  return out;
}

// a a^T, rows [r0, r1) and columns [r0, n): cpu::gram_upper on panels packed once per class where
// the build has AVX-512 (float, and at least 32 columns: below that the product is bound by its
// writes), else ATen's GEMM.
struct GramOperand {
  const at::Tensor& a;
  at::Tensor panels;  // undefined: ATen's GEMM
  static bool packs(const at::Tensor& a) {
    return a.scalar_type() == at::kFloat && a.size(1) >= 32 && cpu::built_with_avx512();
  }
  static int64_t panels_size(const at::Tensor& a) {
    return packs(a) ? cpu::gram_panels_size(a.size(0), a.size(1)) : 0;
  }
  GramOperand(const at::Tensor& a_, const at::Tensor& memory) : a(a_) {
    if (packs(a)) {
      panels = memory;
      cpu::gram_pack(a.data_ptr<float>(), a.size(0), a.size(1), panels.data_ptr<float>());
    }
  }
  void upper_rows(int64_t r0, int64_t r1, at::Tensor& out) const {
    if (panels.defined()) {
      cpu::gram_upper(panels.data_ptr<float>(), a.size(0), a.size(1), r0, r1, out.data_ptr<float>());
    } else {
      at::mm_out(out, a.narrow(0, r0, r1 - r0), a.narrow(0, r0, a.size(0) - r0).t());
    }
  }
};

}  // namespace lcmat
