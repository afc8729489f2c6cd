// The gradient_moments family: op schemas (a fragment of the lcmat library) and their CPU
// implementations. Per-class mean and variance of last-layer per-sample gradients
// (lcmat/reference/gradient_moments.py) and the backward pass with respect to the embeddings and
// the logits; lcmat/csrc.py pairs the two in a torch.autograd.Function.
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

struct Checked {
  Tensor h, logits, labels;
  int64_t n, C, D;
};

Checked checked_inputs(const Tensor& embeddings, const Tensor& logits_in, const Tensor& labels_in) {
  check_float(logits_in, "logits");
  check_dim(logits_in, 2, "logits");
  const int64_t n = logits_in.size(0), C = logits_in.size(1);
  Tensor h = checked_rows(embeddings, n, logits_in.scalar_type(), "embeddings");
  return {h, logits_in.contiguous(), checked_labels(labels_in, n), n, C, h.size(1)};
}

// e = softmax(z) - onehot(y), with the labels range-checked.
Tensor error_factors(const Checked& in) {
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
  const Checked in = checked_inputs(embeddings, logits, labels);
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
  const Checked in = checked_inputs(embeddings, logits, labels);
  const int64_t P = in.C * (in.D + 1);
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{grad_mean, "grad_mean"},
                                {grad_var, "grad_var"}, {mean, "mean"}}) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == in.C && t.size(1) == P, name, ": must have shape [", in.C, ", ", P,
                "], got ", t.sizes());
  }
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

CudaInputs prepared_cuda(const Tensor& embeddings, const Tensor& logits_in, const Tensor& labels_in) {
  check_float(logits_in, "logits");
  check_dim(logits_in, 2, "logits");
  const int64_t n = logits_in.size(0), C = logits_in.size(1);
  Tensor h = checked_rows(embeddings, n, logits_in.scalar_type(), "embeddings");
  Tensor labels = checked_labels(labels_in, n);
  if (n > 0) {
    const bool bad = ((labels < 0) | (labels >= C)).any().item<bool>();
    TORCH_CHECK(!bad, "labels: must lie in [0, ", C, "), got values in [", labels.min().item<int64_t>(), ", ",
                labels.max().item<int64_t>(), "]");
  }
  Tensor p = at::softmax(logits_in.contiguous(), 1);
  Tensor e = (p - at::one_hot(labels, C).to(p.scalar_type())).contiguous();
  return {h, e, p, labels, n, C, h.size(1)};
}

std::tuple<Tensor, Tensor> gradient_moments_cuda(const Tensor& embeddings, const Tensor& logits, const Tensor& labels) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const CudaInputs in = prepared_cuda(embeddings, logits, labels);
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
  const CudaInputs in = prepared_cuda(embeddings, logits, labels);
  const int64_t P = in.C * (in.D + 1);
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{grad_mean, "grad_mean"},
                                {grad_var, "grad_var"}, {mean, "mean"}}) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == in.C && t.size(1) == P, name, ": must have shape [", in.C, ", ", P,
                "], got ", t.sizes());
  }
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
