// The op sinkhorn_plan: P = exp((f_i + g_j - M_ij) / reg) from Sinkhorn potentials, one fused pass
// over the cost (the reference, lcmat/reference/sinkhorn.py, makes four elementwise passes).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/cpu_kernels.h"

namespace lcmat {
namespace {

using at::Tensor;

void check_plan_args(const Tensor& f, const Tensor& g, const Tensor& M, double reg) {
  TORCH_CHECK(M.scalar_type() == at::kFloat || M.scalar_type() == at::kDouble,
              "M: must be float32 or float64, got ", M.scalar_type());
  TORCH_CHECK(M.dim() == 2 || M.dim() == 3, "M: must be [n, m] or [B, n, m], got shape ", M.sizes());
  TORCH_CHECK(reg > 0 && std::isfinite(reg), "reg: must be a positive number, got ", reg);
  const auto rows = M.sizes().slice(0, M.dim() - 1);
  std::vector<int64_t> cols(M.sizes().begin(), M.sizes().end() - 2);
  cols.push_back(M.size(-1));
  TORCH_CHECK(f.sizes() == rows, "f: must have shape ", rows, " (M's without its last axis), got ", f.sizes());
  TORCH_CHECK(g.sizes() == at::IntArrayRef(cols), "g: must have shape ", at::IntArrayRef(cols),
              " (M's without its second-last axis), got ", g.sizes());
  TORCH_CHECK(at::isFloatingType(f.scalar_type()) && at::isFloatingType(g.scalar_type()),
              "f, g: must be floating point, got ", f.scalar_type(), " and ", g.scalar_type());
}

Tensor sinkhorn_plan_cpu(const Tensor& f_in, const Tensor& g_in, const Tensor& M_in, double reg) {
  check_plan_args(f_in, g_in, M_in, reg);
  const Tensor M = M_in.contiguous();
  const Tensor f = f_in.to(M.scalar_type()).contiguous();
  const Tensor g = g_in.to(M.scalar_type()).contiguous();
  Tensor P = at::empty_like(M);
  const int64_t batch = M.dim() == 3 ? M.size(0) : 1, n = M.size(-2), m = M.size(-1);
  constexpr int64_t kParallelWork = 1 << 16;  // below this, threads cost more than they give
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "sinkhorn_plan", [&] {
    cpu::sinkhorn_plan<scalar_t>(f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), M.data_ptr<scalar_t>(),
                                 batch, n, m, static_cast<scalar_t>(reg), M.numel() >= kParallelWork,
                                 P.data_ptr<scalar_t>());
  });
  return P;
}

}  // namespace
}  // namespace lcmat

TORCH_LIBRARY_FRAGMENT(lcmat, m) {
  m.def("sinkhorn_plan(Tensor f, Tensor g, Tensor M, float reg) -> Tensor");
}

TORCH_LIBRARY_IMPL(lcmat, CPU, m) {
  m.impl("sinkhorn_plan", &lcmat::sinkhorn_plan_cpu);
}
