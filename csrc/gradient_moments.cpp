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

}  // namespace lcmat
