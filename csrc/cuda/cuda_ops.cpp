// The CUDA implementations of the lcmat ops (schemas in csrc/ops.cpp): argument checks, GEMMs
// through ATen (cuBLAS), then the launchers of csrc/cuda/*.cu on the current stream of the
// tensors' device. Compiled only where torch has CUDA (see setup.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "../ops_common.h"
#include "cuda_kernels.h"

namespace lcmat {
namespace {

using at::Tensor;
using std::optional;

void check_cuda(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, "lcmat: CUDA error in ", what, ": ", cudaGetErrorString(status));
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void check_labels_in_range(const Tensor& labels, int64_t C) {
  if (labels.numel() == 0) return;
  const bool bad = ((labels < 0) | (labels >= C)).any().item<bool>();
  TORCH_CHECK(!bad, "labels: must lie in [0, ", C, "), got values in [", labels.min().item<int64_t>(), ", ",
              labels.max().item<int64_t>(), "]");
}

// ---- last_layer -------------------------------------------------------------------------------

std::tuple<Tensor, Tensor> last_layer_factors_cuda(const Tensor& logits_in, const Tensor& labels_in) {
  const c10::cuda::CUDAGuard guard(logits_in.device());
  check_float(logits_in, "logits");
  check_dim(logits_in, 2, "logits");
  const Tensor logits = logits_in.contiguous();
  const Tensor labels = checked_labels(labels_in, logits.size(0)).to(logits.device());
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

std::tuple<Tensor, Tensor> last_layer_grad_norms_cuda(const Tensor& embeddings_in, const Tensor& logits_in,
                                                      const Tensor& labels_in, const optional<Tensor>& scale_in) {
  check_same_device({"logits", logits_in}, {{"embeddings", embeddings_in}, {"scale", scale_in}});
  const c10::cuda::CUDAGuard guard(logits_in.device());
  check_float(logits_in, "logits");
  check_dim(logits_in, 2, "logits");
  const int64_t n = logits_in.size(0), C = logits_in.size(1);
  const Tensor h = checked_rows(embeddings_in, n, logits_in.scalar_type(), "embeddings");
  const Tensor logits = logits_in.contiguous();
  const Tensor labels = checked_labels(labels_in, n).to(logits.device());
  check_labels_in_range(labels, C);
  const optional<Tensor> scale = checked_scale(scale_in, n, logits.scalar_type());
  Tensor grad = at::empty({n}, logits.options()), err = at::empty({n}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "last_layer_grad_norms", [&] {
    check_cuda(cuda::last_layer_grad_norms(h.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(),
                                           labels.data_ptr<int64_t>(), scale ? scale->data_ptr<scalar_t>() : nullptr,
                                           n, C, h.size(1), grad.data_ptr<scalar_t>(), err.data_ptr<scalar_t>(),
                                           current_stream()),
               "last_layer_grad_norms");
  });
  return {grad, err};
}

// ---- lcmat_distance ---------------------------------------------------------------------------

std::tuple<Tensor, Tensor> curvature_moments_cuda(const Tensor& embeddings_in, const Tensor& q_in,
                                                  const optional<Tensor>& scale_in) {
  check_same_device({"q", q_in}, {{"embeddings", embeddings_in}, {"scale", scale_in}});
  const c10::cuda::CUDAGuard guard(q_in.device());
  check_float(q_in, "q");
  check_dim(q_in, 2, "q");
  const int64_t n = q_in.size(0);
  const Tensor h = checked_rows(embeddings_in, n, embeddings_in.scalar_type(), "embeddings");
  return curvature_moments_aten(h, q_in, checked_scale(scale_in, n, at::kDouble));
}

Tensor gradient_distance_cuda(const Tensor& embeddings_in, const Tensor& e_in, const optional<Tensor>& scale_in) {
  check_same_device({"e", e_in}, {{"embeddings", embeddings_in}, {"scale", scale_in}});
  const c10::cuda::CUDAGuard guard(e_in.device());
  check_float(e_in, "e");
  check_dim(e_in, 2, "e");
  const int64_t n = e_in.size(0);
  const Tensor h = checked_rows(embeddings_in, n, e_in.scalar_type(), "embeddings");
  const optional<Tensor> scale = checked_scale(scale_in, n, e_in.scalar_type());
  const Tensor se = scale ? (e_in * scale->unsqueeze(1)).contiguous() : e_in.contiguous();
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
  check_same_device({"a", a_in}, {{"b", b_in}});
  const c10::cuda::CUDAGuard guard(a_in.device());
  check_float(a_in, "a");
  check_dim(a_in, 2, "a");
  const Tensor a = a_in.contiguous();
  Tensor b = a;
  if (b_in) {
    check_dim(*b_in, 2, "b");
    TORCH_CHECK(b_in->scalar_type() == a.scalar_type(), "b: dtype ", b_in->scalar_type(), " differs from a's ",
                a.scalar_type());
    TORCH_CHECK(b_in->size(1) == a.size(1), "b: needs ", a.size(1), " columns like a, got ", b_in->size(1));
    b = b_in->contiguous();
  }
  Tensor out = at::empty({a.size(0), b.size(0)}, a.options());
  pairwise_l1_into(a, b, 1.0, false, out);
  return out;
}

Tensor hessian_diag_coords_cuda(const Tensor& embeddings_in, const Tensor& q_in, const Tensor& coords_in,
                                const optional<Tensor>& scale_in) {
  check_same_device({"q", q_in}, {{"embeddings", embeddings_in}, {"scale", scale_in}});
  const c10::cuda::CUDAGuard guard(q_in.device());
  check_float(q_in, "q");
  check_dim(q_in, 2, "q");
  const int64_t n = q_in.size(0), C = q_in.size(1);
  const Tensor h = checked_rows(embeddings_in, n, q_in.scalar_type(), "embeddings");
  const Tensor q = q_in.contiguous();
  const Tensor coords = checked_coords(coords_in, C * (h.size(1) + 1)).to(q.device());
  const optional<Tensor> scale = checked_scale(scale_in, n, q.scalar_type());
  Tensor out = at::empty({n, coords.numel()}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "hessian_diag_coords", [&] {
    check_cuda(cuda::hessian_diag_coords(h.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), coords.data_ptr<int64_t>(),
                                         scale ? scale->data_ptr<scalar_t>() : nullptr, n, C, h.size(1),
                                         coords.numel(), out.data_ptr<scalar_t>(), current_stream()),
               "hessian_diag_coords");
  });
  return out;
}

Tensor lcmat_distance_cuda(const Tensor& embeddings, const Tensor& e, const Tensor& q, const Tensor& coords, double rho,
                           const optional<Tensor>& scale) {
  check_same_device({"e", e}, {{"embeddings", embeddings}, {"q", q}, {"scale", scale}});
  Tensor out = gradient_distance_cuda(embeddings, e, scale);
  check_float(q, "q");
  TORCH_CHECK(q.sizes() == e.sizes(), "q: shape ", q.sizes(), " differs from e's ", e.sizes());
  if (rho != 0.0 && coords.numel() > 0) {
    const c10::cuda::CUDAGuard guard(e.device());
    const Tensor d = hessian_diag_coords_cuda(embeddings, q.to(e.scalar_type()), coords, scale);
    pairwise_l1_into(d, d, rho, true, out);
  }
  return out;
}

// ---- facility_location ------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> facility_location_greedy_cuda(const Tensor& dist_in, int64_t k, optional<double> L,
                                                                 bool lazy) {
  (void)lazy;  // the device runs the naive greedy; its picks are the lazy greedy's
  const c10::cuda::CUDAGuard guard(dist_in.device());
  check_float(dist_in, "dist");
  check_dim(dist_in, 2, "dist");
  const Tensor dist = dist_in.contiguous();
  const int64_t n = dist.size(0), m = dist.size(1);
  TORCH_CHECK(k >= 0 && k <= n, "k: must lie in [0, ", n, "], got ", k);
  TORCH_CHECK(k <= m, "k: must not exceed the ", m, " columns of dist, got ", k);
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

// ---- sinkhorn ---------------------------------------------------------------------------------

using SinkhornOut = std::tuple<Tensor, Tensor, Tensor, Tensor>;

cuda::SinkhornOptions sinkhorn_options(double reg, int64_t max_iter, double tol, int64_t check_every) {
  TORCH_CHECK(reg > 0 && std::isfinite(reg), "reg: must be a positive number, got ", reg);
  TORCH_CHECK(check_every >= 1, "check_every: must be >= 1, got ", check_every);
  return {reg, max_iter, tol, check_every};
}

// Solves one problem whose cost M [n, m] is on the device; f, g are views into the outputs.
template <typename T>
void solve_one(const Tensor& a, const Tensor& b, const Tensor& M, const cuda::SinkhornOptions& opt, Tensor& f,
               Tensor& g, int64_t* n_iter, double* err) {
  const int64_t n = a.numel(), m = b.numel();
  Tensor ws = at::empty({static_cast<int64_t>(cuda::sinkhorn_workspace_size(n, m))}, a.options().dtype(at::kByte));
  const double sum_a = n ? a.sum().item<double>() : 0.0;
  check_cuda(cuda::sinkhorn_solve<T>(a.data_ptr<T>(), b.data_ptr<T>(), sum_a, n, m, M.data_ptr<T>(), opt,
                                     ws.data_ptr(), f.data_ptr<T>(), g.data_ptr<T>(), n_iter, err, current_stream()),
             "sinkhorn_log");
}

SinkhornOut sinkhorn_log_cuda(const Tensor& a_in, const Tensor& b_in, const Tensor& M_in, double reg, int64_t max_iter,
                              double tol, int64_t check_every) {
  check_same_device({"M", M_in}, {{"a", a_in}, {"b", b_in}});
  const c10::cuda::CUDAGuard guard(M_in.device());
  const cuda::SinkhornOptions opt = sinkhorn_options(reg, max_iter, tol, check_every);
  check_float(M_in, "M");
  TORCH_CHECK(M_in.dim() == 2 || M_in.dim() == 3, "M: must be [n, m] or [B, n, m], got shape ", M_in.sizes());
  const bool batched = M_in.dim() == 3;
  const Tensor M = batched ? M_in.contiguous() : M_in.unsqueeze(0).contiguous();
  const int64_t B = M.size(0), n = M.size(1), m = M.size(2);
  const Tensor a = checked_vector_batch(a_in, B, n, M.scalar_type(), batched, "a");
  const Tensor b = checked_vector_batch(b_in, B, m, M.scalar_type(), batched, "b");
  Tensor f = at::zeros({B, n}, M.options()), g = at::zeros({B, m}, M.options());
  std::vector<int64_t> n_iter(B, 0);
  std::vector<double> err(B, std::numeric_limits<double>::infinity());
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "sinkhorn_log", [&] {
    for (int64_t p = 0; p < B; ++p) {  // every problem runs to its own convergence
      Tensor fp = f[p], gp = g[p];
      solve_one<scalar_t>(a[p], b[p], M[p], opt, fp, gp, &n_iter[p], &err[p]);
    }
  });
  const Tensor n_iter_t = at::tensor(n_iter, at::kLong).to(M.device());
  const Tensor err_t = at::tensor(err, at::kDouble).to(M.device(), M.scalar_type());
  return {f, g, n_iter_t, err_t};
}

SinkhornOut sinkhorn_log_ragged_cuda(const Tensor& a_in, const Tensor& b_in, at::IntArrayRef row_offsets,
                                     at::IntArrayRef col_offsets, double reg, const optional<Tensor>& cost_in,
                                     const optional<Tensor>& x_in, const optional<Tensor>& y_in, int64_t max_iter,
                                     double tol, int64_t check_every) {
  const c10::cuda::CUDAGuard guard(a_in.device());
  check_same_device({"a", a_in}, {{"b", b_in}, {"cost", cost_in}, {"x", x_in}, {"y", y_in}});
  const cuda::SinkhornOptions opt = sinkhorn_options(reg, max_iter, tol, check_every);
  check_float(a_in, "a");
  const auto dtype = a_in.scalar_type();
  const Tensor a = a_in.contiguous(), b = b_in.to(dtype).contiguous();
  check_dim(a, 1, "a");
  check_dim(b, 1, "b");
  const int64_t P = check_offsets(row_offsets, col_offsets, a.size(0), b.size(0));
  TORCH_CHECK(cost_in.has_value() != (x_in.has_value() && y_in.has_value()),
              "cost, x, y: give either a stored `cost` or both features `x` and `y`");
  Tensor cost, x, y;
  int64_t needed = 0;
  for (int64_t p = 0; p < P; ++p)
    needed += (row_offsets[p + 1] - row_offsets[p]) * (col_offsets[p + 1] - col_offsets[p]);
  if (cost_in) {
    cost = cost_in->to(dtype).contiguous().reshape(-1);
    TORCH_CHECK(cost.numel() >= needed, "cost: needs ", needed,
                " values (the blocks n_p x m_p one after the other), got ", cost.numel());
  } else {
    check_dim(*x_in, 2, "x");
    check_dim(*y_in, 2, "y");
    TORCH_CHECK(x_in->size(0) == a.size(0), "x: needs ", a.size(0), " rows like a, got ", x_in->size(0));
    TORCH_CHECK(y_in->size(0) == b.size(0), "y: needs ", b.size(0), " rows like b, got ", y_in->size(0));
    TORCH_CHECK(x_in->size(1) == y_in->size(1), "y: needs ", x_in->size(1), " columns like x, got ", y_in->size(1));
    x = x_in->to(dtype).contiguous();
    y = y_in->to(dtype).contiguous();
  }
  Tensor f = at::zeros_like(a), g = at::zeros_like(b);
  std::vector<int64_t> n_iter(P, 0);
  std::vector<double> err(P, 0.0);
  AT_DISPATCH_FLOATING_TYPES(dtype, "sinkhorn_log_ragged", [&] {
    int64_t start = 0;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t r0 = row_offsets[p], c0 = col_offsets[p];
      const int64_t n = row_offsets[p + 1] - r0, m = col_offsets[p + 1] - c0;
      const int64_t size = n * m;
      if (size == 0) continue;  // empty problems keep zero potentials, n_iter 0, err 0
      Tensor M;
      if (cost.defined()) {
        M = cost.narrow(0, start, size).view({n, m});
      } else {  // the block ||x_i - y_j||^2, formed for this problem only
        const Tensor xp = x.narrow(0, r0, n), yp = y.narrow(0, c0, m);
        M = at::mm(xp, yp.t()).contiguous();
        const Tensor xx = (xp * xp).sum(1), yy = (yp * yp).sum(1);
        check_cuda(cuda::squared_euclidean_from_dot(M.data_ptr<scalar_t>(), xx.data_ptr<scalar_t>(),
                                                    yy.data_ptr<scalar_t>(), n, m, current_stream()),
                   "sinkhorn_log_ragged");
      }
      start += size;
      Tensor fp = f.narrow(0, r0, n), gp = g.narrow(0, c0, m);
      solve_one<scalar_t>(a.narrow(0, r0, n), b.narrow(0, c0, m), M, opt, fp, gp, &n_iter[p], &err[p]);
    }
  });
  const Tensor n_iter_t = at::tensor(n_iter, at::kLong).to(a.device());
  const Tensor err_t = at::tensor(err, at::kDouble).to(a.device(), dtype);
  return {f, g, n_iter_t, err_t};
}

// ---- fdmat ------------------------------------------------------------------------------------

Tensor prototype_cost_cuda(const Tensor& x_in, const Tensor& prototypes_in) {
  check_same_device({"x", x_in}, {{"prototypes", prototypes_in}});
  const c10::cuda::CUDAGuard guard(x_in.device());
  check_float(x_in, "x");
  check_dim(x_in, 2, "x");
  check_dim(prototypes_in, 2, "prototypes");
  const Tensor x = x_in.contiguous();
  const Tensor mu = prototypes_in.to(x.scalar_type()).contiguous();
  TORCH_CHECK(mu.size(1) == x.size(1), "prototypes: needs ", x.size(1), " columns like x, got ", mu.size(1));
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
  check_same_device({"M", M_in}, {{"f", f_in}, {"g", g_in}});
  const c10::cuda::CUDAGuard guard(M_in.device());
  check_float(M_in, "M");
  check_dim(M_in, 2, "M");
  TORCH_CHECK(reg > 0, "reg: must be positive, got ", reg);
  const Tensor M = M_in.contiguous();
  const int64_t N = M.size(0), C = M.size(1);
  const Tensor f = checked_vector_batch(f_in, 1, N, M.scalar_type(), false, "f");
  const Tensor g = checked_vector_batch(g_in, 1, C, M.scalar_type(), false, "g");
  Tensor out = at::empty({N}, M.options());
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "fdmat_scores", [&] {
    check_cuda(cuda::fdmat_scores(M.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), N, C, reg,
                                  out.data_ptr<scalar_t>(), current_stream()),
               "fdmat_scores");
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lcmat, CUDA, m) {
  m.impl("last_layer_factors", &last_layer_factors_cuda);
  m.impl("last_layer_grad_norms", &last_layer_grad_norms_cuda);
  m.impl("curvature_moments", &curvature_moments_cuda);
  m.impl("gradient_distance", &gradient_distance_cuda);
  m.impl("pairwise_l1", &pairwise_l1_cuda);
  m.impl("hessian_diag_coords", &hessian_diag_coords_cuda);
  m.impl("lcmat_distance", &lcmat_distance_cuda);
  m.impl("facility_location_greedy", &facility_location_greedy_cuda);
  m.impl("facility_location_greedy_batch", &facility_location_greedy_batch_cuda);
  m.impl("sinkhorn_log", &sinkhorn_log_cuda);
  m.impl("sinkhorn_log_ragged", &sinkhorn_log_ragged_cuda);
  m.impl("prototype_cost", &prototype_cost_cuda);
  m.impl("fdmat_scores", &fdmat_scores_cuda);
}

}  // namespace lcmat
