// Argument checks and the device-agnostic ATen parts shared by the CPU and CUDA bindings of every
// kernel family (csrc/<family>.cpp). Each op's arguments are checked by one function here, which
// both backends call, so the two cannot drift apart. Every error names the argument at fault.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <initializer_list>
#include <cmath>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace lcmat {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              ": must be float32 or float64, got ", t.scalar_type());
}

// One tensor argument of an op, by name; an absent optional one is skipped.
struct NamedTensor {
  const char* name;
  const at::Tensor* tensor;
  NamedTensor(const char* n, const at::Tensor& t) : name(n), tensor(&t) {}
  NamedTensor(const char* n, const std::optional<at::Tensor>& t) : name(n), tensor(t ? &*t : nullptr) {}
};

// Every tensor of an op on the device of its main one. The dispatcher sends an op to its CUDA
// kernel when any argument is a CUDA tensor, and a kernel handed a host pointer reads garbage or
// faults; so a tensor left on another device is a ValueError naming it (nothing is moved).
inline void check_same_device(const NamedTensor& main, std::initializer_list<NamedTensor> others) {
  for (const NamedTensor& other : others) {
    if (other.tensor == nullptr || !other.tensor->defined()) continue;
    TORCH_CHECK_VALUE(other.tensor->device() == main.tensor->device(), other.name, ": must be on ",
                      main.tensor->device(), " like ", main.name, ", got a tensor on ", other.tensor->device());
  }
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim, name, ": must have ", dim, " dimensions, got shape ", t.sizes());
}

// A contiguous [n, *] matrix in the given dtype.
inline at::Tensor checked_rows(const at::Tensor& t, int64_t n, at::ScalarType dtype, const char* name) {
  check_dim(t, 2, name);
  TORCH_CHECK(t.size(0) == n, name, ": needs ", n, " rows, got ", t.size(0));
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, ": must be floating point, got ", t.scalar_type());
  return t.to(dtype).contiguous();
}

inline at::Tensor checked_labels(const at::Tensor& labels, int64_t n) {
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == n, "labels: must have shape [", n, "], got ", labels.sizes());
  TORCH_CHECK(!at::isFloatingType(labels.scalar_type()), "labels: must be integers, got ", labels.scalar_type());
  return labels.to(at::kLong).contiguous();
}

// bad: the first row whose label lies outside [0, C), or -1.
inline void check_label_row(int64_t bad, const at::Tensor& labels, int64_t C) {
  if (bad >= 0) {
    TORCH_CHECK(false, "labels: must lie in [0, ", C, "), got ", labels[bad].item<int64_t>(), " at row ", bad);
  }
}

// Labels checked by a reduction over the tensor (backends whose kernels do not report a bad row).
inline void check_labels_in_range(const at::Tensor& labels, int64_t C) {
  if (labels.numel() == 0) return;
  const bool bad = ((labels < 0) | (labels >= C)).any().item<bool>();
  TORCH_CHECK(!bad, "labels: must lie in [0, ", C, "), got values in [", labels.min().item<int64_t>(), ", ",
              labels.max().item<int64_t>(), "]");
}

inline std::optional<at::Tensor> checked_scale(const std::optional<at::Tensor>& scale, int64_t n,
                                               at::ScalarType dtype) {
  if (!scale) return std::nullopt;
  TORCH_CHECK(scale->dim() == 1 && scale->size(0) == n, "scale: must have shape [", n, "], got ", scale->sizes());
  return scale->to(dtype).contiguous();
}

inline at::Tensor checked_coords(const at::Tensor& coords, int64_t P) {
  TORCH_CHECK(coords.dim() == 1, "coords: must be 1-D, got shape ", coords.sizes());
  TORCH_CHECK(!at::isFloatingType(coords.scalar_type()), "coords: must be integers, got ", coords.scalar_type());
  const at::Tensor c = coords.to(at::kLong).cpu().contiguous();
  if (c.numel() > 0) {
    const int64_t lo = c.min().item<int64_t>(), hi = c.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < P, "coords: must lie in [0, C (D + 1)) = [0, ", P, "), got values in [", lo, ", ",
                hi, "]");
  }
  return c;
}

// a [n] (or [B, n] when batched) as a contiguous [B, n] tensor of the given dtype.
inline at::Tensor checked_vector_batch(const at::Tensor& t, int64_t B, int64_t n, at::ScalarType dtype, bool batched,
                                       const char* name) {
  if (batched) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == n, name, ": must have shape [", B, ", ", n,
                "], got ", t.sizes());
  } else {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, ": must have shape [", n, "], got ", t.sizes());
  }
  return t.to(dtype).contiguous().reshape({B, n});
}

// Ragged offsets: non-decreasing, same number of problems, inside a and b. Returns that number.
inline int64_t check_offsets(at::IntArrayRef rows, at::IntArrayRef cols, int64_t n, int64_t m) {
  TORCH_CHECK(rows.size() >= 1, "row_offsets: needs at least one entry");
  TORCH_CHECK(rows.size() == cols.size(), "col_offsets: needs ", rows.size(), " entries like row_offsets, got ",
              cols.size());
  for (size_t p = 0; p + 1 < rows.size(); ++p) {
    TORCH_CHECK(rows[p] <= rows[p + 1], "row_offsets: must be non-decreasing, got ", rows);
    TORCH_CHECK(cols[p] <= cols[p + 1], "col_offsets: must be non-decreasing, got ", cols);
  }
  TORCH_CHECK(rows.front() >= 0 && rows.back() <= n, "row_offsets: must lie in [0, ", n, "] (the length of a), got ",
              rows);
  TORCH_CHECK(cols.front() >= 0 && cols.back() <= m, "col_offsets: must lie in [0, ", m, "] (the length of b), got ",
              cols);
  return static_cast<int64_t>(rows.size()) - 1;
}

// Mean and second moment of every Hessian-diagonal coordinate, [P] each in float64:
// bias c: moments of s_i q_ic; weight (c, d): (1/n) (s q)^T h^2 and (1/n) ((s q)^2)^T h^4,
// two C x D GEMMs (never the n x C (D + 1) matrix). `scale` is float64 already.
inline std::tuple<at::Tensor, at::Tensor> curvature_moments_aten(const at::Tensor& h, const at::Tensor& q,
                                                                 const std::optional<at::Tensor>& scale) {
  const int64_t n = h.size(0);
  const at::Tensor h2 = h.to(at::kDouble).square();
  at::Tensor sq = q.to(at::kDouble);
  if (scale) sq = sq * scale->unsqueeze(1);
  const at::Tensor sq2 = sq.square();
  const at::Tensor mean = at::cat({sq.sum(0), at::mm(sq.t(), h2).flatten()}) / static_cast<double>(n);
  const at::Tensor second = at::cat({sq2.sum(0), at::mm(sq2.t(), h2.square()).flatten()}) / static_cast<double>(n);
  return {mean, second};
}

// Checks of the batched greedy shared by the CPU and CUDA bindings: one budget per block, blocks
// of one floating dtype, each budget within its block. Returns the blocks made contiguous.
inline std::vector<at::Tensor> greedy_batch_blocks(const std::vector<at::Tensor>& dists, const std::vector<int64_t>& ks) {
  TORCH_CHECK(dists.size() == ks.size(), "ks: expected one budget per block (", dists.size(), "), got ", ks.size());
  std::vector<at::Tensor> blocks;
  for (size_t b = 0; b < dists.size(); ++b) {
    check_float(dists[b], "dists");
    check_dim(dists[b], 2, "dists");
    TORCH_CHECK(dists[b].scalar_type() == dists[0].scalar_type(), "dists: block ", b, " is ",
                dists[b].scalar_type(), ", block 0 ", dists[0].scalar_type());
    TORCH_CHECK(dists[b].device() == dists[0].device(), "dists: block ", b, " is on ", dists[b].device(),
                ", block 0 on ", dists[0].device());
    const int64_t n = dists[b].size(0), m = dists[b].size(1);
    TORCH_CHECK(ks[b] >= 0 && ks[b] <= std::min(n, m), "ks: block ", b, " is ", n, " x ", m, ", budget ", ks[b]);
    blocks.push_back(dists[b].contiguous());
  }
  return blocks;
}

using GreedyBatch = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>;

// ---- the arguments of each op, checked once for every backend ---------------------------------
// Tensors come back contiguous, in the dtype the kernels read, and (labels, coords) on the device
// of the op's main operand.

// last_layer_factors(logits, labels)
struct FactorsArgs {
  at::Tensor logits, labels;
};
inline FactorsArgs last_layer_factors_args(const at::Tensor& logits_in, const at::Tensor& labels_in) {
  check_float(logits_in, "logits");
  check_dim(logits_in, 2, "logits");
  const at::Tensor logits = logits_in.contiguous();
  return {logits, checked_labels(labels_in, logits.size(0)).to(logits.device())};
}

// last_layer_grad_norms(embeddings, logits, labels, scale)
struct GradNormsArgs {
  at::Tensor h, logits, labels;
  std::optional<at::Tensor> scale;
};
inline GradNormsArgs last_layer_grad_norms_args(const at::Tensor& embeddings, const at::Tensor& logits_in,
                                                const at::Tensor& labels_in,
                                                const std::optional<at::Tensor>& scale_in) {
  check_same_device({"logits", logits_in}, {{"embeddings", embeddings}, {"scale", scale_in}});
  check_float(logits_in, "logits");
  check_dim(logits_in, 2, "logits");
  const int64_t n = logits_in.size(0);
  GradNormsArgs args;
  args.h = checked_rows(embeddings, n, logits_in.scalar_type(), "embeddings");
  args.logits = logits_in.contiguous();
  args.labels = checked_labels(labels_in, n).to(args.logits.device());
  args.scale = checked_scale(scale_in, n, args.logits.scalar_type());
  return args;
}

// gradient_distance(embeddings, e, scale) and the gradient term of lcmat_distance: the embeddings
// in e's dtype and se = s_i e_i.
struct ScaledErrors {
  at::Tensor h, se;
};
inline ScaledErrors scaled_errors_args(const at::Tensor& embeddings, const at::Tensor& e,
                                       const std::optional<at::Tensor>& scale_in) {
  check_same_device({"e", e}, {{"embeddings", embeddings}, {"scale", scale_in}});
  check_float(e, "e");
  check_dim(e, 2, "e");
  const int64_t n = e.size(0);
  const at::Tensor h = checked_rows(embeddings, n, e.scalar_type(), "embeddings");
  const std::optional<at::Tensor> scale = checked_scale(scale_in, n, e.scalar_type());
  return {h, scale ? (e * scale->unsqueeze(1)).contiguous() : e.contiguous()};
}

// lcmat_distance's q beside e.
inline void check_q_like_e(const at::Tensor& q, const at::Tensor& e) {
  check_same_device({"e", e}, {{"q", q}});
  check_float(q, "q");
  TORCH_CHECK(q.sizes() == e.sizes(), "q: shape ", q.sizes(), " differs from e's ", e.sizes());
}

// hessian_diag_coords(embeddings, q, coords, scale)
struct CoordsArgs {
  at::Tensor h, q, coords;
  std::optional<at::Tensor> scale;
};
inline CoordsArgs hessian_diag_coords_args(const at::Tensor& embeddings, const at::Tensor& q_in,
                                           const at::Tensor& coords_in, const std::optional<at::Tensor>& scale_in) {
  check_same_device({"q", q_in}, {{"embeddings", embeddings}, {"scale", scale_in}});
  check_float(q_in, "q");
  check_dim(q_in, 2, "q");
  const int64_t n = q_in.size(0), C = q_in.size(1);
  CoordsArgs args;
  args.h = checked_rows(embeddings, n, q_in.scalar_type(), "embeddings");
  args.q = q_in.contiguous();
  args.coords = checked_coords(coords_in, C * (args.h.size(1) + 1)).to(args.q.device());
  args.scale = checked_scale(scale_in, n, args.q.scalar_type());
  return args;
}

// curvature_moments(embeddings, q, scale): the embeddings in their own dtype, scale in float64.
struct MomentsArgs {
  at::Tensor h;
  std::optional<at::Tensor> scale;
};
inline MomentsArgs curvature_moments_args(const at::Tensor& embeddings, const at::Tensor& q,
                                          const std::optional<at::Tensor>& scale_in) {
  check_same_device({"q", q}, {{"embeddings", embeddings}, {"scale", scale_in}});
  check_float(q, "q");
  check_dim(q, 2, "q");
  const int64_t n = q.size(0);
  return {checked_rows(embeddings, n, embeddings.scalar_type(), "embeddings"), checked_scale(scale_in, n, at::kDouble)};
}

// pairwise_l1(a, b): b absent means b = a.
inline std::tuple<at::Tensor, std::optional<at::Tensor>> pairwise_l1_args(const at::Tensor& a_in,
                                                                          const std::optional<at::Tensor>& b_in) {
  check_same_device({"a", a_in}, {{"b", b_in}});
  check_float(a_in, "a");
  check_dim(a_in, 2, "a");
  const at::Tensor a = a_in.contiguous();
  if (!b_in) return {a, std::nullopt};
  check_dim(*b_in, 2, "b");
  TORCH_CHECK(b_in->scalar_type() == a.scalar_type(), "b: dtype ", b_in->scalar_type(), " differs from a's ",
              a.scalar_type());
  TORCH_CHECK(b_in->size(1) == a.size(1), "b: needs ", a.size(1), " columns like a, got ", b_in->size(1));
  return {a, b_in->contiguous()};
}

// facility_location_greedy(dist, k, ...)
inline at::Tensor facility_location_greedy_args(const at::Tensor& dist_in, int64_t k) {
  check_float(dist_in, "dist");
  check_dim(dist_in, 2, "dist");
  const int64_t n = dist_in.size(0);
  TORCH_CHECK(dist_in.size(1) == n, "dist: expected a square n x n distance block, got ", n, " x ",
              dist_in.size(1));
  TORCH_CHECK(k >= 0 && k <= n, "k: must lie in [0, ", n, "], got ", k);
  return dist_in.contiguous();
}

// The options every Sinkhorn solver takes.
inline void check_sinkhorn_options(double reg, int64_t check_every) {
  TORCH_CHECK(reg > 0 && std::isfinite(reg), "reg: must be a positive number, got ", reg);
  TORCH_CHECK(check_every >= 1, "check_every: must be >= 1, got ", check_every);
}

using SinkhornOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// sinkhorn_log(a, b, M, ...): M as [B, n, m] (B = 1 when not batched), a [B, n], b [B, m].
struct DenseSinkhornArgs {
  at::Tensor a, b, M;
};
inline DenseSinkhornArgs sinkhorn_log_args(const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& M_in) {
  check_same_device({"M", M_in}, {{"a", a_in}, {"b", b_in}});
  check_float(M_in, "M");
  TORCH_CHECK(M_in.dim() == 2 || M_in.dim() == 3, "M: must be [n, m] or [B, n, m], got shape ", M_in.sizes());
  const bool batched = M_in.dim() == 3;
  const at::Tensor M = batched ? M_in.contiguous() : M_in.unsqueeze(0).contiguous();
  const int64_t B = M.size(0), n = M.size(1), m = M.size(2);
  return {checked_vector_batch(a_in, B, n, M.scalar_type(), batched, "a"),
          checked_vector_batch(b_in, B, m, M.scalar_type(), batched, "b"), M};
}

// sinkhorn_log_ragged(a, b, row_offsets, col_offsets, reg, cost, x, y, ...): either `cost`, the
// blocks n_p x m_p flattened one after the other (cost_start[p] is where block p starts), or the
// features x and y; a's dtype throughout.
struct RaggedSinkhornArgs {
  at::Tensor a, b, cost, x, y;  // cost, or x and y, undefined
  int64_t P = 0;
  std::vector<int64_t> cost_start;
};
inline RaggedSinkhornArgs sinkhorn_log_ragged_args(const at::Tensor& a_in, const at::Tensor& b_in,
                                                   at::IntArrayRef row_offsets, at::IntArrayRef col_offsets,
                                                   const std::optional<at::Tensor>& cost_in,
                                                   const std::optional<at::Tensor>& x_in,
                                                   const std::optional<at::Tensor>& y_in) {
  check_same_device({"a", a_in}, {{"b", b_in}, {"cost", cost_in}, {"x", x_in}, {"y", y_in}});
  check_float(a_in, "a");
  const auto dtype = a_in.scalar_type();
  RaggedSinkhornArgs args;
  args.a = a_in.contiguous();
  args.b = b_in.to(dtype).contiguous();
  check_dim(args.a, 1, "a");
  check_dim(args.b, 1, "b");
  args.P = check_offsets(row_offsets, col_offsets, args.a.size(0), args.b.size(0));
  TORCH_CHECK(cost_in.has_value() != (x_in.has_value() && y_in.has_value()),
              "cost, x, y: give either a stored `cost` or both features `x` and `y`");
  if (cost_in) {
    args.cost = cost_in->to(dtype).contiguous().reshape(-1);
    int64_t start = 0;
    for (int64_t p = 0; p < args.P; ++p) {
      args.cost_start.push_back(start);
      start += (row_offsets[p + 1] - row_offsets[p]) * (col_offsets[p + 1] - col_offsets[p]);
    }
    TORCH_CHECK(args.cost.numel() >= start, "cost: needs ", start,
                " values (the blocks n_p x m_p one after the other), got ", args.cost.numel());
  } else {
    check_dim(*x_in, 2, "x");
    check_dim(*y_in, 2, "y");
    TORCH_CHECK(x_in->size(0) == args.a.size(0), "x: needs ", args.a.size(0), " rows like a, got ", x_in->size(0));
    TORCH_CHECK(y_in->size(0) == args.b.size(0), "y: needs ", args.b.size(0), " rows like b, got ", y_in->size(0));
    TORCH_CHECK(x_in->size(1) == y_in->size(1), "y: needs ", x_in->size(1), " columns like x, got ", y_in->size(1));
    args.x = x_in->to(dtype).contiguous();
    args.y = y_in->to(dtype).contiguous();
  }
  return args;
}

// sinkhorn_plan(f, g, M, reg): f [*, n] and g [*, m] (M's shape [*, n, m] without its last or its
// second-last axis), both in M's dtype.
struct PlanArgs {
  at::Tensor f, g, M;
};
inline PlanArgs sinkhorn_plan_args(const at::Tensor& f, const at::Tensor& g, const at::Tensor& M_in, double reg) {
  check_same_device({"M", M_in}, {{"f", f}, {"g", g}});
  check_float(M_in, "M");
  TORCH_CHECK(M_in.dim() == 2 || M_in.dim() == 3, "M: must be [n, m] or [B, n, m], got shape ", M_in.sizes());
  TORCH_CHECK(reg > 0 && std::isfinite(reg), "reg: must be a positive number, got ", reg);
  const auto rows = M_in.sizes().slice(0, M_in.dim() - 1);
  std::vector<int64_t> cols(M_in.sizes().begin(), M_in.sizes().end() - 2);
  cols.push_back(M_in.size(-1));
  TORCH_CHECK(f.sizes() == rows, "f: must have shape ", rows, " (M's without its last axis), got ", f.sizes());
  TORCH_CHECK(g.sizes() == at::IntArrayRef(cols), "g: must have shape ", at::IntArrayRef(cols),
              " (M's without its second-last axis), got ", g.sizes());
  TORCH_CHECK(at::isFloatingType(f.scalar_type()) && at::isFloatingType(g.scalar_type()),
              "f, g: must be floating point, got ", f.scalar_type(), " and ", g.scalar_type());
  const at::Tensor M = M_in.contiguous();
  return {f.to(M.scalar_type()).contiguous(), g.to(M.scalar_type()).contiguous(), M};
}

// fdmat_transform(features, ...)
inline at::Tensor fdmat_transform_args(const at::Tensor& features) {
  check_float(features, "features");
  check_dim(features, 2, "features");
  return features.contiguous();
}

// prototype_cost(x, prototypes): x and the prototypes in x's dtype.
inline std::tuple<at::Tensor, at::Tensor> prototype_cost_args(const at::Tensor& x_in, const at::Tensor& prototypes) {
  check_same_device({"x", x_in}, {{"prototypes", prototypes}});
  check_float(x_in, "x");
  check_dim(x_in, 2, "x");
  check_dim(prototypes, 2, "prototypes");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor mu = prototypes.to(x.scalar_type()).contiguous();
  TORCH_CHECK(mu.size(1) == x.size(1), "prototypes: needs ", x.size(1), " columns like x, got ", mu.size(1));
  return {x, mu};
}

// fdmat_scores(M, f, g, reg): f [1, N] and g [1, C] in M's dtype.
struct ScoresArgs {
  at::Tensor M, f, g;
};
inline ScoresArgs fdmat_scores_args(const at::Tensor& M_in, const at::Tensor& f, const at::Tensor& g, double reg) {
  check_same_device({"M", M_in}, {{"f", f}, {"g", g}});
  check_float(M_in, "M");
  check_dim(M_in, 2, "M");
  TORCH_CHECK(reg > 0, "reg: must be positive, got ", reg);
  const at::Tensor M = M_in.contiguous();
  return {M, checked_vector_batch(f, 1, M.size(0), M.scalar_type(), false, "f"),
          checked_vector_batch(g, 1, M.size(1), M.scalar_type(), false, "g")};
}

// linear_grad_norms(activations, grad_outputs): A [N, T, d_in] and G [N, T, d_out] in A's dtype.
inline std::tuple<at::Tensor, at::Tensor> linear_grad_norms_args(const at::Tensor& A_in, const at::Tensor& G_in) {
  check_same_device({"activations", A_in}, {{"grad_outputs", G_in}});
  TORCH_CHECK(A_in.dim() == 3 && G_in.dim() == 3, "activations, grad_outputs: expected [N, T, d] tensors, got shapes ",
              A_in.sizes(), " and ", G_in.sizes());
  TORCH_CHECK(A_in.size(0) == G_in.size(0) && A_in.size(1) == G_in.size(1),
              "activations, grad_outputs: expected the same N and T, got shapes ", A_in.sizes(), " and ", G_in.sizes());
  check_float(A_in, "activations");
  const at::Tensor A = A_in.contiguous();
  return {A, G_in.to(A.scalar_type()).contiguous()};
}

// graph_cut_greedy(sim, k, lam, ...) and log_determinant_greedy(sim, k, reg, ...): a square
// similarity and a budget within it.
inline at::Tensor similarity_greedy_args(const at::Tensor& sim, int64_t k) {
  check_float(sim, "sim");
  check_dim(sim, 2, "sim");
  TORCH_CHECK(sim.size(0) == sim.size(1), "sim: must be square, got shape ", sim.sizes());
  TORCH_CHECK(k >= 0 && k <= sim.size(0), "k: must lie in [0, ", sim.size(0), "], got ", k);
  return sim.contiguous();
}
inline at::Tensor graph_cut_greedy_args(const at::Tensor& sim, int64_t k, double lam) {
  const at::Tensor out = similarity_greedy_args(sim, k);
  TORCH_CHECK(lam >= 0, "lam: must be >= 0, got ", lam);
  return out;
}
inline at::Tensor log_determinant_greedy_args(const at::Tensor& sim, int64_t k, double reg) {
  const at::Tensor out = similarity_greedy_args(sim, k);
  TORCH_CHECK(reg > 0, "reg: must be > 0, got ", reg);
  return out;
}

// gradient_moments(embeddings, logits, labels): the embeddings in the logits' dtype, labels as
// int64 on the logits' device (their range is checked by each backend: the CPU kernel reports the
// bad row).
struct GradientMomentsArgs {
  at::Tensor h, logits, labels;
  int64_t n, C, D;
};
inline GradientMomentsArgs gradient_moments_args(const at::Tensor& embeddings, const at::Tensor& logits_in,
                                                 const at::Tensor& labels_in) {
  check_same_device({"logits", logits_in}, {{"embeddings", embeddings}});
  check_float(logits_in, "logits");
  check_dim(logits_in, 2, "logits");
  const int64_t n = logits_in.size(0), C = logits_in.size(1);
  const at::Tensor h = checked_rows(embeddings, n, logits_in.scalar_type(), "embeddings");
  return {h, logits_in.contiguous(), checked_labels(labels_in, n).to(logits_in.device()), n, C, h.size(1)};
}

// gradient_moments_backward(grad_mean, grad_var, embeddings, logits, labels, mean): the forward's
// arguments, and the two gradients and the mean each [C, C (D + 1)].
inline GradientMomentsArgs gradient_moments_backward_args(const at::Tensor& grad_mean, const at::Tensor& grad_var,
                                                          const at::Tensor& embeddings, const at::Tensor& logits,
                                                          const at::Tensor& labels, const at::Tensor& mean) {
  const GradientMomentsArgs args = gradient_moments_args(embeddings, logits, labels);
  const int64_t P = args.C * (args.D + 1);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{grad_mean, "grad_mean"},
                                {grad_var, "grad_var"}, {mean, "mean"}}) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == args.C && t.size(1) == P, name, ": must have shape [", args.C, ", ", P,
                "], got ", t.sizes());
  }
  return args;
}

}  // namespace lcmat
