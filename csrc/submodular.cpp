// The submodular family's op schemas and CPU bindings (greedy graph cut and log-determinant,
// csrc/cpu/submodular.cpp; reference lcmat/reference/submodular.py). Arguments are checked in
// ops_common.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/cpu_kernels.h"
#include "ops_common.h"

namespace lcmat {
namespace {

using at::Tensor;

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
  TORCH_CHECK(failed < 0, "sim: S + reg I is not positive definite (no positive pivot at pick ", failed + 1,
              "); raise reg or use a positive semi-definite similarity");
  return {picks, objective};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lcmat, m) {
  m.def("graph_cut_greedy(Tensor sim, int k, float lam, bool lazy) -> (Tensor, Tensor)");
  m.def("log_determinant_greedy(Tensor sim, int k, float reg, bool lazy) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lcmat, CPU, m) {
  m.impl("graph_cut_greedy", &graph_cut_greedy_cpu);
  m.impl("log_determinant_greedy", &log_determinant_greedy_cpu);
}

}  // namespace lcmat
