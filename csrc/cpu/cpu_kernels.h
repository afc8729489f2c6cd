// The CPU kernels of lcmat on raw pointers: no torch header here, so that these translation units
// compile in seconds. The torch-facing code (argument checks, dtype dispatch, GEMMs through ATen,
// op registration) lives in the family's binding, csrc/<family>.cpp. Every template is
// instantiated for float and double in its family's .cpp file here. All matrices are row-major and
// contiguous.
#pragma once

#include <cstdint>
#include <memory>

namespace lcmat {
namespace cpu {

// ---- last_layer.cpp ------------------------------------------------------------------------

// e = softmax(z) - onehot(y), q = p (1 - p), both [n, C]. Returns the first row whose label is
// outside [0, C), or -1 when all are valid.
template <typename T>
int64_t last_layer_factors(const T* logits, const int64_t* labels, int64_t n, int64_t C, T* e, T* q);

// grad_norm_i = ||e_i|| sqrt(1 + ||h_i||^2) |s_i| and error_norm_i = ||e_i||, with e from the
// logits (never stored). `scale` may be null. Returns the first bad label row, or -1.
template <typename T>
int64_t last_layer_grad_norms(const T* embeddings, const T* logits, const int64_t* labels,
                              const T* scale, int64_t n, int64_t C, int64_t D, T* grad_norm,
                              T* error_norm);

// ---- lcmat_distance.cpp --------------------------------------------------------------------

// Rows [r0, r1) of the per-class distance, upper triangle only, then mirrored, so the result is
// exactly symmetric:
//     out_ij = sqrt(max(0, |g_i|^2 + |g_j|^2 - 2 <s_i e_i, s_j e_j> (1 + <h_i, h_j>)))
//              + rho sum_k |d_ik - d_jk|
// hh and ee [r1 - r0, n - r0] hold <h_i, h_j> and <s_i e_i, s_j e_j> for those rows and the
// columns r0 .. n (two GEMMs), or are both null for no gradient term (then diag_sq is zero);
// d [n, K] and d_t [K, n] the Hessian-diagonal coordinates (K may be 0, then d and d_t may be
// null); diag_sq [n] holds |g_j|^2 = |s_j e_j|^2 (1 + |h_j|^2). Writes a zero diagonal. Blocks
// are processed top to bottom.
template <typename T>
void distance_block(T* out, const T* hh, const T* ee, const T* d, const T* d_t, const T* diag_sq, T rho, int64_t r0,
                    int64_t r1, int64_t n, int64_t K);

// Whether this build has the AVX-512 kernels: the Gram kernel below and the register-blocked
// curvature moments (fast at any number of classes; the other kernel keeps C x 64 sums per task
// and is slower than two GEMMs beyond 64 classes).
bool built_with_avx512();

// Gram products for the distance blocks, float only: where built_with_avx512(), gram_pack
// copies a [n, D] into gram_panels_size(n, D) floats of k-major panels, and gram_upper writes
// rows [r0, r1) of a a^T, at least the columns distance_block reads of them (those right of the
// 128-wide tile holding their 32-row tile's first row), into gram [r1 - r0, n - r0]. r0 must be
// a multiple of 256. Each entry is one in-order FMA chain over k.
int64_t gram_panels_size(int64_t n, int64_t D);
void gram_pack(const float* a, int64_t n, int64_t D, float* panels);
void gram_upper(const float* panels, int64_t n, int64_t D, int64_t r0, int64_t r1, float* gram);
// The same kernel for out = a b^T, a [n, D] and b [m, D] (out [n, m]): b packed once by
// pack_right_panels into right_panels_size(m, D) floats, a packed 8 rows at a time on the fly.
int64_t right_panels_size(int64_t m, int64_t D);
void pack_right_panels(const float* b, int64_t m, int64_t D, float* panels);
void matmul_abt(const float* a, int64_t n, const float* right, int64_t m, int64_t D, float* out);

// Mean and second moment over the n rows of every Hessian-diagonal coordinate, [C (D + 1)] each,
// accumulated in float64: bias c from s_i q_ic, weight (c, d) from s_i q_ic h_id^2. `scale` is
// float64 and may be null; `workspace` holds curvature_moments_workspace(n, C) doubles. The sums
// run over the rows in order, whatever the thread count.
template <typename T, typename Q>
void curvature_moments(const T* embeddings, const Q* q, const double* scale, int64_t n, int64_t C, int64_t D,
                       double* workspace, double* mean, double* second);
int64_t curvature_moments_workspace(int64_t n, int64_t C);

// d_i restricted to K coordinates, written both as rows [n, K] and transposed [K, n]:
// coordinate c < C is s_i q_ic, coordinate C + c D + d is s_i q_ic h_id^2. `coords` must lie in
// [0, C (D + 1)) (checked by the caller); `scale` may be null; either output may be null.
template <typename T>
void hessian_diag_coords(const T* embeddings, const T* q, const int64_t* coords, const T* scale,
                         int64_t n, int64_t C, int64_t D, int64_t K, T* out, T* out_t);

// out_ij = sum_k |a_ik - b_jk| for a [n, K] and b given transposed, b_t [K, m]. Tiled: O(tile)
// working memory, never n x m x K. With `symmetric` (b is a, m == n) only the tiles on and above
// the diagonal are computed and mirrored, which halves the work and makes the result exactly
// symmetric.
template <typename T>
void pairwise_l1(const T* a, int64_t n, const T* b_t, int64_t m, int64_t K, bool symmetric, T* out);

// ---- facility_location.cpp -----------------------------------------------------------------

// Greedy facility location on the n x m distance block: k picks (columns) maximising
// F(S) = sum_i max(0, max_{j in S} (L - D_ij)); L = max D when !has_L. Lazy (Minoux) or naive,
// with identical picks: gains are summed in a fixed order, so a stale gain is an exact upper
// bound, and ties go to the lowest index. Writes picks [k], objective [k] (F after each pick),
// weights [k] (rows whose nearest pick, by distance, is that pick; ties to the earlier pick).
template <typename T>
void facility_location_greedy(const T* dist, int64_t n, int64_t m, int64_t k, bool has_L, double L,
                              bool lazy, int64_t* picks, T* objective, T* weights);

// One block of a batched greedy: the arguments of facility_location_greedy.
template <typename T>
struct GreedyBlock {
  const T* dist;
  int64_t n, m, k;
  int64_t* picks;
  T* objective;
  T* weights;
};

// facility_location_greedy on many blocks (one per class) in one call, with the same picks as
// one call per block. With at least as many blocks as threads, the blocks run in parallel, one
// thread each, largest first; otherwise one after another, each on every thread.
template <typename T>
void facility_location_greedy_batch(const GreedyBlock<T>* blocks, int64_t count, bool has_L, double L, bool lazy);

// ---- sinkhorn.cpp --------------------------------------------------------------------------

// The n x m cost of one transport problem, served one tile of rows at a time.
template <typename T>
struct CostBlock {
  virtual ~CostBlock() = default;
  // Rows [r0, r1) row-major with m columns: a pointer into stored memory, or `scratch` (room for
  // (r1 - r0) x m values, given when needs_scratch()) filled with freshly computed costs.
  // Called from worker threads; must not throw.
  virtual const T* rows(int64_t r0, int64_t r1, T* scratch) const = 0;
  virtual bool needs_scratch() const { return false; }
};

template <typename T>
struct StoredCost : CostBlock<T> {
  const T* data;
  int64_t m;
  StoredCost(const T* data_, int64_t m_) : data(data_), m(m_) {}
  const T* rows(int64_t r0, int64_t, T*) const override { return data + r0 * m; }
};

struct SinkhornOptions {
  double reg;
  int64_t max_iter;
  double tol;
  int64_t check_every;
};

// Log-domain Sinkhorn for one problem (see lcmat/reference/sinkhorn.py): potentials f [n], g [m],
// iterations run and final relative row-marginal error. `parallel`: use all threads inside.
template <typename T>
void sinkhorn_solve(const T* a, const T* b, int64_t n, int64_t m, const CostBlock<T>& cost,
                    const SinkhornOptions& opt, bool parallel, T* f, T* g, int64_t* n_iter, T* err);

// Many problems: problem p owns rows [row_off[p], row_off[p+1]) and columns
// [col_off[p], col_off[p+1]); make_cost(p) gives its cost. Large problems run one after the
// other with all threads each, small ones side by side with one thread each. Offsets index a, b,
// f and g directly; f and g must be zero on entry (empty problems keep zero potentials, and get
// n_iter 0 and err 0).
template <typename T>
using CostFactory = std::unique_ptr<CostBlock<T>> (*)(const void* ctx, int64_t p);

template <typename T>
void sinkhorn_ragged(const T* a, const T* b, const int64_t* row_off, const int64_t* col_off,
                     int64_t num_problems, CostFactory<T> make_cost, const void* ctx,
                     const SinkhornOptions& opt, T* f, T* g, int64_t* n_iter, T* err);

// The plan P_ij = exp((f_i + g_j - M_ij) / reg) of `batch` problems n x m stored one after the
// other (f [batch, n], g [batch, m], M and P [batch, n, m]), in one pass over M.
template <typename T>
void sinkhorn_plan(const T* f, const T* g, const T* M, int64_t batch, int64_t n, int64_t m, T reg,
                   bool parallel, T* P);

// M_ij = max(0, (xx_i + yy_j) - 2 xy_ij) in place over rows [0, n) of xy [n, m] (the GEMM form of
// ||x_i - y_j||^2, same operation order as the reference).
template <typename T>
void squared_euclidean_from_dot(T* xy, const T* xx, const T* yy, int64_t n, int64_t m,
                                bool parallel);

// ---- fdmat.cpp -----------------------------------------------------------------------------

// out_d = sum_i x_id in float64, [D], for the mean of FDMat's transformed features; the same
// result whatever the thread count.
template <typename T>
void column_sums(const T* x, int64_t N, int64_t D, double* out);

// s_i = sum_c (P_ic M_ic)^2 with P_ic = exp((f_i + g_c - M_ic) / reg), P never stored.
template <typename T>
void fdmat_scores(const T* M, const T* f, const T* g, int64_t N, int64_t C, double reg, T* out);

// Number of OpenMP threads this process would use (1 without OpenMP).
int max_threads();

// ---- linear_grad_norms.cpp ----------------------------------------------------------------

// out_i = sum_k x_ik y_ik over n rows of length K.
template <typename T>
void row_dots(const T* x, const T* y, int64_t n, int64_t K, bool parallel, T* out);

// out_i = ||a_i||^2 ||g_i||^2 for a [n, d_in], g [n, d_out]: the squared norm of a rank-one gradient.
template <typename T>
void rank_one_sq_norms(const T* a, const T* g, int64_t n, int64_t d_in, int64_t d_out, bool parallel, T* out);

// ---- submodular.cpp ------------------------------------------------------------------------

// Greedy graph cut on the n x n similarity `sim` (lazy: Minoux's lazy greedy, the same picks):
// picks [k] in pick order, objective [k] = f after each pick.
template <typename T>
void graph_cut_greedy(const T* sim, int64_t n, int64_t k, double lam, bool lazy, int64_t* picks, T* objective);

// Greedy log det(S_AA + reg I) by incremental Cholesky. Returns -1, or the step at which the best
// candidate's pivot was not positive (S + reg I not positive definite; outputs from then on unset).
template <typename T>
int64_t log_determinant_greedy(const T* sim, int64_t n, int64_t k, double reg, bool lazy, int64_t* picks,
                               T* objective);

}  // namespace cpu
}  // namespace lcmat

