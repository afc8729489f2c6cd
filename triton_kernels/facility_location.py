"""Greedy facility location on the device (twin of `lcmat.reference.facility_location`).

    F(S) = sum_i max(0, max_{j in S} S_ij),   S_ij = max(0, L - D_ij)

Each greedy step adds the unselected column of largest gain
    gain_j = sum_i max(0, S_ij - m_i),   m_i = max(0, max_{j in S} S_ij) the coverage,
the lowest index winning ties. One step is two launches and no host synchronisation:
  1. `_gains_kernel`: one program per column tile sweeps all rows, forms S on the fly from D (S is
     never stored), reduces the gains of its columns and writes its tile's best (gain, index),
     the lowest index first among equal gains (tl.argmax breaks ties to the left);
  2. `_pick_kernel`: one program reduces the tile bests in tile order (so the lowest index still
     wins), records the pick, marks it selected, raises the coverage with its column and writes
     F = sum_i m_i after the pick.

Gains are summed in fixed point: each term max(0, S_ij - m_i) is scaled by a power of two 2^k
(exact) and truncated to an int64, with k chosen so that n terms of at most L - min D cannot
overflow (2^k n (L - min D) < 2^62). Integer sums do not depend on the summation order, so gains that are equal
term by term (symmetric neighbours, duplicated points) tie exactly whatever the tile sizes the
autotuner picked, and the lowest index wins as the definition says; the quantum L n 2^-62 is
below float64 resolution for classes of up to ~10^4 samples. (A floating-point sum's last bit
depends on its order, and so would the winner of such a tie.)
The naive greedy is run whatever `lazy` says: it makes exactly the picks of the lazy greedy
(submodularity), and on a GPU a full column sweep is one launch while the lazy greedy's
re-evaluations are sequential.
"""
import math

import torch
import triton
import triton.language as tl

from lcmat.reference.facility_location import check_greedy_batch

from ._config import autotune_configs, bucket, check_device, check_dims, float_dtype


@triton.autotune(
    configs=autotune_configs(
        gpu=[{"BLOCK_R": 32, "BLOCK_J": 128}, {"BLOCK_R": 64, "BLOCK_J": 64},
             {"BLOCK_R": 16, "BLOCK_J": 256}],
        interpret={"BLOCK_R": 16, "BLOCK_J": 16}, warps=(4, 8)),
    key=["N_KEY"])
@triton.jit
def _gains_kernel(dist_ptr, L_ptr, cover_ptr, selected_ptr, best_gain_ptr, best_idx_ptr, n,
                  stride_r, stride_c, quantum_inv, N_KEY, DT: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr):
    pid = tl.program_id(0)
    cols = pid * BLOCK_J + tl.arange(0, BLOCK_J)
    col_ok = cols < n
    L = tl.load(L_ptr).to(DT)
    gains = tl.zeros([BLOCK_J], tl.int64)
    for r0 in range(0, n, BLOCK_R):
        rows = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)  # rows * stride past 2^31 for n > 46,340
        row_ok = rows < n
        d = tl.load(dist_ptr + rows[:, None] * stride_r + cols[None, :] * stride_c,
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(DT)
        cover = tl.load(cover_ptr + rows, mask=row_ok, other=0.0)
        sim = tl.maximum(L - d, 0.0)
        gain = tl.maximum(sim - cover[:, None], 0.0)
        fixed = (gain * quantum_inv).to(tl.int64)  # exact scaling by 2^k, then truncation
        gains += tl.sum(tl.where(row_ok[:, None], fixed, 0), axis=0)
    selected = tl.load(selected_ptr + cols, mask=col_ok, other=1)
    # Selected columns get -1 (real gains are >= 0), padding columns -2 (never picked).
    gains = tl.where(selected != 0, -1, gains)
    gains = tl.where(col_ok, gains, -2)
    best = tl.argmax(gains, axis=0, tie_break_left=True)
    tl.store(best_gain_ptr + pid, tl.max(gains, axis=0))
    tl.store(best_idx_ptr + pid, pid * BLOCK_J + best)


@triton.jit
def _pick_kernel(dist_ptr, L_ptr, cover_ptr, selected_ptr, best_gain_ptr, best_idx_ptr,
                 picks_ptr, objective_ptr, step, n, num_tiles, stride_r, stride_c,
                 DT: tl.constexpr, BLOCK: tl.constexpr):
    # Best over tiles: a strictly larger gain replaces, so the earliest tile (lowest index) wins.
    best_gain = tl.full([BLOCK], -3, tl.int64)
    best_idx = tl.zeros([BLOCK], tl.int64)
    for t0 in range(0, num_tiles, BLOCK):
        tiles = t0 + tl.arange(0, BLOCK)
        g = tl.load(best_gain_ptr + tiles, mask=tiles < num_tiles, other=-3)
        i = tl.load(best_idx_ptr + tiles, mask=tiles < num_tiles, other=0)
        better = g > best_gain
        best_gain = tl.where(better, g, best_gain)
        best_idx = tl.where(better, i, best_idx)
    # Lanes hold interleaved tiles: among lanes of equal best gain take the lowest index.
    top = tl.max(best_gain, axis=0)
    j = tl.min(tl.where(best_gain == top, best_idx, n), axis=0)
    tl.store(picks_ptr + step, j)
    tl.store(selected_ptr + j, 1)
    L = tl.load(L_ptr).to(DT)
    total = tl.zeros([BLOCK], DT)
    for r0 in range(0, n, BLOCK):
        rows = (r0 + tl.arange(0, BLOCK)).to(tl.int64)
        row_ok = rows < n
        d = tl.load(dist_ptr + rows * stride_r + j * stride_c, mask=row_ok, other=0.0).to(DT)
        cover = tl.maximum(tl.load(cover_ptr + rows, mask=row_ok, other=0.0),
                           tl.maximum(L - d, 0.0))
        tl.store(cover_ptr + rows, cover, mask=row_ok)
        total += tl.where(row_ok, cover, 0.0)
    tl.store(objective_ptr + step, tl.sum(total, axis=0))


def nearest_pick_counts(dist, picks):
    """gamma_j: the number of rows whose nearest selected element is pick j (ties: earlier pick)."""
    if len(picks) == 0:
        return dist.new_zeros(0)
    nearest = dist[:, picks].argmin(dim=1)
    return torch.bincount(nearest, minlength=len(picks)).to(dist.dtype)


def _fixed_point_scale(L, n):
    """2^k with n terms of at most L summing below 2^62 once scaled (1.0 when L <= 0: no gains;
    k clamped to the float32 range of the kernel argument)."""
    if not L > 0 or not math.isfinite(L):
        return 1.0
    k = 62 - math.ceil(math.log2(n + 1)) - math.ceil(math.log2(L)) - 1
    return 2.0 ** min(max(k, -100), 100)  # the kernel takes it as a float32


def facility_location_greedy(dist, k, L=None, lazy=False):
    """Pick k columns of the n x n distance block `dist` greedily (the reference's picks).

    L defaults to max_ij D_ij (the paper mode of LCMat-S). Returns (picks LongTensor [k] in pick
    order, objective [k] with F after each pick, weights [k]: how many rows have that pick as
    their nearest selected element, ties to the earlier pick). `lazy` is accepted for parity with
    the reference; the picks are the same either way.
    """
    float_dtype(dist, "dist")
    check_dims(dist, 2, "dist")
    n = dist.shape[0]
    if dist.shape[1] != n:
        raise ValueError(f"dist: expected a square block, got shape {tuple(dist.shape)}")
    if int(k) != k or not 0 <= k <= n:
        raise ValueError(f"k: must lie in [0, {n}], got {k}")
    k = int(k)
    check_device("dist", dist)
    device, dtype = dist.device, dist.dtype
    if k == 0:
        return (torch.zeros(0, dtype=torch.long, device=device), dist.new_zeros(0),
                dist.new_zeros(0))
    L_t = (dist.max() if L is None else torch.as_tensor(L, dtype=dtype, device=device)).reshape(1)
    # Every similarity, hence every gain term, is at most L - min D.
    quantum_inv = _fixed_point_scale(float((L_t - dist.min()).clamp_min(0.0)), n)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    cover = torch.zeros(n, dtype=acc, device=device)
    selected = torch.zeros(n, dtype=torch.int8, device=device)
    picks = torch.empty(k, dtype=torch.long, device=device)
    objective = torch.empty(k, dtype=acc, device=device)
    DT = tl.float64 if acc == torch.float64 else tl.float32
    # The tile bests live in buffers sized for the smallest column tile any config uses.
    max_tiles = triton.cdiv(n, 16)
    best_gain = torch.empty(max_tiles, dtype=torch.long, device=device)
    best_idx = torch.empty(max_tiles, dtype=torch.long, device=device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_J"]),)
    for step in range(k):
        _gains_kernel[grid](dist, L_t, cover, selected, best_gain, best_idx, n,
                            dist.stride(0), dist.stride(1), quantum_inv, bucket(n), DT=DT)
        num_tiles = triton.cdiv(n, _gains_kernel.best_config.kwargs["BLOCK_J"])
        _pick_kernel[(1,)](dist, L_t, cover, selected, best_gain, best_idx, picks, objective,
                           step, n, num_tiles, dist.stride(0), dist.stride(1),
                           DT=DT, BLOCK=128)
    return picks, objective.to(dtype), nearest_pick_counts(dist, picks)


def facility_location_greedy_batch(dists, ks, L=None, lazy=False):
    """The greedy on many blocks in one call (twin of the reference's): the blocks run one after
    another, each step of each block spreading its columns over the device."""
    dists, ks = check_greedy_batch(dists, ks)
    return [facility_location_greedy(d, k, L, lazy) for d, k in zip(dists, ks)]
