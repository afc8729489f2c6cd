"""Batched log-domain Sinkhorn over a ragged batch (twin of `lcmat.reference.sinkhorn`).

Problem p owns rows [r_p, r_{p+1}) and columns [c_p, c_{p+1}); with potentials f, g

    f_i = reg log a_i - reg LSE_j((g_j - M_ij) / reg)        (row half-iteration)
    g_j = reg log b_j - reg LSE_i((f_i - M_ij) / reg)        (column half-iteration)

Each half-iteration is ONE launch for the whole batch: one program per row tile (resp. column
tile) of any problem, found through a tile table built once per call (problem of the tile, first
row of the tile); the program streams its problem's columns (resp. rows) tile by tile with an
online logsumexp (running max, rescaled running sum). When a problem has more than ROW_CHUNK
rows, the column half-iteration is split over row chunks instead (few columns and many rows
would otherwise leave most of the GPU idle: one program for C = 10): one program per (column
tile, row chunk) writes its chunk's running (max, sum), and a second launch merges the chunks of
each column tile (max of the maxima, sums rescaled to it) into g, as the CUDA twin does. The cost tile is read from a stored cost
(each problem's n_p x m_p block row-major, one after the other) or computed from features,
M_ij = ||x_i||^2 + ||y_j||^2 - 2 <x_i, y_j> clamped at zero, with tl.dot over feature chunks.

Convergence (the reference's rule): after iteration `it` the relative row-marginal error
    err = sum_i |(P 1)_i - a_i| / sum_i a_i,  (P 1)_i = exp(f_i / reg + LSE_j((g_j - M_ij) / reg))
is checked when it % check_every == 0 or it == max_iter, and a problem stops when err <= tol.
The LSE in (P 1)_i is exactly the one the next row half-iteration computes, so the check is fused
into it: on a check, the row kernel of iteration it + 1 writes the new f into the other buffer of
a ping-pong pair and the per-row error terms of (f_it, g_it); a small kernel sums them per problem
on the device and clears the problem's `active` flag; every program of an inactive problem returns
at once, so converged problems cost nothing more, and a converged problem's result is the buffer
of its last iteration's parity (its g is never touched again). The host only polls `active.any()`
now and then to end the loop. After max_iter a last row pass does the final check.

Optional epsilon scaling (`sinkhorn_log_ragged_eps_scaling`) anneals reg geometrically from a
large value, warm-starting each stage's potentials, then solves at the target reg with the rule
above.
"""
import math

import torch
import triton
import triton.language as tl

from ._config import INTERPRET, autotune_configs, bucket, check_device, float_dtype, scalars

# Rows (row kernel) and columns (column kernel) per program: fixed, because the tile tables are
# built for them; the streamed dimension's tile is autotuned.
TILE_R = 16 if INTERPRET else 32
TILE_C = 16 if INTERPRET else 32
# Rows per chunk of the split column half-iteration (used when a problem has more rows).
ROW_CHUNK = 32 if INTERPRET else 512
# How many iterations may pass between two host polls of "is any problem still active?".
POLL_EVERY = 1 if INTERPRET else 8


@triton.jit
def _cost_tile(cost_ptr, cost_base, m_p, x_ptr, y_ptr, xx_ptr, yy_ptr, rows, cols, r_start,
               c_start, row_ok, col_ok, D, stride_xn, stride_xd, stride_yn, stride_yd,
               FEATURES: tl.constexpr, DT: tl.constexpr, BLOCK_I: tl.constexpr,
               BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """M for rows x cols of one problem, [BLOCK_I, BLOCK_J] (padding entries are garbage)."""
    mask = row_ok[:, None] & col_ok[None, :]
    if FEATURES:
        xy = tl.zeros([BLOCK_I, BLOCK_J], DT)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_ok = ds < D
            xs = tl.load(x_ptr + rows[:, None] * stride_xn + ds[None, :] * stride_xd,
                         mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(DT)
            ys = tl.load(y_ptr + cols[:, None] * stride_yn + ds[None, :] * stride_yd,
                         mask=col_ok[:, None] & d_ok[None, :], other=0.0).to(DT)
            xy = tl.dot(xs, tl.trans(ys), xy, input_precision="ieee")
        xx = tl.load(xx_ptr + rows, mask=row_ok, other=0.0)
        yy = tl.load(yy_ptr + cols, mask=col_ok, other=0.0)
        M = tl.maximum(xx[:, None] + yy[None, :] - 2.0 * xy, 0.0)
    else:
        offs = cost_base + (rows - r_start)[:, None] * m_p + (cols - c_start)[None, :]
        M = tl.load(cost_ptr + offs, mask=mask, other=0.0).to(DT)
    return M


@triton.jit
def _lse_update(m, s, v, axis: tl.constexpr):
    """One step of an online logsumexp along `axis`; -inf everywhere stays -inf without NaN."""
    m_new = tl.maximum(m, tl.max(v, axis=axis))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    if axis == 1:
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(v - m_safe[:, None]), axis=1)
    else:
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(v - m_safe[None, :]), axis=0)
    return m_new, s


_ROW_CONFIGS = dict(
    gpu=[{"BLOCK_J": 64, "BLOCK_D": 32}, {"BLOCK_J": 128, "BLOCK_D": 32},
         {"BLOCK_J": 128, "BLOCK_D": 64}],
    interpret={"BLOCK_J": 16, "BLOCK_D": 16}, warps=(4, 8), stages=(2, 3))


@triton.autotune(configs=autotune_configs(**_ROW_CONFIGS), key=["COLS_KEY", "D_KEY"])
@triton.jit
def _row_update_kernel(f_in_ptr, f_out_ptr, g_ptr, a_ptr, cost_ptr, x_ptr, y_ptr, xx_ptr, yy_ptr,
                       tile_problem_ptr, tile_start_ptr, row_off_ptr, col_off_ptr, cost_off_ptr,
                       active_ptr, rowerr_ptr, params_ptr, D,
                       stride_xn, stride_xd, stride_yn, stride_yd, COLS_KEY, D_KEY,
                       CHECK: tl.constexpr, FEATURES: tl.constexpr, DT: tl.constexpr,
                       TILE: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """f_out = reg log a - reg LSE_j((g_j - M_ij)/reg) for one row tile; with CHECK also the
    row-marginal error terms |exp(f_in_i/reg + LSE_i) - a_i| of the potentials (f_in, g)."""
    t = tl.program_id(0)
    reg = tl.load(params_ptr)
    inv_reg = tl.load(params_ptr + 1)
    p = tl.load(tile_problem_ptr + t)
    if tl.load(active_ptr + p) == 0:
        return
    r_start = tl.load(row_off_ptr + p)
    r_end = tl.load(row_off_ptr + p + 1)
    c_start = tl.load(col_off_ptr + p)
    c_end = tl.load(col_off_ptr + p + 1)
    cost_base = tl.load(cost_off_ptr + p)
    m_p = c_end - c_start
    rows = tl.load(tile_start_ptr + t) + tl.arange(0, TILE)
    row_ok = rows < r_end
    m = tl.full([TILE], float("-inf"), DT)
    s = tl.zeros([TILE], DT)
    for c0 in range(c_start, c_end, BLOCK_J):
        cols = (c0 + tl.arange(0, BLOCK_J)).to(tl.int64)  # (the bounds are int64 already)
        col_ok = cols < c_end
        M = _cost_tile(cost_ptr, cost_base, m_p, x_ptr, y_ptr, xx_ptr, yy_ptr, rows, cols,
                       r_start, c_start, row_ok, col_ok, D, stride_xn, stride_xd, stride_yn,
                       stride_yd, FEATURES, DT, TILE, BLOCK_J, BLOCK_D)
        g = tl.load(g_ptr + cols, mask=col_ok, other=0.0)
        v = tl.where(col_ok[None, :], (g[None, :] - M) * inv_reg, float("-inf"))
        m, s = _lse_update(m, s, v, 1)
    lse = m + tl.log(s)
    a = tl.load(a_ptr + rows, mask=row_ok, other=1.0).to(DT)
    tl.store(f_out_ptr + rows, reg * tl.log(a) - reg * lse, mask=row_ok)
    if CHECK:
        f_old = tl.load(f_in_ptr + rows, mask=row_ok, other=0.0)
        tl.store(rowerr_ptr + rows, tl.abs(tl.exp(f_old * inv_reg + lse) - a), mask=row_ok)


_COL_CONFIGS = dict(
    gpu=[{"BLOCK_I": 64, "BLOCK_D": 32}, {"BLOCK_I": 128, "BLOCK_D": 32},
         {"BLOCK_I": 128, "BLOCK_D": 64}],
    interpret={"BLOCK_I": 16, "BLOCK_D": 16}, warps=(4, 8), stages=(2, 3))


@triton.jit
def _col_lse(f_ptr, cost_ptr, x_ptr, y_ptr, xx_ptr, yy_ptr, cost_base, m_p, r_start, c_start,
             lo, hi, cols, col_ok, inv_reg, D, stride_xn, stride_xd, stride_yn, stride_yd,
             FEATURES: tl.constexpr, DT: tl.constexpr, TILE: tl.constexpr,
             BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    """Online (max, sum) of LSE_i((f_i - M_ij)/reg) over the rows [lo, hi) for a column tile."""
    m = tl.full([TILE], float("-inf"), DT)
    s = tl.zeros([TILE], DT)
    for r0 in range(lo, hi, BLOCK_I):
        rows = (r0 + tl.arange(0, BLOCK_I)).to(tl.int64)  # (the bounds are int64 already)
        row_ok = rows < hi
        M = _cost_tile(cost_ptr, cost_base, m_p, x_ptr, y_ptr, xx_ptr, yy_ptr, rows, cols,
                       r_start, c_start, row_ok, col_ok, D, stride_xn, stride_xd, stride_yn,
                       stride_yd, FEATURES, DT, BLOCK_I, TILE, BLOCK_D)
        f = tl.load(f_ptr + rows, mask=row_ok, other=0.0)
        v = tl.where(row_ok[:, None], (f[:, None] - M) * inv_reg, float("-inf"))
        m, s = _lse_update(m, s, v, 0)
    return m, s


@triton.autotune(configs=autotune_configs(**_COL_CONFIGS), key=["ROWS_KEY", "D_KEY"])
@triton.jit
def _col_update_kernel(f_ptr, g_ptr, b_ptr, cost_ptr, x_ptr, y_ptr, xx_ptr, yy_ptr,
                       tile_problem_ptr, tile_start_ptr, row_off_ptr, col_off_ptr, cost_off_ptr,
                       active_ptr, params_ptr, D, stride_xn, stride_xd, stride_yn, stride_yd,
                       ROWS_KEY, D_KEY, FEATURES: tl.constexpr, DT: tl.constexpr,
                       TILE: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    """g = reg log b - reg LSE_i((f_i - M_ij)/reg) for one column tile."""
    t = tl.program_id(0)
    reg = tl.load(params_ptr)
    inv_reg = tl.load(params_ptr + 1)
    p = tl.load(tile_problem_ptr + t)
    if tl.load(active_ptr + p) == 0:
        return
    r_start = tl.load(row_off_ptr + p)
    r_end = tl.load(row_off_ptr + p + 1)
    c_start = tl.load(col_off_ptr + p)
    c_end = tl.load(col_off_ptr + p + 1)
    cost_base = tl.load(cost_off_ptr + p)
    cols = tl.load(tile_start_ptr + t) + tl.arange(0, TILE)
    col_ok = cols < c_end
    m, s = _col_lse(f_ptr, cost_ptr, x_ptr, y_ptr, xx_ptr, yy_ptr, cost_base, c_end - c_start,
                    r_start, c_start, r_start, r_end, cols, col_ok, inv_reg, D, stride_xn,
                    stride_xd, stride_yn, stride_yd, FEATURES, DT, TILE, BLOCK_I, BLOCK_D)
    lse = m + tl.log(s)
    b = tl.load(b_ptr + cols, mask=col_ok, other=1.0).to(DT)
    tl.store(g_ptr + cols, reg * tl.log(b) - reg * lse, mask=col_ok)


@triton.autotune(configs=autotune_configs(**_COL_CONFIGS), key=["ROWS_KEY", "D_KEY"])
@triton.jit
def _col_partial_kernel(f_ptr, part_m_ptr, part_s_ptr, cost_ptr, x_ptr, y_ptr, xx_ptr, yy_ptr,
                        tile_problem_ptr, tile_start_ptr, row_off_ptr, col_off_ptr, cost_off_ptr,
                        active_ptr, params_ptr, part_tile_ptr, part_chunk_ptr, D, stride_xn,
                        stride_xd, stride_yn, stride_yd, ROWS_KEY, D_KEY,
                        ROW_CHUNK: tl.constexpr, FEATURES: tl.constexpr, DT: tl.constexpr,
                        TILE: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    """The split column pass, part 1: program v owns column tile u and row chunk k of its
    problem, and writes that chunk's running (max, sum) for the tile's columns at slot v."""
    v = tl.program_id(0)
    u = tl.load(part_tile_ptr + v)
    k = tl.load(part_chunk_ptr + v)
    p = tl.load(tile_problem_ptr + u)
    if tl.load(active_ptr + p) == 0:
        return
    inv_reg = tl.load(params_ptr + 1)
    r_start = tl.load(row_off_ptr + p)
    r_end = tl.load(row_off_ptr + p + 1)
    c_start = tl.load(col_off_ptr + p)
    c_end = tl.load(col_off_ptr + p + 1)
    cost_base = tl.load(cost_off_ptr + p)
    cols = tl.load(tile_start_ptr + u) + tl.arange(0, TILE)
    col_ok = cols < c_end
    lo = r_start + k * ROW_CHUNK
    hi = tl.minimum(r_end, lo + ROW_CHUNK)
    m, s = _col_lse(f_ptr, cost_ptr, x_ptr, y_ptr, xx_ptr, yy_ptr, cost_base, c_end - c_start,
                    r_start, c_start, lo, hi, cols, col_ok, inv_reg, D, stride_xn, stride_xd,
                    stride_yn, stride_yd, FEATURES, DT, TILE, BLOCK_I, BLOCK_D)
    slot = v.to(tl.int64) * TILE + tl.arange(0, TILE)
    tl.store(part_m_ptr + slot, m)
    tl.store(part_s_ptr + slot, s)


@triton.jit
def _col_merge_kernel(g_ptr, b_ptr, part_m_ptr, part_s_ptr, tile_problem_ptr, tile_start_ptr,
                      col_off_ptr, active_ptr, params_ptr, part_first_ptr, part_count_ptr,
                      DT: tl.constexpr, TILE: tl.constexpr):
    """The split column pass, part 2: for column tile u, LSE = M + log(sum_k s_k exp(m_k - M))
    with M = max_k m_k over its chunks' (m_k, s_k), then g = reg log b - reg LSE."""
    u = tl.program_id(0)
    p = tl.load(tile_problem_ptr + u)
    if tl.load(active_ptr + p) == 0:
        return
    reg = tl.load(params_ptr)
    c_end = tl.load(col_off_ptr + p + 1)
    cols = tl.load(tile_start_ptr + u) + tl.arange(0, TILE)
    col_ok = cols < c_end
    first = tl.load(part_first_ptr + u)
    count = tl.load(part_count_ptr + u)
    m = tl.full([TILE], float("-inf"), DT)
    s = tl.zeros([TILE], DT)
    for j in range(0, count):
        slot = (first + j) * TILE + tl.arange(0, TILE)
        m_k = tl.load(part_m_ptr + slot)
        s_k = tl.load(part_s_ptr + slot)
        m_new = tl.maximum(m, m_k)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + s_k * tl.exp(m_k - m_safe)
        m = m_new
    lse = m + tl.log(s)
    b = tl.load(b_ptr + cols, mask=col_ok, other=1.0).to(DT)
    tl.store(g_ptr + cols, reg * tl.log(b) - reg * lse, mask=col_ok)


@triton.jit
def _check_kernel(rowerr_ptr, row_off_ptr, sum_a_ptr, active_ptr, err_ptr, n_iter_ptr, it,
                  params_ptr, DT: tl.constexpr, BLOCK: tl.constexpr):
    """Per problem: err = sum of its rows' error terms / sum a; record it and the iteration;
    a problem stops when err <= tol (NaN stops it too, as `err > tol` is False in the reference)."""
    p = tl.program_id(0)
    if tl.load(active_ptr + p) == 0:
        return
    r_start = tl.load(row_off_ptr + p)
    r_end = tl.load(row_off_ptr + p + 1)
    total = tl.zeros([BLOCK], DT)
    for r0 in range(r_start, r_end, BLOCK):
        rows = r0 + tl.arange(0, BLOCK)
        total += tl.load(rowerr_ptr + rows, mask=rows < r_end, other=0.0)
    err = tl.sum(total, axis=0) / tl.load(sum_a_ptr + p)
    tol = tl.load(params_ptr + 2)
    tl.store(err_ptr + p, err)
    tl.store(n_iter_ptr + p, it)
    tl.store(active_ptr + p, (err > tol).to(tl.int32))


def _as_offsets(offsets, name, total, device):
    off = torch.as_tensor(offsets, device=device)
    if off.dim() != 1 or off.numel() < 1 or off.dtype.is_floating_point:
        raise ValueError(f"{name}: expected a 1-D integer sequence of P + 1 offsets")
    off = off.to(torch.int64)
    if int(off[0]) != 0 or int(off[-1]) != total or bool((off[1:] < off[:-1]).any()):
        raise ValueError(f"{name}: must start at 0, never decrease and end at {total}")
    return off.contiguous()


def _tile_table(offsets, tile):
    """(problem of each tile, first index of each tile) for tiles of `tile` along each problem."""
    sizes = offsets[1:] - offsets[:-1]
    counts = (sizes + tile - 1) // tile
    problem = torch.repeat_interleave(torch.arange(len(sizes), device=offsets.device), counts)
    first_tile = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(problem), device=offsets.device) - first_tile[problem]
    return problem.contiguous(), (offsets[:-1][problem] + local * tile).contiguous()


class _Batch:
    """Everything about a ragged batch that does not change across iterations."""

    def __init__(self, a, b, row_offsets, col_offsets, cost, x, y):
        if (cost is None) == (x is None or y is None):
            raise ValueError("cost, x, y: give either a stored `cost` or both features `x` and `y`")
        for t, name in ((a, "a"), (b, "b")):
            float_dtype(t, name)
            if t.dim() != 1:
                raise ValueError(f"{name}: expected a 1-D tensor, got shape {tuple(t.shape)}")
        check_device("a, b, cost, x, y", a, b, cost, x, y)
        device = a.device
        self.row_off = _as_offsets(row_offsets, "row_offsets", a.numel(), device)
        self.col_off = _as_offsets(col_offsets, "col_offsets", b.numel(), device)
        if len(self.row_off) != len(self.col_off):
            raise ValueError(f"row_offsets, col_offsets: expected the same number of problems, "
                             f"got {len(self.row_off) - 1} and {len(self.col_off) - 1}")
        n_p = self.row_off[1:] - self.row_off[:-1]
        m_p = self.col_off[1:] - self.col_off[:-1]
        block = n_p * m_p
        self.cost_off = (torch.cumsum(block, 0) - block).contiguous()
        self.features = cost is None
        if self.features:
            for t, name, rows in ((x, "x", a.numel()), (y, "y", b.numel())):
                float_dtype(t, name)
                if t.dim() != 2 or t.shape[0] != rows:
                    raise ValueError(f"{name}: expected shape ({rows}, D), got {tuple(t.shape)}")
            if x.shape[1] != y.shape[1]:
                raise ValueError(f"x, y: expected the same feature dimension, "
                                 f"got {x.shape[1]} and {y.shape[1]}")
        else:
            float_dtype(cost, "cost")
            if cost.dim() != 1 or cost.numel() != int(block.sum()):
                raise ValueError(f"cost: expected a flat tensor of sum n_p m_p = {int(block.sum())} "
                                 f"entries, got shape {tuple(cost.shape)}")
        self.num = len(n_p)
        self.nonempty = (n_p > 0) & (m_p > 0)
        self.DT = tl.float64 if any(t is not None and t.dtype == torch.float64
                                    for t in (a, b, cost, x, y)) else tl.float32
        dt = torch.float64 if self.DT == tl.float64 else torch.float32
        self.dtype = dt
        self.a, self.b = a.to(dt).contiguous(), b.to(dt).contiguous()
        self.cost = cost.contiguous() if cost is not None else self.a
        self.x, self.y = (x, y) if self.features else (self.a[:, None], self.b[:, None])
        self.xx = (x.to(dt) ** 2).sum(1).contiguous() if self.features else self.a
        self.yy = (y.to(dt) ** 2).sum(1).contiguous() if self.features else self.b
        self.D = x.shape[1] if self.features else 0
        row_problem = torch.repeat_interleave(torch.arange(self.num, device=device), n_p)
        self.sum_a = torch.zeros(self.num, dtype=dt, device=device).index_add_(0, row_problem, self.a)
        self.row_problem = row_problem
        self.row_tiles = _tile_table(self.row_off, TILE_R)
        self.col_tiles = _tile_table(self.col_off, TILE_C)
        self.col_parts = self._col_parts(n_p, dt, device)
        self.cols_key = bucket(int(m_p.max()) if self.num else 1)
        self.rows_key = bucket(int(n_p.max()) if self.num else 1)

    def _col_parts(self, n_p, dt, device):
        """The split column pass's tables when some problem has more than ROW_CHUNK rows (else
        None): per program its column tile and row chunk, per column tile its first program and
        chunk count, and the (max, sum) slots of every program."""
        problem = self.col_tiles[0]
        if len(problem) == 0 or int(n_p.max()) <= ROW_CHUNK:
            return None
        chunks = ((n_p[problem] + ROW_CHUNK - 1) // ROW_CHUNK).clamp_min(1)
        tile = torch.repeat_interleave(torch.arange(len(problem), device=device), chunks)
        first = torch.cumsum(chunks, 0) - chunks
        chunk = torch.arange(len(tile), device=device) - first[tile]
        slots = torch.empty(2, len(tile) * TILE_C, dtype=dt, device=device)
        return dict(tile=tile.contiguous(), chunk=chunk.contiguous(), first=first.contiguous(),
                    count=chunks.contiguous(), m=slots[0], s=slots[1])

    def _common(self, tiles):
        return (self.cost, self.x, self.y, self.xx, self.yy, tiles[0], tiles[1], self.row_off,
                self.col_off, self.cost_off)

    def params(self, reg, tol):
        """(reg, 1 / reg, tol) in the compute dtype, for the kernels to load: a Python float
        argument would reach a kernel as a float32 scalar, rounding a float64 solve's constants."""
        return scalars(self.DT, self.a.device, reg, 1.0 / reg, tol)

    def row_update(self, f_in, f_out, g, active, rowerr, params, check):
        if len(self.row_tiles[0]) == 0:
            return
        _row_update_kernel[(len(self.row_tiles[0]),)](
            f_in, f_out, g, self.a, *self._common(self.row_tiles), active, rowerr, params, self.D, self.x.stride(0), self.x.stride(1), self.y.stride(0), self.y.stride(1),
            self.cols_key, bucket(self.D), CHECK=check, FEATURES=self.features, DT=self.DT,
            TILE=TILE_R)

    def col_update(self, f, g, active, params):
        if len(self.col_tiles[0]) == 0:
            return
        parts = self.col_parts
        if parts is not None:
            _col_partial_kernel[(len(parts["tile"]),)](
                f, parts["m"], parts["s"], *self._common(self.col_tiles), active, params,
                parts["tile"], parts["chunk"], self.D, self.x.stride(0), self.x.stride(1),
                self.y.stride(0), self.y.stride(1), bucket(min(self.rows_key, ROW_CHUNK)),
                bucket(self.D), ROW_CHUNK=ROW_CHUNK, FEATURES=self.features, DT=self.DT,
                TILE=TILE_C)
            _col_merge_kernel[(len(self.col_tiles[0]),)](
                g, self.b, parts["m"], parts["s"], *self.col_tiles, self.col_off, active, params,
                parts["first"], parts["count"], DT=self.DT, TILE=TILE_C)
            return
        _col_update_kernel[(len(self.col_tiles[0]),)](
            f, g, self.b, *self._common(self.col_tiles), active, params, self.D,
            self.x.stride(0), self.x.stride(1), self.y.stride(0), self.y.stride(1),
            self.rows_key, bucket(self.D), FEATURES=self.features, DT=self.DT, TILE=TILE_C)

    def check(self, rowerr, active, err, n_iter, it, params):
        _check_kernel[(self.num,)](rowerr, self.row_off, self.sum_a, active, err, n_iter, it,
                                   params, DT=self.DT, BLOCK=128)


def _check_solver_args(reg, max_iter, tol, check_every):
    if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
        raise ValueError(f"reg: expected a positive finite number, got {reg!r}")
    if int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f"max_iter: expected a non-negative integer, got {max_iter!r}")
    if int(check_every) != check_every or check_every < 1:
        raise ValueError(f"check_every: expected a positive integer, got {check_every!r}")
    if not tol >= 0:
        raise ValueError(f"tol: expected a non-negative number, got {tol!r}")


def _solve(batch, reg, max_iter, tol, check_every, f0=None, g0=None):
    """The Sinkhorn loop of the module docstring. Returns (f, g, n_iter, err) in batch.dtype."""
    device = batch.a.device
    f_bufs = [torch.zeros_like(batch.a) if f0 is None else f0.clone(), torch.zeros_like(batch.a)]
    g = torch.zeros_like(batch.b) if g0 is None else g0.clone()
    rowerr = torch.zeros_like(batch.a)
    active = batch.nonempty.to(torch.int32)
    n_iter = torch.zeros(batch.num, dtype=torch.long, device=device)
    err = torch.where(batch.nonempty, torch.inf, 0.0).to(batch.dtype)
    params = batch.params(float(reg), float(tol))

    def is_check(it):
        return it % check_every == 0 or it == max_iter

    finished = max_iter == 0
    last_poll = 0
    for it in range(1, max_iter + 1):
        f_cur, f_next = f_bufs[(it - 1) % 2], f_bufs[it % 2]
        check = it > 1 and is_check(it - 1)
        batch.row_update(f_cur, f_next, g, active, rowerr, params, check)
        if check:
            batch.check(rowerr, active, err, n_iter, it - 1, params)
            if it - 1 - last_poll >= POLL_EVERY:
                last_poll = it - 1
                if not bool(active.any()):
                    finished = True
                    break
        batch.col_update(f_next, g, active, params)
    if not finished:
        # The final check of iteration max_iter: a row pass into the scratch buffer.
        batch.row_update(f_bufs[max_iter % 2], f_bufs[(max_iter + 1) % 2], g, active, rowerr,
                         params, True)
        batch.check(rowerr, active, err, n_iter, max_iter, params)
    parity = (n_iter % 2)[batch.row_problem]
    f = torch.where(parity == 0, f_bufs[0], f_bufs[1])
    return f, g, n_iter, err


def sinkhorn_log_ragged(a, b, row_offsets, col_offsets, reg, cost=None, x=None, y=None,
                        max_iter=1000, tol=1e-6, check_every=1):
    """Many independent problems of different sizes in one call (see the module docstring).

    Problem p owns rows a[row_offsets[p]:row_offsets[p+1]] and columns
    b[col_offsets[p]:col_offsets[p+1]]; its cost is stored (`cost`, the n_p x m_p blocks
    row-major one after the other) or computed from features x [sum n_p, D], y [sum m_p, D].
    Empty problems get zero potentials, n_iter 0 and err 0.

    Returns (f [sum n_p], g [sum m_p], n_iter [P], err [P]).
    """
    _check_solver_args(reg, max_iter, tol, check_every)
    batch = _Batch(a, b, row_offsets, col_offsets, cost, x, y)
    f, g, n_iter, err = _solve(batch, reg, max_iter, tol, check_every)
    return f.to(a.dtype), g.to(b.dtype), n_iter, err.to(a.dtype)


def sinkhorn_log(a, b, M, reg, max_iter=1000, tol=1e-6, check_every=1):
    """Dense log-domain Sinkhorn for one problem (a [n], b [m], M [n, m]) or a dense batch
    (a [B, n], b [B, m], M [B, n, m]); every problem of a batch stops on its own error.

    Returns (f, g, n_iter, err): potentials shaped like a and b, and per problem the number of
    iterations run and the final relative marginal error (scalars for a single problem).
    """
    float_dtype(M, "M")
    if M.dim() not in (2, 3):
        raise ValueError(f"M: expected [n, m] or [B, n, m], got shape {tuple(M.shape)}")
    batched = M.dim() == 3
    Mb = M if batched else M[None]
    B, n, m = Mb.shape
    ab = a if batched else a[None]
    bb = b if batched else b[None]
    if tuple(ab.shape) != (B, n):
        raise ValueError(f"a: expected shape {(B, n) if batched else (n,)}, got {tuple(a.shape)}")
    if tuple(bb.shape) != (B, m):
        raise ValueError(f"b: expected shape {(B, m) if batched else (m,)}, got {tuple(b.shape)}")
    device = M.device
    row_off = torch.arange(B + 1, device=device) * n
    col_off = torch.arange(B + 1, device=device) * m
    f, g, n_iter, err = sinkhorn_log_ragged(
        ab.reshape(-1), bb.reshape(-1), row_off, col_off, reg, cost=Mb.reshape(-1),
        max_iter=max_iter, tol=tol, check_every=check_every)
    f, g, err = f.view(B, n), g.view(B, m), err.to(M.dtype)
    if not batched:
        return f[0], g[0], n_iter[0], err[0]
    return f, g, n_iter, err


def sinkhorn_log_ragged_eps_scaling(a, b, row_offsets, col_offsets, reg, cost=None, x=None,
                                    y=None, max_iter=1000, tol=1e-6, check_every=1,
                                    reg_start=None, decay=0.5, stage_iter=10):
    """`sinkhorn_log_ragged` with epsilon scaling: `stage_iter` iterations at each of
    reg_start, reg_start * decay, ... (while above reg), each stage warm-started from the last,
    then the ordinary solve at `reg` from those potentials (same stopping rule and returns;
    n_iter counts the final stage only). reg_start defaults to the largest cost entry (or
    squared feature distance bound), the scale at which the plan is nearly uniform."""
    _check_solver_args(reg, max_iter, tol, check_every)
    if not 0 < decay < 1:
        raise ValueError(f"decay: expected a number in (0, 1), got {decay!r}")
    batch = _Batch(a, b, row_offsets, col_offsets, cost, x, y)
    if reg_start is None:
        if batch.features:
            bound = 2.0 * (float(batch.xx.max()) + float(batch.yy.max())) if batch.D else 0.0
        else:
            bound = float(cost.abs().max()) if cost.numel() else 0.0
        reg_start = max(bound, reg)
    f = g = None
    stage_reg = float(reg_start)
    while stage_reg > reg and stage_iter > 0:
        f, g, _, _ = _solve(batch, stage_reg, stage_iter, 0.0, stage_iter)
        stage_reg *= decay
    f, g, n_iter, err = _solve(batch, reg, max_iter, tol, check_every, f, g)
    return f.to(a.dtype), g.to(b.dtype), n_iter, err.to(a.dtype)
