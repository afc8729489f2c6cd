// The submodular family's op schemas and CPU bindings (greedy graph cut and log-determinant,
// csrc/cpu/submodular.cpp; reference lcmat/reference/submodular.py).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/cpu_kernels.h"
#include "ops_common.h"

namespace lcmat {
namespace {

using at::Tensor;

Tensor checked_similarity(const Tensor& sim_in, int64_t k) {
  check_float(sim_in, "sim");
  check_dim(sim_in, 2, "sim");
  TORCH_CHECK(sim_in.size(0) == sim_in.size(1), "sim: must be square, got shape ", sim_in.sizes());
  TORCH_CHECK(k >= 0 && k <= sim_in.size(0), "k: must lie in [0, ", sim_in.size(0), "], got ", k);
  return sim_in.contiguous();
}

std::tuple<Tensor, Tensor> graph_cut_greedy_cpu(const Tensor& sim_in, int64_t k, double lam, bool lazy) {
  const Tensor sim = checked_similarity(sim_in, k);
  TORCH_CHECK(lam >= 0, "lam: must be >= 0, got ", lam);
  Tensor picks = at::empty({k}, sim.options().dtype(at::kLong)), objective = at::empty({k}, sim.options());
  AT_DISPATCH_FLOATING_TYPES(sim.scalar_type(), "graph_cut_greedy", [&] {
    cpu::graph_cut_greedy(sim.data_ptr<scalar_t>(), sim.size(0), k, lam, lazy, picks.data_ptr<int64_t>(),
                          objective.data_ptr<scalar_t>());
  });
  return {picks, objective};
}

std::tuple<Tensor, Tensor> log_determinant_greedy_cpu(const Tensor& sim_in, int64_t k, double reg, bool lazy) {
  const Tensor sim = checked_similarity(sim_in, k);
  TORCH_CHECK(reg > 0, "reg: must be > 0, got ", reg);
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
