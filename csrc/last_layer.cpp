// The last_layer ops: schemas, CPU implementations (kernels in csrc/cpu/last_layer.cpp) and, in
// CUDA builds, CUDA implementations (kernels in csrc/cuda/last_layer.cu). Arguments are checked
// once for both backends in ops_common.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cpu/cpu_kernels.h"
#include "ops_common.h"
#ifdef WITH_CUDA
#include "cuda_aten.h"
#endif

namespace lcmat {
namespace {

using at::Tensor;
using std::optional;

std::tuple<Tensor, Tensor> last_layer_factors_cpu(const Tensor& logits_in, const Tensor& labels_in) {
  const FactorsArgs args = last_layer_factors_args(logits_in, labels_in);
  const Tensor &logits = args.logits, &labels = args.labels;
  Tensor e = at::empty_like(logits), q = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "last_layer_factors", [&] {
    const int64_t bad = cpu::last_layer_factors(logits.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(),
                                                logits.size(0), logits.size(1), e.data_ptr<scalar_t>(),
                                                q.data_ptr<scalar_t>());
    check_label_row(bad, labels, logits.size(1));
  });
  return {e, q};
}

std::tuple<Tensor, Tensor> last_layer_grad_norms_cpu(const Tensor& embeddings, const Tensor& logits_in,
                                                     const Tensor& labels_in, const optional<Tensor>& scale_in) {
  const GradNormsArgs args = last_layer_grad_norms_args(embeddings, logits_in, labels_in, scale_in);
  const Tensor& logits = args.logits;
  const int64_t n = logits.size(0), C = logits.size(1);
  Tensor grad = at::empty({n}, logits.options()), err = at::empty({n}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "last_layer_grad_norms", [&] {
    const int64_t bad = cpu::last_layer_grad_norms(
        args.h.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(), args.labels.data_ptr<int64_t>(),
        args.scale ? args.scale->data_ptr<scalar_t>() : nullptr, n, C, args.h.size(1), grad.data_ptr<scalar_t>(),
        err.data_ptr<scalar_t>());
    check_label_row(bad, args.labels, C);
  });
  return {grad, err};
}

#ifdef WITH_CUDA
std::tuple<Tensor, Tensor> last_layer_factors_cuda(const Tensor& logits_in, const Tensor& labels_in) {
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const FactorsArgs args = last_layer_factors_args(logits_in, labels_in);
  const Tensor &logits = args.logits, &labels = args.labels;
  check_labels_in_range(labels, logits.size(1));
  Tensor e = at::empty_like(logits), q = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "last_layer_factors", [&] {
    check_cuda(cuda::last_layer_factors(logits.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), logits.size(0),
                                        logits.size(1), e.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                                        current_stream()),
               "last_layer_factors");
  });
  return {e, q};
}

std::tuple<Tensor, Tensor> last_layer_grad_norms_cuda(const Tensor& embeddings, const Tensor& logits_in,
                                                      const Tensor& labels_in, const optional<Tensor>& scale_in) {
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const GradNormsArgs args = last_layer_grad_norms_args(embeddings, logits_in, labels_in, scale_in);
  const Tensor& logits = args.logits;
  const int64_t n = logits.size(0), C = logits.size(1);
  check_labels_in_range(args.labels, C);
  Tensor grad = at::empty({n}, logits.options()), err = at::empty({n}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "last_layer_grad_norms", [&] {
    check_cuda(cuda::last_layer_grad_norms(args.h.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(),
                                           args.labels.data_ptr<int64_t>(),
                                           args.scale ? args.scale->data_ptr<scalar_t>() : nullptr, n, C,
                                           args.h.size(1), grad.data_ptr<scalar_t>(), err.data_ptr<scalar_t>(),
                                           current_stream()),
               "last_layer_grad_norms");
  });
  return {grad, err};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(lcmat, m) {
  m.def("last_layer_factors(Tensor logits, Tensor labels) -> (Tensor, Tensor)");
  m.def("last_layer_grad_norms(Tensor embeddings, Tensor logits, Tensor labels, Tensor? scale) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lcmat, CPU, m) {
  m.impl("last_layer_factors", &last_layer_factors_cpu);
  m.impl("last_layer_grad_norms", &last_layer_grad_norms_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(lcmat, CUDA, m) {
  m.impl("last_layer_factors", &last_layer_factors_cuda);
  m.impl("last_layer_grad_norms", &last_layer_grad_norms_cuda);
}
#endif

}  // namespace lcmat
