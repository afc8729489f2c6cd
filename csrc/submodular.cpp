// The submodular family's op schemas, CPU implementations (greedy graph cut and log-determinant,
// kernels in csrc/cpu/submodular.cpp; reference lcmat/reference/submodular.py) and, in CUDA builds,
// CUDA implementations (kernels in csrc/cuda/submodular.cu). Arguments are checked once for both
// backends in ops_common.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/cpu_kernels.h"
#include "ops_common.h"
#ifdef WITH_CUDA
#include "cuda_aten.h"
#endif

namespace lcmat {
namespace {

using at::Tensor;

// failed: the first pick (0-based) without a positive pivot, or -1.
void check_positive_pivots(int64_t failed) {
  TORCH_CHECK(failed < 0, "sim: S + reg I is not positive definite (no positive pivot at pick ", failed + 1,
              "); raise reg or use a positive semi-definite similarity");
}

std::tuple<Tensor, Tensor> graph_cut_greedy_cpu(const Tensor& sim_in, int64_t k, double lam, bool lazy) {
  const Tensor sim = graph_cut_greedy_args(sim_in, k, lam);
  Tensor picks = at::empty({k}, sim.options().dtype(at::kLong)), objective = at::empty({k}, sim.options());
  AT_DISPATCH_FLOATING_TYPES(sim.scalar_type(), "graph_cut_greedy", [&] {
    cpu::graph_cut_greedy(sim.data_ptr<scalar_t>(), sim.size(0), k, lam, lazy, picks.data_ptr<int64_t>(),
                          objective.data_ptr<scalar_t>());
  });
  return {picks, objective};
}

std::tuple<Tensor, Tensor> log_determinant_greedy_cpu(const Tensor& sim_in, int64_t k, double reg, bool lazy) {
  const Tensor sim = log_determinant_greedy_args(sim_in, k, reg);
  Tensor picks = at::empty({k}, sim.options().dtype(at::kLong)), objective = at::empty({k}, sim.options());
  int64_t failed = -1;
  AT_DISPATCH_FLOATING_TYPES(sim.scalar_type(), "log_determinant_greedy", [&] {
    failed = cpu::log_determinant_greedy(sim.data_ptr<scalar_t>(), sim.size(0), k, reg, lazy,
                                         picks.data_ptr<int64_t>(), objective.data_ptr<scalar_t>());
  });
  check_positive_pivots(failed);
  return {picks, objective};
}

#ifdef WITH_CUDA
// The device runs the naive greedy whatever `lazy` says: its picks are the lazy greedy's.
std::tuple<Tensor, Tensor> graph_cut_greedy_cuda(const Tensor& sim_in, int64_t k, double lam, bool lazy) {
  (void)lazy;
  const c10::cuda::CUDAGuard guard(sim_in.device());
  const Tensor sim = graph_cut_greedy_args(sim_in, k, lam);
  const int64_t n = sim.size(0), blocks = cuda::submodular_blocks(n);
  const auto opts = sim.options();
  Tensor picks = at::empty({k}, opts.dtype(at::kLong)), gains = at::empty({k}, opts.dtype(at::kDouble));
  if (k == 0) return {picks, at::empty({0}, opts)};
  Tensor work = at::empty({3 * n + blocks}, opts.dtype(at::kDouble));
  Tensor block_index = at::empty({blocks}, opts.dtype(at::kLong)), selected = at::empty({n}, opts.dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES(sim.scalar_type(), "graph_cut_greedy", [&] {
    check_cuda(cuda::graph_cut_greedy(sim.data_ptr<scalar_t>(), n, k, lam, work.data_ptr<double>(),
                                      block_index.data_ptr<int64_t>(), selected.data_ptr<uint8_t>(),
                                      picks.data_ptr<int64_t>(), gains.data_ptr<double>(), current_stream()),
               "graph_cut_greedy");
  });
  return {picks, gains.cumsum(0).to(sim.scalar_type())};  // f after each pick: the running sum of the gains
}

std::tuple<Tensor, Tensor> log_determinant_greedy_cuda(const Tensor& sim_in, int64_t k, double reg, bool lazy) {
  (void)lazy;
  const c10::cuda::CUDAGuard guard(sim_in.device());
  const Tensor sim = log_determinant_greedy_args(sim_in, k, reg);
  const int64_t n = sim.size(0), blocks = cuda::submodular_blocks(n);
  const auto opts = sim.options();
  Tensor picks = at::empty({k}, opts.dtype(at::kLong)), pivots = at::empty({k}, opts.dtype(at::kDouble));
  if (k == 0) return {picks, at::empty({0}, opts)};
  Tensor work = at::empty({(k + 1) * n + blocks}, opts.dtype(at::kDouble));
  Tensor block_index = at::empty({blocks}, opts.dtype(at::kLong)), selected = at::empty({n}, opts.dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES(sim.scalar_type(), "log_determinant_greedy", [&] {
    check_cuda(cuda::log_determinant_greedy(sim.data_ptr<scalar_t>(), n, k, reg, work.data_ptr<double>(),
                                            block_index.data_ptr<int64_t>(), selected.data_ptr<uint8_t>(),
                                            picks.data_ptr<int64_t>(), pivots.data_ptr<double>(), current_stream()),
               "log_determinant_greedy");
  });
  // The first pick whose pivot is not positive (NaN included), one host synchronisation.
  const Tensor bad = pivots.gt(0).logical_not().nonzero();
  check_positive_pivots(bad.numel() ? bad[0][0].item<int64_t>() : -1);
  return {picks, pivots.log().cumsum(0).to(sim.scalar_type())};  // f after each pick: sum of log pivots
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(lcmat, m) {
  m.def("graph_cut_greedy(Tensor sim, int k, float lam, bool lazy) -> (Tensor, Tensor)");
  m.def("log_determinant_greedy(Tensor sim, int k, float reg, bool lazy) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lcmat, CPU, m) {
  m.impl("graph_cut_greedy", &graph_cut_greedy_cpu);
  m.impl("log_determinant_greedy", &log_determinant_greedy_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(lcmat, CUDA, m) {
  m.impl("graph_cut_greedy", &graph_cut_greedy_cuda);
  m.impl("log_determinant_greedy", &log_determinant_greedy_cuda);
}
#endif

}  // namespace lcmat
