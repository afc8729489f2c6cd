// The CUDA kernels of lcmat behind host launchers on raw device pointers, sizes and a stream:
// no torch header here, so every .cu compiles with plain nvcc. The torch-facing binding is
// the WITH_CUDA part of csrc/<family>.cpp. Launchers are instantiated for float and double in their family's .cu
// file and return the launch status (cudaGetLastError()); device matrices are row-major and
// contiguous. Same mathematics as the CPU kernels (csrc/cpu/cpu_kernels.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace lcmat {
namespace cuda {

// ---- last_layer.cu ---------------------------------------------------------------------------
// Labels must lie in [0, C) (checked by the caller). `scale` may be null.
template <typename T>
cudaError_t last_layer_factors(const T* logits, const int64_t* labels, int64_t n, int64_t C, T* e, T* q,
                               cudaStream_t stream);

template <typename T>
cudaError_t last_layer_grad_norms(const T* embeddings, const T* logits, const int64_t* labels, const T* scale,
                                  int64_t n, int64_t C, int64_t D, T* grad_norm, T* error_norm, cudaStream_t stream);

// ---- lcmat_distance.cu -----------------------------------------------------------------------
// Rows [r0, r1) of out (holding <s_i e_i, s_j e_j>) become ||g_i - g_j||, given hh_tile
// [r1 - r0, n] = <h_i, h_j> and diag_sq [n] = ||g_j||^2.
template <typename T>
cudaError_t gram_rows_to_distance(T* out, const T* hh_tile, const T* diag_sq, int64_t r0, int64_t r1, int64_t n,
                                  cudaStream_t stream);

// d_i[coords] as [n, K] (see the CPU version); coords in [0, C (D + 1)); scale may be null.
template <typename T>
cudaError_t hessian_diag_coords(const T* embeddings, const T* q, const int64_t* coords, const T* scale, int64_t n,
                                int64_t C, int64_t D, int64_t K, T* out, cudaStream_t stream);

// out_ij (=|+=) alpha * sum_k |a_ik - b_jk|, a [n, K], b [m, K]; shared-memory tiles.
template <typename T>
cudaError_t pairwise_l1(const T* a, int64_t n, const T* b, int64_t m, int64_t K, T alpha, bool accumulate, T* out,
                        cudaStream_t stream);

// ---- facility_location.cu --------------------------------------------------------------------
// Naive greedy on the device, k steps of: a block-parallel column reduction of
// max(0, sim_ij - cov_i) in float64 (fixed order: the same columns give the same sums), an
// argmax with the lowest index winning ties, the coverage update and the objective. sim =
// max(0, L - D) is formed on the fly; *L is a device scalar (the caller computes max D when no L
// is given). Workspace (device): partial [chunks(n) * m] doubles, cov [n] T, selected [m] bytes,
// counts [k] int64 (zeroed here). Writes picks [k], objective [k], weights [k].
int64_t facility_location_chunks(int64_t n);
template <typename T>
cudaError_t facility_location_greedy(const T* dist, int64_t n, int64_t m, int64_t k, const T* L, double* partial,
                                     T* cov, unsigned char* selected, unsigned long long* counts, int64_t* picks,
                                     T* objective, T* weights, cudaStream_t stream);

// ---- submodular.cu ---------------------------------------------------------------------------
// Naive greedy graph cut and log-determinant on an n x n similarity (see csrc/cpu/submodular.cpp
// for the gains), k steps of: every candidate's float64 state updated with the previous pick and a
// block-parallel argmax (lowest index wins ties), then the pick. Device workspace: block_index
// [submodular_blocks(n)] int64, selected [n] bytes, and `work` doubles: graph cut 3 n + blocks,
// log-det (k + 1) n + blocks. Writes picks [k] and, per pick, graph cut's gain or log-det's
// pivot S_jj + reg - |c_j|^2 (the binding refuses a non-positive one), both [k] doubles.
int64_t submodular_blocks(int64_t n);
template <typename T>
cudaError_t graph_cut_greedy(const T* sim, int64_t n, int64_t k, double lam, double* work, int64_t* block_index,
                             unsigned char* selected, int64_t* picks, double* gains, cudaStream_t stream);
template <typename T>
cudaError_t log_determinant_greedy(const T* sim, int64_t n, int64_t k, double reg, double* work,
                                   int64_t* block_index, unsigned char* selected, int64_t* picks, double* pivots,
                                   cudaStream_t stream);

// ---- sinkhorn.cu -----------------------------------------------------------------------------
struct SinkhornOptions {
  double reg;
  int64_t max_iter;
  double tol;
  int64_t check_every;
};

// Device workspace of one solve, sized by sinkhorn_workspace_size(n, m) bytes.
size_t sinkhorn_workspace_size(int64_t n, int64_t m);

// Log-domain Sinkhorn on one stored n x m cost (see csrc/cpu/sinkhorn.cpp for the iteration and
// the fused convergence check). Runs the whole loop; synchronises the stream at each check to
// read the error. sum_a is sum_i a_i. Writes f [n], g [m] (device) and *n_iter, *err (host).
template <typename T>
cudaError_t sinkhorn_solve(const T* a, const T* b, double sum_a, int64_t n, int64_t m, const T* M,
                           const SinkhornOptions& opt, void* workspace, T* f, T* g, int64_t* n_iter, double* err,
                           cudaStream_t stream);

// M_ij = max(0, (xx_i + yy_j) - 2 xy_ij) in place over xy [n, m].
template <typename T>
cudaError_t squared_euclidean_from_dot(T* xy, const T* xx, const T* yy, int64_t n, int64_t m, cudaStream_t stream);

// ---- fdmat.cu --------------------------------------------------------------------------------
// s_i = sum_c (exp((f_i + g_c - M_ic) / reg) M_ic)^2, one warp per row.
template <typename T>
cudaError_t fdmat_scores(const T* M, const T* f, const T* g, int64_t N, int64_t C, double reg, T* out,
                         cudaStream_t stream);

}  // namespace cuda
}  // namespace lcmat
