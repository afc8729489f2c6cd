// The gradient_moments family: op schemas (a fragment of the lcmat library) and their CPU
// implementations. Per-class mean and variance of last-layer per-sample gradients
// (lcmat/reference/gradient_moments.py) and the backward pass with respect to the embeddings and
// the logits; lcmat/csrc.py pairs the two in a torch.autograd.Function. CUDA implementations under
// WITH_CUDA; arguments are checked once for both backends in ops_common.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/cpu_kernels.h"
#include "cpu/gradient_moments.h"
#include "ops_common.h"

#ifdef WITH_CUDA
#include "cuda/gradient_moments.h"
#include "cuda_aten.h"
#endif

namespace lcmat {
namespace {

using at::Tensor;

// e = softmax(z) - onehot(y), with the labels range-checked (the kernel reports the first bad row).
Tensor error_factors(const GradientMomentsArgs& in) {
  Tensor e = at::empty_like(in.logits), q = at::empty_like(in.logits);
  AT_DISPATCH_FLOATING_TYPES(in.logits.scalar_type(), "gradient_moments_factors", [&] {
    const int64_t bad = cpu::last_layer_factors(in.logits.data_ptr<scalar_t>(), in.labels.data_ptr<int64_t>(), in.n,
                                                in.C, e.data_ptr<scalar_t>(), q.data_ptr<scalar_t>());
    check_label_row(bad, in.labels, in.C);
  });
  return e;
}

std::tuple<Tensor, Tensor> gradient_moments_cpu(const Tensor& embeddings, const Tensor& logits,
                                                const Tensor& labels) {
  const GradientMomentsArgs in = gradient_moments_args(embeddings, logits, labels);
  const Tensor e = error_factors(in);
  const int64_t P = in.C * (in.D + 1);
  Tensor mean = at::empty({in.C, P}, in.logits.options()), var = at::empty({in.C, P}, in.logits.options());
  AT_DISPATCH_FLOATING_TYPES(in.logits.scalar_type(), "gradient_moments", [&] {
    cpu::gradient_moments(in.h.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(), in.labels.data_ptr<int64_t>(), in.n,
                          in.C, in.D, mean.data_ptr<scalar_t>(), var.data_ptr<scalar_t>());
  });
  return {mean, var};
}

std::tuple<Tensor, Tensor> gradient_moments_backward_cpu(const Tensor& grad_mean, const Tensor& grad_var,
                                                         const Tensor& embeddings, const Tensor& logits,
                                                         const Tensor& labels, const Tensor& mean) {
  const GradientMomentsArgs in =
      gradient_moments_backward_args(grad_mean, grad_var, embeddings, logits, labels, mean);
  const Tensor e = error_factors(in);
  const auto dt = in.logits.scalar_type();
  const Tensor B = grad_var.to(dt).contiguous();
  const Tensor A = (grad_mean.to(dt) - 2 * mean.to(dt) * B).contiguous();
  Tensor grad_h = at::empty({in.n, in.D}, in.logits.options()), grad_z = at::empty_like(in.logits);
  AT_DISPATCH_FLOATING_TYPES(dt, "gradient_moments_backward", [&] {
    cpu::gradient_moments_backward(A.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(), in.h.data_ptr<scalar_t>(),
                                   e.data_ptr<scalar_t>(), in.labels.data_ptr<int64_t>(), in.n, in.C, in.D,
                                   grad_h.data_ptr<scalar_t>(), grad_z.data_ptr<scalar_t>());
  });
  return {grad_h, grad_z};
}

// ---- CUDA -------------------------------------------------------------------------------------

#ifdef WITH_CUDA
struct CudaInputs {
  Tensor h, e, p, labels;
  int64_t n, C, D;
};

// The checked arguments with the labels range-checked and e = softmax(z) - onehot(y) formed.
CudaInputs prepared_cuda(const GradientMomentsArgs& args) {
  check_labels_in_range(args.labels, args.C);
  Tensor p = at::softmax(args.logits, 1);
  Tensor e = (p - at::one_hot(args.labels, args.C).to(p.scalar_type())).contiguous();
  return {args.h, e, p, args.labels, args.n, args.C, args.D};
}

std::tuple<Tensor, Tensor> gradient_moments_cuda(const Tensor& embeddings, const Tensor& logits, const Tensor& labels) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const CudaInputs in = prepared_cuda(gradient_moments_args(embeddings, logits, labels));
  const Tensor order = at::argsort(in.labels, /*stable=*/true).contiguous();
  Tensor start = at::zeros({in.C + 1}, in.labels.options());
  if (in.n > 0) start.narrow(0, 1, in.C).copy_(at::bincount(in.labels, {}, in.C).cumsum(0));
  const int64_t P = in.C * (in.D + 1);
  Tensor mean = at::empty({in.C, P}, in.e.options()), var = at::empty({in.C, P}, in.e.options());
  AT_DISPATCH_FLOATING_TYPES(in.e.scalar_type(), "gradient_moments", [&] {
    check_cuda(cuda::gradient_moments(in.h.data_ptr<scalar_t>(), in.e.data_ptr<scalar_t>(), order.data_ptr<int64_t>(),
                                      start.data_ptr<int64_t>(), in.n, in.C, in.D, mean.data_ptr<scalar_t>(),
                                      var.data_ptr<scalar_t>(), current_stream()),
               "gradient_moments");
  });
  return {mean, var};
}

std::tuple<Tensor, Tensor> gradient_moments_backward_cuda(const Tensor& grad_mean, const Tensor& grad_var,
                                                          const Tensor& embeddings, const Tensor& logits,
                                                          const Tensor& labels, const Tensor& mean) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const CudaInputs in =
      prepared_cuda(gradient_moments_backward_args(grad_mean, grad_var, embeddings, logits, labels, mean));
  const auto dt = in.e.scalar_type();
  const Tensor B = grad_var.to(dt).contiguous();
  const Tensor A = (grad_mean.to(dt) - 2 * mean.to(dt) * B).contiguous();
  const Tensor inv = in.n > 0 ? (1.0 / at::bincount(in.labels, {}, in.C).to(dt).clamp_min(1.0)).index_select(0, in.labels).contiguous()
                              : at::empty({0}, in.e.options());
  Tensor grad_h = at::empty({in.n, in.D}, in.e.options()), grad_e = at::empty_like(in.e);
  AT_DISPATCH_FLOATING_TYPES(dt, "gradient_moments_backward", [&] {
    check_cuda(cuda::gradient_moments_backward(A.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(), in.h.data_ptr<scalar_t>(),
                                               in.e.data_ptr<scalar_t>(), in.labels.data_ptr<int64_t>(),
                                               inv.data_ptr<scalar_t>(), in.n, in.C, in.D, grad_h.data_ptr<scalar_t>(),
                                               grad_e.data_ptr<scalar_t>(), current_stream()),
               "gradient_moments_backward");
  });
  const Tensor grad_z = in.p * (grad_e - (grad_e * in.p).sum(1, true));
  return {grad_h, grad_z};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(lcmat, m) {
  m.def("gradient_moments(Tensor embeddings, Tensor logits, Tensor labels) -> (Tensor, Tensor)");
  m.def("gradient_moments_backward(Tensor grad_mean, Tensor grad_var, Tensor embeddings, Tensor logits,"
        " Tensor labels, Tensor mean) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lcmat, CPU, m) {
  m.impl("gradient_moments", &gradient_moments_cpu);
  m.impl("gradient_moments_backward", &gradient_moments_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(lcmat, CUDA, m) {
  m.impl("gradient_moments", &gradient_moments_cuda);
  m.impl("gradient_moments_backward", &gradient_moments_backward_cuda);
}
#endif

}  // namespace lcmat
