// Argument checks and the device-agnostic ATen parts shared by the CPU (csrc/ops.cpp) and CUDA
// (csrc/cuda/cuda_ops.cpp) bindings. Every error names the argument at fault.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <tuple>
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

}  // namespace lcmat
