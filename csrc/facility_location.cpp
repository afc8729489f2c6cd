// The facility_location ops (the greedy on one n x m block and on a batch of blocks): schemas, CPU
// implementations (kernels in csrc/cpu/facility_location.cpp) and, in CUDA builds, CUDA
// implementations (kernels in csrc/cuda/facility_location.cu). Arguments are checked once for
// both backends in ops_common.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "ops_common.h"
#ifdef WITH_CUDA
#include "cuda_aten.h"
#endif

namespace lcmat {
namespace {

using at::Tensor;
using std::optional;

std::tuple<Tensor, Tensor, Tensor> facility_location_greedy_cpu(const Tensor& dist_in, int64_t k,
                                                                optional<double> L, bool lazy) {
  const Tensor dist = facility_location_greedy_args(dist_in, k);
  const int64_t n = dist.size(0), m = dist.size(1);
  Tensor picks = at::empty({k}, dist.options().dtype(at::kLong));
  Tensor objective = at::empty({k}, dist.options()), weights = at::empty({k}, dist.options());
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "facility_location_greedy", [&] {
    cpu::facility_location_greedy(dist.data_ptr<scalar_t>(), n, m, k, L.has_value(), L.value_or(0.0), lazy,
                                  picks.data_ptr<int64_t>(), objective.data_ptr<scalar_t>(),
                                  weights.data_ptr<scalar_t>());
  });
  return {picks, objective, weights};
}

GreedyBatch facility_location_greedy_batch_cpu(const std::vector<Tensor>& dists, const std::vector<int64_t>& ks,
                                               optional<double> L, bool lazy) {
  const std::vector<Tensor> blocks = greedy_batch_blocks(dists, ks);
  std::vector<Tensor> picks, objective, weights;
  for (size_t b = 0; b < blocks.size(); ++b) {
    picks.push_back(at::empty({ks[b]}, blocks[b].options().dtype(at::kLong)));
    objective.push_back(at::empty({ks[b]}, blocks[b].options()));
    weights.push_back(at::empty({ks[b]}, blocks[b].options()));
  }
  if (blocks.empty()) return {picks, objective, weights};
  AT_DISPATCH_FLOATING_TYPES(blocks[0].scalar_type(), "facility_location_greedy_batch", [&] {
    std::vector<cpu::GreedyBlock<scalar_t>> raw;
    for (size_t b = 0; b < blocks.size(); ++b)
      raw.push_back({blocks[b].data_ptr<scalar_t>(), blocks[b].size(0), blocks[b].size(1), ks[b],
                     picks[b].data_ptr<int64_t>(), objective[b].data_ptr<scalar_t>(), weights[b].data_ptr<scalar_t>()});
    cpu::facility_location_greedy_batch(raw.data(), static_cast<int64_t>(raw.size()), L.has_value(), L.value_or(0.0),
                                        lazy);
  });
  return {picks, objective, weights};
}

#ifdef WITH_CUDA
std::tuple<Tensor, Tensor, Tensor> facility_location_greedy_cuda(const Tensor& dist_in, int64_t k, optional<double> L,
                                                                 bool lazy) {
  (void)lazy;  // the device runs the naive greedy; its picks are the lazy greedy's
  const c10::cuda::CUDAGuard guard(dist_in.device());
  const Tensor dist = facility_location_greedy_args(dist_in, k);
  const int64_t n = dist.size(0), m = dist.size(1);
  const auto opts = dist.options();
  Tensor picks = at::empty({k}, opts.dtype(at::kLong));
  Tensor objective = at::empty({k}, opts), weights = at::empty({k}, opts);
  if (k == 0) return {picks, objective, weights};
  const Tensor Lt = L ? at::full({}, *L, opts) : dist.max();  // L cast to the dtype, as the reference does
  Tensor partial = at::empty({cuda::facility_location_chunks(n) * m}, opts.dtype(at::kDouble));
  Tensor cov = at::empty({n}, opts);
  Tensor selected = at::empty({m}, opts.dtype(at::kByte));
  Tensor counts = at::empty({k}, opts.dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "facility_location_greedy", [&] {
    check_cuda(cuda::facility_location_greedy(
                   dist.data_ptr<scalar_t>(), n, m, k, Lt.data_ptr<scalar_t>(), partial.data_ptr<double>(),
                   cov.data_ptr<scalar_t>(), selected.data_ptr<uint8_t>(),
                   reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()), picks.data_ptr<int64_t>(),
                   objective.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), current_stream()),
               "facility_location_greedy");
  });
  return {picks, objective, weights};
}

// The blocks one after another on the current stream: each step of a block's greedy already
// spreads its columns over the device, and the calls queue without a host synchronisation.
GreedyBatch facility_location_greedy_batch_cuda(const std::vector<Tensor>& dists, const std::vector<int64_t>& ks,
                                                optional<double> L, bool lazy) {
  const std::vector<Tensor> blocks = greedy_batch_blocks(dists, ks);
  std::vector<Tensor> picks, objective, weights;
  for (size_t b = 0; b < blocks.size(); ++b) {
    auto [p, o, w] = facility_location_greedy_cuda(blocks[b], ks[b], L, lazy);
    picks.push_back(p);
    objective.push_back(o);
    weights.push_back(w);
  }
  return {picks, objective, weights};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(lcmat, m) {
  m.def("facility_location_greedy(Tensor dist, int k, float? L, bool lazy) -> (Tensor, Tensor, Tensor)");
  m.def("facility_location_greedy_batch(Tensor[] dists, int[] ks, float? L, bool lazy) -> (Tensor[], Tensor[], Tensor[])");
}

TORCH_LIBRARY_IMPL(lcmat, CPU, m) {
  m.impl("facility_location_greedy", &facility_location_greedy_cpu);
  m.impl("facility_location_greedy_batch", &facility_location_greedy_batch_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(lcmat, CUDA, m) {
  m.impl("facility_location_greedy", &facility_location_greedy_cuda);
  m.impl("facility_location_greedy_batch", &facility_location_greedy_batch_cuda);
}
#endif

}  // namespace lcmat
