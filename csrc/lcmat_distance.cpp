// The lcmat_distance ops (the per-class LCMat-S distance and its parts: the gradient distance by
// the Gram identity, the Hessian diagonal at chosen coordinates, pairwise L1 and the curvature
// moments): schemas, CPU implementations (kernels in csrc/cpu/lcmat_distance.cpp) and, in CUDA
// builds, CUDA implementations (kernels in csrc/cuda/lcmat_distance.cu). The GEMMs of the Gram
// identity run here, through ATen. Arguments are checked once for both backends in ops_common.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "cpu_aten.h"
#include "ops_common.h"
#ifdef WITH_CUDA
#include "cuda_aten.h"
#endif

namespace lcmat {
namespace {

using at::Tensor;
using std::optional;

// ---- CPU --------------------------------------------------------------------------------------

// The per-class distance (docs/design.md, "The LCMat-S distance"), row blocks top to bottom: per
// block two GEMMs for <h_i, h_j> and <s_i e_i, s_j e_j> right of its diagonal (half the work of
// the full products, into buffers reused by every block), then cpu::distance_block turns them
// into distances, adding rho times the L1 term over d's K columns.
Tensor distance_blocks(const Tensor& h, const Tensor& se, const Tensor& d, const Tensor& d_t, double rho) {
  const int64_t n = se.size(0), K = d.defined() ? d.size(1) : 0;
  Tensor out = empty_matrix(n, n, se.options());
  const Tensor diag_sq = ((se * se).sum(1) * (1.0 + (h * h).sum(1))).contiguous();
  constexpr int64_t tile = 256;
  const std::vector<Tensor> scratch = scratch_tensors(
      {std::min(n, tile) * n, std::min(n, tile) * n, GramOperand::panels_size(h), GramOperand::panels_size(se)},
      se.options());
  const Tensor& hh_buffer = scratch[0];
  const Tensor& ee_buffer = scratch[1];
  const GramOperand h_gram(h, scratch[2]), se_gram(se, scratch[3]);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lcmat_distance", [&] {
    for (int64_t r0 = 0; r0 < n; r0 += tile) {
      const int64_t r1 = std::min(n, r0 + tile);
      Tensor hh = hh_buffer.narrow(0, 0, (r1 - r0) * (n - r0)).view({r1 - r0, n - r0});
      Tensor ee = ee_buffer.narrow(0, 0, (r1 - r0) * (n - r0)).view({r1 - r0, n - r0});
      h_gram.upper_rows(r0, r1, hh);
      se_gram.upper_rows(r0, r1, ee);
      cpu::distance_block(out.data_ptr<scalar_t>(), hh.data_ptr<scalar_t>(), ee.data_ptr<scalar_t>(),
                          K > 0 ? d.data_ptr<scalar_t>() : nullptr, K > 0 ? d_t.data_ptr<scalar_t>() : nullptr,
                          diag_sq.data_ptr<scalar_t>(), static_cast<scalar_t>(K > 0 ? rho : 0.0), r0, r1, n, K);
    }
  });
  return out;
}

Tensor gradient_distance_cpu(const Tensor& embeddings, const Tensor& e, const optional<Tensor>& scale) {
  const ScaledErrors args = scaled_errors_args(embeddings, e, scale);
  return distance_blocks(args.h, args.se, Tensor(), Tensor(), 0.0);
}

Tensor pairwise_l1_cpu(const Tensor& a_in, const optional<Tensor>& b_in) {
  const auto args = pairwise_l1_args(a_in, b_in);
  const Tensor& a = std::get<0>(args);
  const optional<Tensor>& b = std::get<1>(args);
  Tensor out = empty_matrix(a.size(0), b ? b->size(0) : a.size(0), a.options());
  const Tensor bt = (b ? *b : a).t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pairwise_l1", [&] {
    cpu::pairwise_l1(a.data_ptr<scalar_t>(), a.size(0), bt.data_ptr<scalar_t>(), bt.size(1), a.size(1),
                     !b.has_value(), out.data_ptr<scalar_t>());
  });
  return out;
}

// d_i restricted to coords, as rows [n, K] and, when `transposed`, also as columns [K, n].
std::tuple<Tensor, Tensor> hessian_diag_coords_both(const Tensor& embeddings, const Tensor& q_in,
                                                    const Tensor& coords_in, const optional<Tensor>& scale_in,
                                                    bool transposed) {
  const CoordsArgs args = hessian_diag_coords_args(embeddings, q_in, coords_in, scale_in);
  const Tensor &h = args.h, &q = args.q, &coords = args.coords;
  const int64_t n = q.size(0), C = q.size(1), K = coords.numel();
  Tensor out = at::empty({n, K}, q.options());
  Tensor out_t = transposed ? at::empty({K, n}, q.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "hessian_diag_coords", [&] {
    cpu::hessian_diag_coords(h.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), coords.data_ptr<int64_t>(),
                             args.scale ? args.scale->data_ptr<scalar_t>() : nullptr, n, C, h.size(1), K,
                             out.data_ptr<scalar_t>(), transposed ? out_t.data_ptr<scalar_t>() : nullptr);
  });
  return {out, out_t};
}

Tensor hessian_diag_coords_cpu(const Tensor& embeddings, const Tensor& q, const Tensor& coords,
                               const optional<Tensor>& scale) {
  return std::get<0>(hessian_diag_coords_both(embeddings, q, coords, scale, false));
}

Tensor lcmat_distance_cpu(const Tensor& embeddings, const Tensor& e, const Tensor& q, const Tensor& coords,
                          double rho, const optional<Tensor>& scale) {
  const ScaledErrors args = scaled_errors_args(embeddings, e, scale);
  check_q_like_e(q, e);
  if (rho == 0.0 || coords.numel() == 0) return distance_blocks(args.h, args.se, Tensor(), Tensor(), 0.0);
  auto [d, d_t] = hessian_diag_coords_both(embeddings, q.to(e.scalar_type()), coords, scale, true);
  return distance_blocks(args.h, args.se, d, d_t, rho);
}

std::tuple<Tensor, Tensor> curvature_moments_cpu(const Tensor& embeddings, const Tensor& q_in,
                                                 const optional<Tensor>& scale_in) {
  const MomentsArgs args = curvature_moments_args(embeddings, q_in, scale_in);
  const Tensor& h = args.h;
  const int64_t n = q_in.size(0), C = q_in.size(1);
  // Without AVX-512 the one-pass kernel keeps 2 C x 32 float64 sums per task in L1, which is
  // faster than the two GEMMs at few classes, but they spill beyond 64 classes, where the GEMMs
  // win. The AVX-512 kernel blocks the classes by 64 and takes any C.
  if (C > 64 && !cpu::built_with_avx512()) return curvature_moments_aten(h, q_in, args.scale);
  const Tensor q = q_in.scalar_type() == at::kFloat ? q_in.contiguous() : q_in.to(at::kDouble).contiguous();
  const int64_t D = h.size(1);
  const auto f64 = h.options().dtype(at::kDouble);
  Tensor mean = at::empty({C * (D + 1)}, f64), second = at::empty({C * (D + 1)}, f64);
  const Tensor workspace = scratch_tensors({cpu::curvature_moments_workspace(n, C)}, f64)[0];
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "curvature_moments", [&] {
    const double* s = args.scale ? args.scale->data_ptr<double>() : nullptr;
    if (q.scalar_type() == at::kFloat) {
      cpu::curvature_moments(h.data_ptr<scalar_t>(), q.data_ptr<float>(), s, n, C, D, workspace.data_ptr<double>(),
                             mean.data_ptr<double>(), second.data_ptr<double>());
    } else {
      cpu::curvature_moments(h.data_ptr<scalar_t>(), q.data_ptr<double>(), s, n, C, D, workspace.data_ptr<double>(),
                             mean.data_ptr<double>(), second.data_ptr<double>());
    }
  });
  return {mean, second};
}

// ---- CUDA -------------------------------------------------------------------------------------

#ifdef WITH_CUDA
std::tuple<Tensor, Tensor> curvature_moments_cuda(const Tensor& embeddings, const Tensor& q,
                                                  const optional<Tensor>& scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  const MomentsArgs args = curvature_moments_args(embeddings, q, scale);
  return curvature_moments_aten(args.h, q, args.scale);
}

Tensor gradient_distance_cuda(const Tensor& embeddings, const Tensor& e, const optional<Tensor>& scale) {
  const c10::cuda::CUDAGuard guard(e.device());
  const ScaledErrors args = scaled_errors_args(embeddings, e, scale);
  const Tensor &h = args.h, &se = args.se;
  const int64_t n = se.size(0);
  Tensor out = at::mm(se, se.t()).contiguous();
  const Tensor diag_sq = (out.diagonal() * (1.0 + (h * h).sum(1))).contiguous();
  const int64_t tile = std::max<int64_t>(256, (int64_t(1) << 26) / std::max<int64_t>(n, 1));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "gradient_distance", [&] {
    for (int64_t r0 = 0; r0 < n; r0 += tile) {
      const int64_t r1 = std::min(n, r0 + tile);
      const Tensor hh = at::mm(h.narrow(0, r0, r1 - r0), h.t()).contiguous();
      check_cuda(cuda::gram_rows_to_distance(out.data_ptr<scalar_t>(), hh.data_ptr<scalar_t>(),
                                             diag_sq.data_ptr<scalar_t>(), r0, r1, n, current_stream()),
                 "gradient_distance");
    }
  });
  return out;
}

void pairwise_l1_into(const Tensor& a, const Tensor& b, double alpha, bool accumulate, Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pairwise_l1", [&] {
    check_cuda(cuda::pairwise_l1(a.data_ptr<scalar_t>(), a.size(0), b.data_ptr<scalar_t>(), b.size(0), a.size(1),
                                 static_cast<scalar_t>(alpha), accumulate, out.data_ptr<scalar_t>(), current_stream()),
               "pairwise_l1");
  });
}

Tensor pairwise_l1_cuda(const Tensor& a_in, const optional<Tensor>& b_in) {
  const c10::cuda::CUDAGuard guard(a_in.device());
  const auto args = pairwise_l1_args(a_in, b_in);
  const Tensor& a = std::get<0>(args);
  const Tensor b = std::get<1>(args).value_or(a);
  Tensor out = at::empty({a.size(0), b.size(0)}, a.options());
  pairwise_l1_into(a, b, 1.0, false, out);
  return out;
}

Tensor hessian_diag_coords_cuda(const Tensor& embeddings, const Tensor& q_in, const Tensor& coords_in,
                                const optional<Tensor>& scale_in) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  const CoordsArgs args = hessian_diag_coords_args(embeddings, q_in, coords_in, scale_in);
  const Tensor &h = args.h, &q = args.q, &coords = args.coords;
  const int64_t n = q.size(0), C = q.size(1);
  Tensor out = at::empty({n, coords.numel()}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "hessian_diag_coords", [&] {
    check_cuda(cuda::hessian_diag_coords(h.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), coords.data_ptr<int64_t>(),
                                         args.scale ? args.scale->data_ptr<scalar_t>() : nullptr, n, C, h.size(1),
                                         coords.numel(), out.data_ptr<scalar_t>(), current_stream()),
               "hessian_diag_coords");
  });
  return out;
}

Tensor lcmat_distance_cuda(const Tensor& embeddings, const Tensor& e, const Tensor& q, const Tensor& coords, double rho,
                           const optional<Tensor>& scale) {
  Tensor out = gradient_distance_cuda(embeddings, e, scale);
  check_q_like_e(q, e);
  if (rho != 0.0 && coords.numel() > 0) {
    const c10::cuda::CUDAGuard guard(e.device());
    const Tensor d = hessian_diag_coords_cuda(embeddings, q.to(e.scalar_type()), coords, scale);
    pairwise_l1_into(d, d, rho, true, out);
  }
  return out;
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(lcmat, m) {
  m.def("curvature_moments(Tensor embeddings, Tensor q, Tensor? scale) -> (Tensor, Tensor)");
  m.def("gradient_distance(Tensor embeddings, Tensor e, Tensor? scale) -> Tensor");
  m.def("pairwise_l1(Tensor a, Tensor? b) -> Tensor");
  m.def("hessian_diag_coords(Tensor embeddings, Tensor q, Tensor coords, Tensor? scale) -> Tensor");
  m.def("lcmat_distance(Tensor embeddings, Tensor e, Tensor q, Tensor coords, float rho, Tensor? scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(lcmat, CPU, m) {
  m.impl("curvature_moments", &curvature_moments_cpu);
  m.impl("gradient_distance", &gradient_distance_cpu);
  m.impl("pairwise_l1", &pairwise_l1_cpu);
  m.impl("hessian_diag_coords", &hessian_diag_coords_cpu);
  m.impl("lcmat_distance", &lcmat_distance_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(lcmat, CUDA, m) {
  m.impl("curvature_moments", &curvature_moments_cuda);
  m.impl("gradient_distance", &gradient_distance_cuda);
  m.impl("pairwise_l1", &pairwise_l1_cuda);
  m.impl("hessian_diag_coords", &hessian_diag_coords_cuda);
  m.impl("lcmat_distance", &lcmat_distance_cuda);
}
#endif

}  // namespace lcmat
