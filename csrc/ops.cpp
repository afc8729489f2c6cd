// lcmat._C: the op schemas (TORCH_LIBRARY(lcmat)), their CPU implementations and the Python
// module stub. This is the only CPU translation unit that includes torch headers; it checks the
// arguments, runs the GEMMs through ATen and hands raw pointers to csrc/cpu/*.cpp.
// The CUDA implementations register under the same schemas in csrc/cuda/cuda_ops.cpp.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "cpu/cpu_kernels.h"
#include "ops_common.h"

namespace lcmat {
namespace {

using at::Tensor;
using std::optional;

// ---- last_layer -------------------------------------------------------------------------------

std::tuple<Tensor, Tensor> last_layer_factors_cpu(const Tensor& logits_in, const Tensor& labels_in) {
  check_float(logits_in, "logits");
  check_dim(logits_in, 2, "logits");
  const Tensor logits = logits_in.contiguous();
  const Tensor labels = checked_labels(labels_in, logits.size(0));
  Tensor e = at::empty_like(logits), q = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "last_layer_factors", [&] {
    const int64_t bad = cpu::last_layer_factors(logits.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(),
                                                logits.size(0), logits.size(1), e.data_ptr<scalar_t>(),
                                                q.data_ptr<scalar_t>());
    check_label_row(bad, labels, logits.size(1));
  });
  return {e, q};
}

std::tuple<Tensor, Tensor> last_layer_grad_norms_cpu(const Tensor& embeddings_in, const Tensor& logits_in,
                                                     const Tensor& labels_in, const optional<Tensor>& scale_in) {
  check_float(logits_in, "logits");
  check_dim(logits_in, 2, "logits");
  const int64_t n = logits_in.size(0), C = logits_in.size(1);
  const Tensor embeddings = checked_rows(embeddings_in, n, logits_in.scalar_type(), "embeddings");
  const Tensor logits = logits_in.contiguous();
  const Tensor labels = checked_labels(labels_in, n);
  const optional<Tensor> scale = checked_scale(scale_in, n, logits.scalar_type());
  Tensor grad = at::empty({n}, logits.options()), err = at::empty({n}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "last_layer_grad_norms", [&] {
    const int64_t bad = cpu::last_layer_grad_norms(
        embeddings.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(),
        scale ? scale->data_ptr<scalar_t>() : nullptr, n, C, embeddings.size(1), grad.data_ptr<scalar_t>(),
        err.data_ptr<scalar_t>());
    check_label_row(bad, labels, C);
  });
  return {grad, err};
}

// ---- lcmat_distance ---------------------------------------------------------------------------

// An n x m result matrix. On Linux, transparent huge pages are requested before its first touch:
// a fresh 100 MB block then takes about 50 page faults instead of 25,000 (filling a new
// 5,000 x 5,000 float matrix: 60 ms without, 12 ms with, on the 2-core machine). Only a hint.
Tensor empty_matrix(int64_t n, int64_t m, const at::TensorOptions& options) {
  Tensor out = at::empty({n, m}, options);
#ifdef __linux__
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t start = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t begin = (start + kHuge - 1) & ~(kHuge - 1), end = (start + out.nbytes()) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
  return out;
}

// Scratch tensors of distance_blocks (Gram panels and row-block buffers) of the given sizes,
// carved from memory that each thread keeps between calls: allocated afresh, their tens of MB
// would be page-faulted in again for every class (a third of a 30 ms ImageNet-shaped class, by
// perf). The memory grows to the largest call seen and is never returned; the tensors are valid
// until the thread's next call.
std::vector<Tensor> scratch_tensors(const std::vector<int64_t>& numels, const at::TensorOptions& options) {
  thread_local std::vector<char> memory;
  auto bytes = [&](int64_t numel) { return (static_cast<size_t>(numel) * options.dtype().itemsize() + 63) / 64 * 64; };
  size_t total = 0;
  for (const int64_t numel : numels) total += bytes(numel);
  if (memory.size() < total) {
    memory = std::vector<char>();
    memory.resize(total);
  }
  std::vector<Tensor> out;
  size_t at = 0;
  for (const int64_t numel : numels) {
    out.push_back(at::from_blob(memory.data() + at, {numel}, options));
    at += bytes(numel);
  }
  return out;
}

// a a^T, rows [r0, r1) and columns [r0, n), for distance_blocks: cpu::gram_upper on panels
// packed once per class where the build has AVX-512 (float, and at least 32 columns: below that
// the product is bound by its writes), else ATen's GEMM.
struct GramOperand {
  const Tensor& a;
  Tensor panels;  // undefined: ATen's GEMM
  static bool packs(const Tensor& a) {
    return a.scalar_type() == at::kFloat && a.size(1) >= 32 && cpu::built_with_avx512();
  }
  static int64_t panels_size(const Tensor& a) { return packs(a) ? cpu::gram_panels_size(a.size(0), a.size(1)) : 0; }
  GramOperand(const Tensor& a_, const Tensor& memory) : a(a_) {
    if (packs(a)) {
      panels = memory;
      cpu::gram_pack(a.data_ptr<float>(), a.size(0), a.size(1), panels.data_ptr<float>());
    }
  }
  void upper_rows(int64_t r0, int64_t r1, Tensor& out) const {
    if (panels.defined()) {
      cpu::gram_upper(panels.data_ptr<float>(), a.size(0), a.size(1), r0, r1, out.data_ptr<float>());
    } else {
      at::mm_out(out, a.narrow(0, r0, r1 - r0), a.narrow(0, r0, a.size(0) - r0).t());
    }
  }
};

// The per-class distance (DESIGN.md 2.1), row blocks top to bottom: per block two GEMMs for
// <h_i, h_j> and <s_i e_i, s_j e_j> right of its diagonal (half the work of the full products,
// into buffers reused by every block), then cpu::distance_block turns them into distances, adding
// rho times the L1 term over d's K columns.
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

// se = s_i e_i as a contiguous matrix, and the embeddings in its dtype.
std::tuple<Tensor, Tensor> scaled_errors(const Tensor& embeddings, const Tensor& e, const optional<Tensor>& scale_in) {
  check_float(e, "e");
  check_dim(e, 2, "e");
  const int64_t n = e.size(0);
  const Tensor h = checked_rows(embeddings, n, e.scalar_type(), "embeddings");
  const optional<Tensor> scale = checked_scale(scale_in, n, e.scalar_type());
  return {h, scale ? (e * scale->unsqueeze(1)).contiguous() : e.contiguous()};
}

Tensor gradient_distance_cpu(const Tensor& embeddings, const Tensor& e, const optional<Tensor>& scale) {
  auto [h, se] = scaled_errors(embeddings, e, scale);
  return distance_blocks(h, se, Tensor(), Tensor(), 0.0);
}

Tensor pairwise_l1_cpu(const Tensor& a_in, const optional<Tensor>& b_in) {
  check_float(a_in, "a");
  check_dim(a_in, 2, "a");
  const Tensor a = a_in.contiguous();
  optional<Tensor> b;
  if (b_in) {
    check_dim(*b_in, 2, "b");
    TORCH_CHECK(b_in->scalar_type() == a.scalar_type(), "b: dtype ", b_in->scalar_type(), " differs from a's ",
                a.scalar_type());
    TORCH_CHECK(b_in->size(1) == a.size(1), "b: needs ", a.size(1), " columns like a, got ", b_in->size(1));
    b = b_in->contiguous();
  }
  Tensor out = empty_matrix(a.size(0), b ? b->size(0) : a.size(0), a.options());
  const Tensor bt = (b ? *b : a).t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pairwise_l1", [&] {
    cpu::pairwise_l1(a.data_ptr<scalar_t>(), a.size(0), bt.data_ptr<scalar_t>(), bt.size(1), a.size(1),
                     !b.has_value(), out.data_ptr<scalar_t>());
  });
  return out;
}

// d_i restricted to coords, as rows [n, K] and, when `transposed`, also as columns [K, n].
std::tuple<Tensor, Tensor> hessian_diag_coords_both(const Tensor& embeddings_in, const Tensor& q_in,
                                                    const Tensor& coords_in, const optional<Tensor>& scale_in,
                                                    bool transposed) {
  check_float(q_in, "q");
  check_dim(q_in, 2, "q");
  const int64_t n = q_in.size(0), C = q_in.size(1);
  const Tensor h = checked_rows(embeddings_in, n, q_in.scalar_type(), "embeddings");
  const Tensor q = q_in.contiguous();
  const Tensor coords = checked_coords(coords_in, C * (h.size(1) + 1));
  const optional<Tensor> scale = checked_scale(scale_in, n, q.scalar_type());
  const int64_t K = coords.numel();
  Tensor out = at::empty({n, K}, q.options());
  Tensor out_t = transposed ? at::empty({K, n}, q.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "hessian_diag_coords", [&] {
    cpu::hessian_diag_coords(h.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), coords.data_ptr<int64_t>(),
                             scale ? scale->data_ptr<scalar_t>() : nullptr, n, C, h.size(1), K,
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
  auto [h, se] = scaled_errors(embeddings, e, scale);
  check_float(q, "q");
  TORCH_CHECK(q.sizes() == e.sizes(), "q: shape ", q.sizes(), " differs from e's ", e.sizes());
  if (rho == 0.0 || coords.numel() == 0) return distance_blocks(h, se, Tensor(), Tensor(), 0.0);
  auto [d, d_t] = hessian_diag_coords_both(embeddings, q.to(e.scalar_type()), coords, scale, true);
  return distance_blocks(h, se, d, d_t, rho);
}

std::tuple<Tensor, Tensor> curvature_moments_cpu(const Tensor& embeddings_in, const Tensor& q_in,
                                                 const optional<Tensor>& scale_in) {
  check_float(q_in, "q");
  check_dim(q_in, 2, "q");
  const int64_t n = q_in.size(0), C = q_in.size(1);
  const Tensor h = checked_rows(embeddings_in, n, embeddings_in.scalar_type(), "embeddings");
  const optional<Tensor> scale = checked_scale(scale_in, n, at::kDouble);
  // Without AVX-512 the one-pass kernel keeps 2 C x 32 float64 sums per task in L1: 8 ms against
  // 48 ms for the GEMMs at C = 10, n = 5,000. At C = 1,000 they spill (0.27 s for the first
  // ImageNet-shaped class, 0.19 s with the GEMMs, bench_imagenet_shape.py on 2026-12-02), so many
  // classes take the GEMMs there. The AVX-512 kernel blocks the classes by 64 and takes any C.
  if (C > 64 && !cpu::built_with_avx512()) return curvature_moments_aten(h, q_in, scale);
  const Tensor q = q_in.scalar_type() == at::kFloat ? q_in.contiguous() : q_in.to(at::kDouble).contiguous();
  const int64_t D = h.size(1);
  const auto f64 = h.options().dtype(at::kDouble);
  Tensor mean = at::empty({C * (D + 1)}, f64), second = at::empty({C * (D + 1)}, f64);
  const Tensor workspace = scratch_tensors({cpu::curvature_moments_workspace(n, C)}, f64)[0];
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "curvature_moments", [&] {
    const double* s = scale ? scale->data_ptr<double>() : nullptr;
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

// ---- facility_location ------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> facility_location_greedy_cpu(const Tensor& dist_in, int64_t k,
                                                                optional<double> L, bool lazy) {
  check_float(dist_in, "dist");
  check_dim(dist_in, 2, "dist");
  const Tensor dist = dist_in.contiguous();
  const int64_t n = dist.size(0), m = dist.size(1);
  TORCH_CHECK(k >= 0 && k <= n, "k: must lie in [0, ", n, "], got ", k);
  TORCH_CHECK(k <= m, "k: must not exceed the ", m, " columns of dist, got ", k);
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

// ---- sinkhorn ---------------------------------------------------------------------------------

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

cpu::SinkhornOptions sinkhorn_options(double reg, int64_t max_iter, double tol, int64_t check_every) {
  TORCH_CHECK(reg > 0 && std::isfinite(reg), "reg: must be a positive number, got ", reg);
  TORCH_CHECK(check_every >= 1, "check_every: must be >= 1, got ", check_every);
  return {reg, max_iter, tol, check_every};
}

using SinkhornOut = std::tuple<Tensor, Tensor, Tensor, Tensor>;

SinkhornOut sinkhorn_log_cpu(const Tensor& a_in, const Tensor& b_in, const Tensor& M_in, double reg,
                             int64_t max_iter, double tol, int64_t check_every) {
  const cpu::SinkhornOptions opt = sinkhorn_options(reg, max_iter, tol, check_every);
  check_float(M_in, "M");
  TORCH_CHECK(M_in.dim() == 2 || M_in.dim() == 3, "M: must be [n, m] or [B, n, m], got shape ", M_in.sizes());
  const bool batched = M_in.dim() == 3;
  const Tensor M = batched ? M_in.contiguous() : M_in.unsqueeze(0).contiguous();
  const int64_t B = M.size(0), n = M.size(1), m = M.size(2);
  const Tensor a = checked_vector_batch(a_in, B, n, M.scalar_type(), batched, "a");
  const Tensor b = checked_vector_batch(b_in, B, m, M.scalar_type(), batched, "b");
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
  const cpu::SinkhornOptions opt = sinkhorn_options(reg, max_iter, tol, check_every);
  check_float(a_in, "a");
  const auto dtype = a_in.scalar_type();
  const Tensor a = a_in.contiguous(), b = b_in.to(dtype).contiguous();
  check_dim(a, 1, "a");
  check_dim(b, 1, "b");
  const int64_t P = check_offsets(row_offsets, col_offsets, a.size(0), b.size(0));
  TORCH_CHECK(cost_in.has_value() != (x_in.has_value() && y_in.has_value()),
              "cost, x, y: give either a stored `cost` or both features `x` and `y`");
  Tensor f = at::zeros_like(a), g = at::zeros_like(b);
  Tensor n_iter = at::zeros({P}, a.options().dtype(at::kLong));
  Tensor err = at::zeros({P}, a.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "sinkhorn_log_ragged", [&] {
    RaggedCosts<scalar_t> ctx;
    ctx.row_off = row_offsets.data();
    ctx.col_off = col_offsets.data();
    Tensor cost;
    if (cost_in) {
      cost = cost_in->to(dtype).contiguous().reshape(-1);
      int64_t start = 0;
      for (int64_t p = 0; p < P; ++p) {
        ctx.cost_start.push_back(start);
        start += (row_offsets[p + 1] - row_offsets[p]) * (col_offsets[p + 1] - col_offsets[p]);
      }
      TORCH_CHECK(cost.numel() >= start, "cost: needs ", start, " values (the blocks n_p x m_p one after the other), got ",
                  cost.numel());
      ctx.cost = cost.data_ptr<scalar_t>();
    } else {
      check_dim(*x_in, 2, "x");
      check_dim(*y_in, 2, "y");
      TORCH_CHECK(x_in->size(0) == a.size(0), "x: needs ", a.size(0), " rows like a, got ", x_in->size(0));
      TORCH_CHECK(y_in->size(0) == b.size(0), "y: needs ", b.size(0), " rows like b, got ", y_in->size(0));
      TORCH_CHECK(x_in->size(1) == y_in->size(1), "y: needs ", x_in->size(1), " columns like x, got ", y_in->size(1));
      ctx.x = x_in->to(dtype).contiguous();
      ctx.y = y_in->to(dtype).contiguous();
    }
    cpu::sinkhorn_ragged<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), row_offsets.data(),
                                   col_offsets.data(), P, &make_ragged_cost<scalar_t>, &ctx, opt,
                                   f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), n_iter.data_ptr<int64_t>(),
                                   err.data_ptr<scalar_t>());
  });
  return {f, g, n_iter, err};
}

// ---- fdmat ------------------------------------------------------------------------------------

// FDMat's transform, as lcmat.reference.fdmat_transform computes it (the same ATen operations,
// so the same values) except for two things: the result is allocated with huge pages requested
// (filling a fresh ImageNet-sized 2.6 GB matrix page by page took seconds here), and the mean's
// float64 column sums are one pass of cpu::column_sums (ATen's sum(0, dtype=float64) over a
// row-major float32 matrix took 5.8 s at 1,281,167 x 512).
Tensor fdmat_transform_cpu(const Tensor& features_in, double beta, double eps) {
  check_float(features_in, "features");
  check_dim(features_in, 2, "features");
  const Tensor features = features_in.contiguous();
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
  check_float(x_in, "x");
  check_dim(x_in, 2, "x");
  check_dim(prototypes_in, 2, "prototypes");
  const Tensor x = x_in.contiguous();
  const Tensor mu = prototypes_in.to(x.scalar_type()).contiguous();
  TORCH_CHECK(mu.size(1) == x.size(1), "prototypes: needs ", x.size(1), " columns like x, got ", mu.size(1));
  Tensor out = empty_matrix(x.size(0), mu.size(0), x.options());  // N x C: huge pages, as above
  if (GramOperand::packs(x)) {  // the AVX-512 Gram kernel of distance_blocks (see there)
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
  check_float(M_in, "M");
  check_dim(M_in, 2, "M");
  TORCH_CHECK(reg > 0, "reg: must be positive, got ", reg);
  const Tensor M = M_in.contiguous();
  const int64_t N = M.size(0), C = M.size(1);
  const Tensor f = checked_vector_batch(f_in, 1, N, M.scalar_type(), false, "f");
  const Tensor g = checked_vector_batch(g_in, 1, C, M.scalar_type(), false, "g");
  Tensor out = at::empty({N}, M.options());
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "fdmat_scores", [&] {
    cpu::fdmat_scores(M.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), N, C, reg,
                      out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(lcmat, m) {
  m.def("last_layer_factors(Tensor logits, Tensor labels) -> (Tensor, Tensor)");
  m.def("last_layer_grad_norms(Tensor embeddings, Tensor logits, Tensor labels, Tensor? scale) -> (Tensor, Tensor)");
  m.def("curvature_moments(Tensor embeddings, Tensor q, Tensor? scale) -> (Tensor, Tensor)");
  m.def("gradient_distance(Tensor embeddings, Tensor e, Tensor? scale) -> Tensor");
  m.def("pairwise_l1(Tensor a, Tensor? b) -> Tensor");
  m.def("hessian_diag_coords(Tensor embeddings, Tensor q, Tensor coords, Tensor? scale) -> Tensor");
  m.def("lcmat_distance(Tensor embeddings, Tensor e, Tensor q, Tensor coords, float rho, Tensor? scale) -> Tensor");
  m.def("facility_location_greedy(Tensor dist, int k, float? L, bool lazy) -> (Tensor, Tensor, Tensor)");
  m.def("facility_location_greedy_batch(Tensor[] dists, int[] ks, float? L, bool lazy) -> (Tensor[], Tensor[], Tensor[])");
  m.def("sinkhorn_log(Tensor a, Tensor b, Tensor M, float reg, int max_iter, float tol, int check_every)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("sinkhorn_log_ragged(Tensor a, Tensor b, int[] row_offsets, int[] col_offsets, float reg, Tensor? cost,"
        " Tensor? x, Tensor? y, int max_iter, float tol, int check_every) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("fdmat_transform(Tensor features, float beta, float eps) -> Tensor");
  m.def("prototype_cost(Tensor x, Tensor prototypes) -> Tensor");
  m.def("fdmat_scores(Tensor M, Tensor f, Tensor g, float reg) -> Tensor");
}

TORCH_LIBRARY_IMPL(lcmat, CPU, m) {
  m.impl("last_layer_factors", &last_layer_factors_cpu);
  m.impl("last_layer_grad_norms", &last_layer_grad_norms_cpu);
  m.impl("curvature_moments", &curvature_moments_cpu);
  m.impl("gradient_distance", &gradient_distance_cpu);
  m.impl("pairwise_l1", &pairwise_l1_cpu);
  m.impl("hessian_diag_coords", &hessian_diag_coords_cpu);
  m.impl("lcmat_distance", &lcmat_distance_cpu);
  m.impl("facility_location_greedy", &facility_location_greedy_cpu);
  m.impl("facility_location_greedy_batch", &facility_location_greedy_batch_cpu);
  m.impl("sinkhorn_log", &sinkhorn_log_cpu);
  m.impl("sinkhorn_log_ragged", &sinkhorn_log_ragged_cpu);
  m.impl("fdmat_transform", &fdmat_transform_cpu);
  m.impl("prototype_cost", &prototype_cost_cpu);
  m.impl("fdmat_scores", &fdmat_scores_cpu);
}

}  // namespace lcmat

// The Python module lcmat._C: importing it loads this library, whose static initialisers register
// the ops under torch.ops.lcmat. WITH_CUDA says whether the CUDA kernels were compiled in.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "lcmat's compiled kernels (torch.ops.lcmat)", -1,
                               nullptr};
  PyObject* mod = PyModule_Create(&module);
  if (mod == nullptr) return nullptr;
#ifdef WITH_CUDA
  PyModule_AddIntConstant(mod, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(mod, "WITH_CUDA", 0);
#endif
  return mod;
}
