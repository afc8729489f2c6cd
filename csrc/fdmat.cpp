// The fdmat ops (FDMat's feature transform, the cost to the class prototypes and the per-sample
// scores from the transport potentials): schemas, CPU implementations (kernels in
// csrc/cpu/fdmat.cpp) and, in CUDA builds, CUDA implementations (kernels in csrc/cuda/fdmat.cu).
// Arguments are checked once for both backends in ops_common.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/cpu_kernels.h"
#include "cpu_aten.h"
#include "ops_common.h"
#ifdef WITH_CUDA
#include "cuda_aten.h"
#endif

namespace lcmat {
namespace {

using at::Tensor;

// ---- CPU --------------------------------------------------------------------------------------

// FDMat's transform, as lcmat.reference.fdmat_transform computes it (the same ATen operations,
// so the same values) except for two things: the result is allocated with huge pages requested
// (a fresh ImageNet-sized matrix of gigabytes is otherwise filled page by page), and the mean's
// float64 column sums are one pass of cpu::column_sums (ATen's sum(0, dtype=float64) over a
// row-major float32 matrix walks it column by column).
Tensor fdmat_transform_cpu(const Tensor& features_in, double beta, double eps) {
  const Tensor features = fdmat_transform_args(features_in);
  const int64_t N = features.size(0), D = features.size(1);
  Tensor x = empty_matrix(N, D, features.options());
  at::add_out(x, features, eps).pow_(beta);
  Tensor sums = at::empty({D}, features.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fdmat_transform", [&] {
    cpu::column_sums(x.data_ptr<scalar_t>(), N, D, sums.data_ptr<double>());
  });
  const Tensor mean = sums.div_(static_cast<double>(N)).to(x.scalar_type());
  const Tensor norm = at::norm(x, 2, {1}, /*keepdim=*/true);
  return x.sub_(mean).div_(norm);
}

Tensor prototype_cost_cpu(const Tensor& x_in, const Tensor& prototypes_in) {
  const auto args = prototype_cost_args(x_in, prototypes_in);
  const Tensor &x = std::get<0>(args), &mu = std::get<1>(args);
  Tensor out = empty_matrix(x.size(0), mu.size(0), x.options());  // N x C: huge pages, as above
  if (GramOperand::packs(x)) {  // the AVX-512 Gram kernel of the distance blocks
    Tensor right = at::empty({cpu::right_panels_size(mu.size(0), mu.size(1))}, mu.options());
    cpu::pack_right_panels(mu.data_ptr<float>(), mu.size(0), mu.size(1), right.data_ptr<float>());
    cpu::matmul_abt(x.data_ptr<float>(), x.size(0), right.data_ptr<float>(), mu.size(0), mu.size(1),
                    out.data_ptr<float>());
  } else {
    at::mm_out(out, x, mu.t());
  }
  const Tensor xx = (x * x).sum(1), pp = (mu * mu).sum(1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "prototype_cost", [&] {
    cpu::squared_euclidean_from_dot(out.data_ptr<scalar_t>(), xx.data_ptr<scalar_t>(), pp.data_ptr<scalar_t>(),
                                    x.size(0), mu.size(0), true);
  });
  return out;
}

Tensor fdmat_scores_cpu(const Tensor& M_in, const Tensor& f_in, const Tensor& g_in, double reg) {
  const ScoresArgs args = fdmat_scores_args(M_in, f_in, g_in, reg);
  const Tensor &M = args.M, &f = args.f, &g = args.g;
  const int64_t N = M.size(0), C = M.size(1);
  Tensor out = at::empty({N}, M.options());
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "fdmat_scores", [&] {
    cpu::fdmat_scores(M.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), N, C, reg,
                      out.data_ptr<scalar_t>());
  });
  return out;
}

// ---- CUDA -------------------------------------------------------------------------------------

#ifdef WITH_CUDA
Tensor prototype_cost_cuda(const Tensor& x_in, const Tensor& prototypes_in) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto args = prototype_cost_args(x_in, prototypes_in);
  const Tensor &x = std::get<0>(args), &mu = std::get<1>(args);
  Tensor out = at::mm(x, mu.t()).contiguous();
  const Tensor xx = (x * x).sum(1), pp = (mu * mu).sum(1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "prototype_cost", [&] {
    check_cuda(cuda::squared_euclidean_from_dot(out.data_ptr<scalar_t>(), xx.data_ptr<scalar_t>(),
                                                pp.data_ptr<scalar_t>(), x.size(0), mu.size(0), current_stream()),
               "prototype_cost");
  });
  return out;
}

Tensor fdmat_scores_cuda(const Tensor& M_in, const Tensor& f_in, const Tensor& g_in, double reg) {
  const c10::cuda::CUDAGuard guard(M_in.device());
  const ScoresArgs args = fdmat_scores_args(M_in, f_in, g_in, reg);
  const Tensor &M = args.M, &f = args.f, &g = args.g;
  const int64_t N = M.size(0), C = M.size(1);
  Tensor out = at::empty({N}, M.options());
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "fdmat_scores", [&] {
    check_cuda(cuda::fdmat_scores(M.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), N, C, reg,
                                  out.data_ptr<scalar_t>(), current_stream()),
               "fdmat_scores");
  });
  return out;
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(lcmat, m) {
  m.def("fdmat_transform(Tensor features, float beta, float eps) -> Tensor");
  m.def("prototype_cost(Tensor x, Tensor prototypes) -> Tensor");
  m.def("fdmat_scores(Tensor M, Tensor f, Tensor g, float reg) -> Tensor");
}

TORCH_LIBRARY_IMPL(lcmat, CPU, m) {
  m.impl("fdmat_transform", &fdmat_transform_cpu);
  m.impl("prototype_cost", &prototype_cost_cpu);
  m.impl("fdmat_scores", &fdmat_scores_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(lcmat, CUDA, m) {
  m.impl("prototype_cost", &prototype_cost_cuda);
  m.impl("fdmat_scores", &fdmat_scores_cuda);
}
#endif

}  // namespace lcmat
