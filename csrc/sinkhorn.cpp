// The sinkhorn ops (log-domain Sinkhorn on dense, batched and ragged problems, and the plan from
// its potentials): schemas, CPU implementations (solver and plan in csrc/cpu/sinkhorn.cpp) and, in
// CUDA builds, CUDA implementations (solver in csrc/cuda/sinkhorn.cu). Arguments are checked once
// for both backends in ops_common.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <limits>
#include <memory>
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

// ---- CPU --------------------------------------------------------------------------------------

// The cost of problem p as ||x_i - y_j||^2, from its rows of x and y: computed once whole when
// small, else one tile of rows at a time (a GEMM per tile, inside the solver's threads).
template <typename T>
struct FeatureCost : cpu::CostBlock<T> {
  Tensor x, yt, xx, yy;  // x [n, D], y^T [D, m], squared norms
  int64_t m;
  FeatureCost(const Tensor& x_, const Tensor& y_) : x(x_), yt(y_.t()), xx((x_ * x_).sum(1)), yy((y_ * y_).sum(1)), m(y_.size(0)) {}
  bool needs_scratch() const override { return true; }
  const T* rows(int64_t r0, int64_t r1, T* scratch) const override {
    Tensor out = at::from_blob(scratch, {r1 - r0, m}, x.options());
    at::mm_out(out, x.narrow(0, r0, r1 - r0), yt);
    cpu::squared_euclidean_from_dot(scratch, xx.data_ptr<T>() + r0, yy.data_ptr<T>(), r1 - r0, m, false);
    return scratch;
  }
};

template <typename T>
struct OwnedCost : cpu::StoredCost<T> {  // a cost block materialised once for the whole solve
  Tensor storage;
  explicit OwnedCost(Tensor t) : cpu::StoredCost<T>(t.data_ptr<T>(), t.size(1)), storage(std::move(t)) {}
};

template <typename T>
struct RaggedCosts {  // what the ragged solver's cost factory reads
  const T* cost = nullptr;                  // stored: flat blocks, one after the other
  std::vector<int64_t> cost_start;          // stored: where block p starts
  Tensor x, y;                              // features
  const int64_t* row_off;
  const int64_t* col_off;
};

template <typename T>
std::unique_ptr<cpu::CostBlock<T>> make_ragged_cost(const void* ctx_, int64_t p) {
  const auto& ctx = *static_cast<const RaggedCosts<T>*>(ctx_);
  const int64_t r0 = ctx.row_off[p], c0 = ctx.col_off[p];
  const int64_t n = ctx.row_off[p + 1] - r0, m = ctx.col_off[p + 1] - c0;
  if (ctx.cost) return std::make_unique<cpu::StoredCost<T>>(ctx.cost + ctx.cost_start[p], m);
  const Tensor x = ctx.x.narrow(0, r0, n), y = ctx.y.narrow(0, c0, m);
  constexpr int64_t kMaterialise = int64_t(1) << 24;  // values: 64 MB in float
  if (n * m <= kMaterialise) {
    Tensor M = at::mm(x, y.t());
    const Tensor xx = (x * x).sum(1), yy = (y * y).sum(1);
    cpu::squared_euclidean_from_dot(M.data_ptr<T>(), xx.data_ptr<T>(), yy.data_ptr<T>(), n, m, false);
    return std::make_unique<OwnedCost<T>>(std::move(M));
  }
  return std::make_unique<FeatureCost<T>>(x, y);
}

SinkhornOut sinkhorn_log_cpu(const Tensor& a_in, const Tensor& b_in, const Tensor& M_in, double reg,
                             int64_t max_iter, double tol, int64_t check_every) {
  check_sinkhorn_options(reg, check_every);
  const cpu::SinkhornOptions opt{reg, max_iter, tol, check_every};
  const DenseSinkhornArgs args = sinkhorn_log_args(a_in, b_in, M_in);
  const Tensor &a = args.a, &b = args.b, &M = args.M;
  const int64_t B = M.size(0), n = M.size(1), m = M.size(2);
  Tensor f = at::zeros({B, n}, M.options()), g = at::zeros({B, m}, M.options());
  Tensor n_iter = at::zeros({B}, M.options().dtype(at::kLong));
  Tensor err = at::empty({B}, M.options());
  std::vector<int64_t> row_off(B + 1), col_off(B + 1);
  for (int64_t p = 0; p <= B; ++p) {
    row_off[p] = p * n;
    col_off[p] = p * m;
  }
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "sinkhorn_log", [&] {
    RaggedCosts<scalar_t> ctx;
    ctx.cost = M.data_ptr<scalar_t>();
    for (int64_t p = 0; p < B; ++p) ctx.cost_start.push_back(p * n * m);
    ctx.row_off = row_off.data();
    ctx.col_off = col_off.data();
    cpu::sinkhorn_ragged<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), row_off.data(), col_off.data(), B,
                                   &make_ragged_cost<scalar_t>, &ctx, opt, f.data_ptr<scalar_t>(),
                                   g.data_ptr<scalar_t>(), n_iter.data_ptr<int64_t>(), err.data_ptr<scalar_t>());
  });
  if (n == 0 || m == 0) err.fill_(std::numeric_limits<double>::infinity());  // as the dense reference
  return {f, g, n_iter, err};
}

SinkhornOut sinkhorn_log_ragged_cpu(const Tensor& a_in, const Tensor& b_in, at::IntArrayRef row_offsets,
                                    at::IntArrayRef col_offsets, double reg, const optional<Tensor>& cost_in,
                                    const optional<Tensor>& x_in, const optional<Tensor>& y_in, int64_t max_iter,
                                    double tol, int64_t check_every) {
  check_sinkhorn_options(reg, check_every);
  const cpu::SinkhornOptions opt{reg, max_iter, tol, check_every};
  const RaggedSinkhornArgs args =
      sinkhorn_log_ragged_args(a_in, b_in, row_offsets, col_offsets, cost_in, x_in, y_in);
  const Tensor &a = args.a, &b = args.b;
  const int64_t P = args.P;
  Tensor f = at::zeros_like(a), g = at::zeros_like(b);
  Tensor n_iter = at::zeros({P}, a.options().dtype(at::kLong));
  Tensor err = at::zeros({P}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sinkhorn_log_ragged", [&] {
    RaggedCosts<scalar_t> ctx;
    ctx.row_off = row_offsets.data();
    ctx.col_off = col_offsets.data();
    if (args.cost.defined()) {
      ctx.cost = args.cost.data_ptr<scalar_t>();
      ctx.cost_start = args.cost_start;
    } else {
      ctx.x = args.x;
      ctx.y = args.y;
    }
    cpu::sinkhorn_ragged<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), row_offsets.data(),
                                   col_offsets.data(), P, &make_ragged_cost<scalar_t>, &ctx, opt,
                                   f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), n_iter.data_ptr<int64_t>(),
                                   err.data_ptr<scalar_t>());
  });
  return {f, g, n_iter, err};
}

// P = exp((f_i + g_j - M_ij) / reg) from Sinkhorn potentials, one fused pass over the cost (the
// reference, lcmat/reference/sinkhorn.py, makes four elementwise passes).
Tensor sinkhorn_plan_cpu(const Tensor& f_in, const Tensor& g_in, const Tensor& M_in, double reg) {
  const PlanArgs args = sinkhorn_plan_args(f_in, g_in, M_in, reg);
  const Tensor &f = args.f, &g = args.g, &M = args.M;
  Tensor P = at::empty_like(M);
  const int64_t batch = M.dim() == 3 ? M.size(0) : 1, n = M.size(-2), m = M.size(-1);
  constexpr int64_t kParallelWork = 1 << 16;  // below this, threads cost more than they give
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "sinkhorn_plan", [&] {
    cpu::sinkhorn_plan<scalar_t>(f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), M.data_ptr<scalar_t>(),
                                 batch, n, m, static_cast<scalar_t>(reg), M.numel() >= kParallelWork,
                                 P.data_ptr<scalar_t>());
  });
  return P;
}

// ---- CUDA -------------------------------------------------------------------------------------

#ifdef WITH_CUDA
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
  const c10::cuda::CUDAGuard guard(M_in.device());
  check_sinkhorn_options(reg, check_every);
  const cuda::SinkhornOptions opt{reg, max_iter, tol, check_every};
  const DenseSinkhornArgs args = sinkhorn_log_args(a_in, b_in, M_in);
  const Tensor &a = args.a, &b = args.b, &M = args.M;
  const int64_t B = M.size(0), n = M.size(1), m = M.size(2);
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
  check_sinkhorn_options(reg, check_every);
  const cuda::SinkhornOptions opt{reg, max_iter, tol, check_every};
  const RaggedSinkhornArgs args =
      sinkhorn_log_ragged_args(a_in, b_in, row_offsets, col_offsets, cost_in, x_in, y_in);
  const Tensor &a = args.a, &b = args.b, &cost = args.cost, &x = args.x, &y = args.y;
  const int64_t P = args.P;
  Tensor f = at::zeros_like(a), g = at::zeros_like(b);
  std::vector<int64_t> n_iter(P, 0);
  std::vector<double> err(P, 0.0);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sinkhorn_log_ragged", [&] {
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
  const Tensor err_t = at::tensor(err, at::kDouble).to(a.device(), a.scalar_type());
  return {f, g, n_iter_t, err_t};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(lcmat, m) {
  m.def("sinkhorn_log(Tensor a, Tensor b, Tensor M, float reg, int max_iter, float tol, int check_every)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("sinkhorn_log_ragged(Tensor a, Tensor b, int[] row_offsets, int[] col_offsets, float reg, Tensor? cost,"
        " Tensor? x, Tensor? y, int max_iter, float tol, int check_every) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("sinkhorn_plan(Tensor f, Tensor g, Tensor M, float reg) -> Tensor");
}

TORCH_LIBRARY_IMPL(lcmat, CPU, m) {
  m.impl("sinkhorn_log", &sinkhorn_log_cpu);
  m.impl("sinkhorn_log_ragged", &sinkhorn_log_ragged_cpu);
  m.impl("sinkhorn_plan", &sinkhorn_plan_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(lcmat, CUDA, m) {
  m.impl("sinkhorn_log", &sinkhorn_log_cuda);
  m.impl("sinkhorn_log_ragged", &sinkhorn_log_ragged_cuda);
}
#endif

}  // namespace lcmat
