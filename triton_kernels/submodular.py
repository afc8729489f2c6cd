"""Greedy graph cut and log-determinant on the device (twins of `lcmat.reference.submodular`).

Both greedies keep a per-candidate state that one pick changes by a vector operation over the n
candidates, so one greedy step is two launches and no host synchronisation:
  1. a step kernel, one program per tile of candidates, folds the previous pick into its tile's
     state, evaluates the gains and writes the tile's best (gain, index), the lowest index first
     among equal gains;
  2. a pick kernel, one program, reduces the tile bests (largest gain, then lowest index), records
     the pick and marks it selected.

Graph cut, f(A) = sum_{i in V, j in A} S_ij - lam sum_{i, j in A} S_ij:
    gain_e = coverage_e - lam (inside_e + S_ee),  coverage_e = sum_i S_ie,
    inside_e = sum_{j in A} (S_je + S_ej),  so a pick j adds S_j. + S_.j to `inside`.
Log-determinant, f(A) = log det(S_AA + reg I), by incremental Cholesky: with c_e the row of e in
the Cholesky factor of S_AA + reg I extended by e,
    gain_e = log r_e,  r_e = S_ee + reg - |c_e|^2,
and a pick j (pivot r_j) appends to every c_e the entry (S_ej - c_e . c_j) / sqrt(r_j) (sqrt(r_j)
for e = j itself), then r_e -= that entry squared: one new factor column per pick, an O(n t) dot
at step t, O(n k^2) in all. The argmax is taken over r itself (log is increasing; equal residuals
have equal logs); the objective sum_t log r_{j_t} is formed from the pivots at the end, and a
pivot that is not positive (S + reg I not positive definite) raises a ValueError, as the
reference does, after the k steps (the device never stops to ask).

The state (coverage, inside, residuals, the factor) is float64 whatever the input dtype, as in the
cpu twin; S is read in its own dtype (float16/bfloat16/float32/float64). Each candidate's state
is updated by the same arithmetic in pick order whatever tile it sits in (the factor dot runs over
BLOCK_T-wide chunks of the same width for every candidate), so candidates with equal rows and
columns of S tie exactly and the lowest index wins, as the reference defines. NaN gains never beat
a number; selected candidates are never picked.

`lazy` is accepted for parity with the reference and runs the naive greedy: the lazy greedy makes
the same picks (submodularity), and on a GPU a full sweep over the candidates is one launch while
the lazy greedy's re-evaluations are sequential.
"""
import torch
import triton
import triton.language as tl

from lcmat.reference.submodular import check_similarity

from ._config import INTERPRET, check_device, check_dims, float_dtype, scalars

# Candidates per program of the step kernels; Cholesky columns per chunk of the log-det dot (the
# same width for every candidate, so equal candidates round alike); tile bests per chunk of the
# pick kernel. Fixed, not autotuned: the step kernels update state in place, and these vector
# operations are bound by the launches rather than the tiles.
BLOCK_E = 16 if INTERPRET else 128
BLOCK_T = 8 if INTERPRET else 32
BLOCK_P = 16 if INTERPRET else 128


@triton.jit
def _tile_best(gain, e, candidate, best_gain_ptr, best_idx_ptr, pid, n):
    """Write the tile's largest gain among its candidates and its lowest index (n when the
    tile has none); NaN counts as -inf, so that it never beats a number."""
    g = tl.where(candidate & (gain == gain), gain, float("-inf"))
    top = tl.max(g, axis=0)
    best = tl.min(tl.where(candidate & (g == top), e, n), axis=0)
    tl.store(best_gain_ptr + pid, top)
    tl.store(best_idx_ptr + pid, best)


@triton.jit(do_not_specialize=["step"])
def _cut_step_kernel(sim_ptr, stride_r, stride_c, coverage_ptr, diagonal_ptr, inside_ptr, lam_ptr,
                     selected_ptr, picks_ptr, best_gain_ptr, best_idx_ptr, n, step,
                     BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    e = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)  # e * stride past 2^31 for n > 46,340
    ok = e < n
    inside = tl.load(inside_ptr + e, mask=ok, other=0.0)
    if step > 0:  # fold in the previous pick j: inside_e += S_je + S_ej
        j = tl.load(picks_ptr + step - 1)
        row = tl.load(sim_ptr + j * stride_r + e * stride_c, mask=ok, other=0.0).to(tl.float64)
        col = tl.load(sim_ptr + e * stride_r + j * stride_c, mask=ok, other=0.0).to(tl.float64)
        inside = inside + (row + col)
        tl.store(inside_ptr + e, inside, mask=ok)
    coverage = tl.load(coverage_ptr + e, mask=ok, other=0.0)
    diagonal = tl.load(diagonal_ptr + e, mask=ok, other=0.0)
    gain = coverage - tl.load(lam_ptr) * (inside + diagonal)
    selected = tl.load(selected_ptr + e, mask=ok, other=1)
    _tile_best(gain, e, ok & (selected == 0), best_gain_ptr, best_idx_ptr, pid, n)


@triton.jit(do_not_specialize=["step"])
def _logdet_step_kernel(sim_ptr, stride_r, stride_c, factor_ptr, residual_ptr, pivots_ptr,
                        selected_ptr, picks_ptr, best_gain_ptr, best_idx_ptr, n, step,
                        BLOCK: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    e = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    ok = e < n
    residual = tl.load(residual_ptr + e, mask=ok, other=0.0)
    if step > 0:  # fold in the previous pick j, the t-th: factor column t, then the residuals
        t = step - 1
        j = tl.load(picks_ptr + t)
        root = tl.sqrt(tl.load(pivots_ptr + t))  # float64: sqrt.rn.f64 on the GPU
        acc = tl.zeros([BLOCK_T, BLOCK], tl.float64)
        for u0 in range(0, t, BLOCK_T):  # c_e . c_j over the t earlier columns (factor: [k, n])
            u = (u0 + tl.arange(0, BLOCK_T)).to(tl.int64)
            u_ok = u < t
            ce = tl.load(factor_ptr + u[:, None] * n + e[None, :], mask=u_ok[:, None] & ok[None, :],
                         other=0.0)
            cj = tl.load(factor_ptr + u * n + j, mask=u_ok, other=0.0)
            acc += ce * cj[:, None]
        dot = tl.sum(acc, axis=0)
        s_ej = tl.load(sim_ptr + e * stride_r + j * stride_c, mask=ok, other=0.0).to(tl.float64)
        c = tl.where(e == j, root, (s_ej - dot) / root)
        tl.store(factor_ptr + t * n + e, c, mask=ok)
        residual = residual - c * c
        tl.store(residual_ptr + e, residual, mask=ok)
    selected = tl.load(selected_ptr + e, mask=ok, other=1)
    _tile_best(residual, e, ok & (selected == 0), best_gain_ptr, best_idx_ptr, pid, n)


@triton.jit(do_not_specialize=["step"])
def _pick_kernel(best_gain_ptr, best_idx_ptr, num_tiles, n, picks_ptr, selected_ptr, state_ptr,
                 record_ptr, step, RECORD_STATE: tl.constexpr, BLOCK: tl.constexpr):
    """The best of the tile bests (largest gain, then lowest index) becomes pick `step`; records
    its gain, or with RECORD_STATE its state entry (the log-det pivot r_j)."""
    best_gain = tl.full([BLOCK], float("-inf"), tl.float64)
    best_idx = tl.full([BLOCK], n, tl.int64)
    for t0 in range(0, num_tiles, BLOCK):
        tiles = t0 + tl.arange(0, BLOCK)
        g = tl.load(best_gain_ptr + tiles, mask=tiles < num_tiles, other=float("-inf"))
        i = tl.load(best_idx_ptr + tiles, mask=tiles < num_tiles, other=n)
        better = (g > best_gain) | ((g == best_gain) & (i < best_idx))
        best_gain = tl.where(better, g, best_gain)
        best_idx = tl.where(better, i, best_idx)
    top = tl.max(best_gain, axis=0)
    j = tl.min(tl.where(best_gain == top, best_idx, n), axis=0)
    j = tl.minimum(j, n - 1)  # a candidate always remains (k <= n); kept in bounds regardless
    tl.store(picks_ptr + step, j)
    tl.store(selected_ptr + j, 1)
    if RECORD_STATE:
        tl.store(record_ptr + step, tl.load(state_ptr + j))
    else:
        tl.store(record_ptr + step, top)


def _check(sim, k):
    float_dtype(sim, "sim")
    check_dims(sim, 2, "sim")
    k = check_similarity(sim, k)
    check_device("sim", sim)
    return k


class _Greedy:
    """The buffers shared by both greedies: selected flags, picks, the tile bests."""

    def __init__(self, sim, k):
        self.n, self.k, self.device = sim.shape[0], k, sim.device
        self.tiles = triton.cdiv(self.n, BLOCK_E)
        self.selected = torch.zeros(self.n, dtype=torch.int8, device=self.device)
        self.picks = torch.empty(k, dtype=torch.long, device=self.device)
        self.record = torch.empty(k, dtype=torch.float64, device=self.device)
        self.best_gain = torch.empty(self.tiles, dtype=torch.float64, device=self.device)
        self.best_idx = torch.empty(self.tiles, dtype=torch.long, device=self.device)

    def pick(self, step, state=None):
        _pick_kernel[(1,)](self.best_gain, self.best_idx, self.tiles, self.n, self.picks, self.selected,
                           self.record if state is None else state, self.record, step,
                           RECORD_STATE=state is not None, BLOCK=BLOCK_P)


def graph_cut_greedy(sim, k, lam=1.0, lazy=False):
    """Greedy graph cut on the n x n similarity `sim` (module docstring), lam >= 0: (picks
    LongTensor [k] in pick order, objective [k]: f after each pick, in sim's dtype). `lazy` runs
    the naive greedy (the same picks)."""
    k = _check(sim, k)
    if not lam >= 0:
        raise ValueError(f"lam: must be >= 0, got {lam}")
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=sim.device), sim.new_zeros(0)
    g = _Greedy(sim, k)
    coverage = sim.sum(0, dtype=torch.float64)
    diagonal = sim.diagonal().to(torch.float64).contiguous()  # a strided view when sim is float64
    inside = torch.zeros(g.n, dtype=torch.float64, device=g.device)
    lam_t = scalars(tl.float64, g.device, float(lam))
    for step in range(k):
        _cut_step_kernel[(g.tiles,)](sim, sim.stride(0), sim.stride(1), coverage, diagonal, inside, lam_t,
                                     g.selected, g.picks, g.best_gain, g.best_idx, g.n, step, BLOCK=BLOCK_E)
        g.pick(step)
    return g.picks, g.record.cumsum(0).to(sim.dtype)


def log_determinant_greedy(sim, k, reg=1.0, lazy=False):
    """Greedy log det(S_AA + reg I) on `sim` by incremental Cholesky (module docstring), reg > 0:
    (picks LongTensor [k], objective [k] in sim's dtype). Raises ValueError when a pick's pivot
    S_ee + reg - |c_e|^2 is not positive. `lazy` runs the naive greedy (the same picks)."""
    k = _check(sim, k)
    if not reg > 0:
        raise ValueError(f"reg: must be > 0, got {reg}")
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=sim.device), sim.new_zeros(0)
    g = _Greedy(sim, k)
    residual = sim.diagonal().to(torch.float64) + float(reg)
    factor = torch.empty(k, g.n, dtype=torch.float64, device=g.device)  # row t: column t of the factor
    for step in range(k):
        _logdet_step_kernel[(g.tiles,)](sim, sim.stride(0), sim.stride(1), factor, residual, g.record,
                                        g.selected, g.picks, g.best_gain, g.best_idx, g.n, step,
                                        BLOCK=BLOCK_E, BLOCK_T=BLOCK_T)
        g.pick(step, residual)
    pivots = g.record
    bad = torch.nonzero(~(pivots > 0))
    if bad.numel():
        t = int(bad[0, 0])
        raise ValueError(f"sim: S + reg I is not positive definite (pivot {float(pivots[t]):.3g} at pick {t + 1}); "
                         "raise reg or use a positive semi-definite similarity")
    return g.picks, pivots.log().cumsum(0).to(sim.dtype)
