"""Entropic optimal transport by log-domain Sinkhorn (docs/design.md, "Log-domain Sinkhorn").

Problem: min_P <P, M> - reg H(P) subject to P 1 = a, P^T 1 = b. With potentials f, g,

    P_ij = exp((f_i + g_j - M_ij) / reg)
    f_i  = reg log a_i - reg LSE_j((g_j - M_ij) / reg)
    g_j  = reg log b_j - reg LSE_i((f_i - M_ij) / reg)

After a g-update the column marginal is exact, so convergence is measured on the rows: the
relative marginal error  err = sum_i |(P 1)_i - a_i| / sum_i a_i,  checked every `check_every`
iterations; a problem stops when err <= tol. Zero masses get potential -inf and zero plan rows.
"""
import torch


def _log_mass(x):
    return torch.where(x > 0, x.log(), torch.full_like(x, -torch.inf))


def _row_update(log_a, g, M, reg):
    return reg * log_a - reg * torch.logsumexp((g[..., None, :] - M) / reg, dim=-1)


def _col_update(log_b, f, M, reg):
    return reg * log_b - reg * torch.logsumexp((f[..., :, None] - M) / reg, dim=-2)


def marginal_error(a, f, g, M, reg):
    """The relative row-marginal error of the plan of (f, g), in float64 whatever the dtype of
    the potentials: the one definition every backend's result is judged by (a solver's own
    running estimate, in its compute dtype, can round to zero when reg is tiny). Per problem for a
    batch; NaN when the plan is not finite."""
    a, f, g, M = a.double(), f.double(), g.double(), M.double()
    return _row_marginal_error(a, f, g, M, reg)


def smallest_reg(M):
    """The smallest reg the dtype of M resolves: potentials and costs of magnitude max|M| carry
    rounding errors of about eps max|M|, which the plan exp((f + g - M) / reg) magnifies by
    1 / reg; below 10 eps max|M| the plan is noise."""
    top = float(M.abs().max()) if M.numel() else 0.0
    return 10 * torch.finfo(M.dtype).eps * top


def check_offsets(name, offsets, total):
    """Ragged offsets as a list of ints: 1-D integers, from 0 to `total`, never decreasing."""
    off = torch.as_tensor(offsets)
    if off.dim() != 1 or off.numel() < 1 or off.is_floating_point() or off.dtype == torch.bool:
        raise ValueError(f"{name}: expected a 1-D integer sequence of P + 1 offsets")
    off = off.tolist()
    if off[0] != 0 or off[-1] != total or any(hi < lo for lo, hi in zip(off, off[1:])):
        raise ValueError(f"{name}: must start at 0, never decrease and end at {total}")
    return off


def _row_marginal_error(a, f, g, M, reg):
    rows = torch.exp((f[..., :, None] + g[..., None, :] - M) / reg).sum(-1)
    return (rows - a).abs().sum(-1) / a.sum(-1)


def sinkhorn_log(a, b, M, reg, max_iter=1000, tol=1e-6, check_every=1):
    """Dense log-domain Sinkhorn for one problem (a [n], b [m], M [n, m]) or a dense batch
    (a [B, n], b [B, m], M [B, n, m]); every problem of a batch stops on its own error.

    Returns (f, g, n_iter, err): potentials shaped like a and b, and per problem the number of
    iterations run and the final relative marginal error (scalars for a single problem).
    """
    batched = M.dim() == 3
    if not batched:
        a, b, M = a[None], b[None], M[None]
    log_a, log_b = _log_mass(a), _log_mass(b)
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    n_iter = torch.zeros(M.shape[0], dtype=torch.long, device=M.device)
    err = torch.full((M.shape[0],), torch.inf, dtype=M.dtype, device=M.device)
    active = torch.ones(M.shape[0], dtype=torch.bool, device=M.device)
    for it in range(1, max_iter + 1):
        idx = active.nonzero().squeeze(1)
        f_new = _row_update(log_a[idx], g[idx], M[idx], reg)
        g_new = _col_update(log_b[idx], f_new, M[idx], reg)
        f[idx], g[idx] = f_new, g_new
        n_iter[idx] = it
        if it % check_every == 0 or it == max_iter:
            err[idx] = _row_marginal_error(a[idx], f_new, g_new, M[idx], reg)
            active[idx] = err[idx] > tol
            if not active.any():
                break
    if not batched:
        return f[0], g[0], n_iter[0], err[0]
    return f, g, n_iter, err


def sinkhorn_plan(f, g, M, reg):
    """The plan P_ij = exp((f_i + g_j - M_ij) / reg) from the potentials (dense or batched)."""
    return torch.exp((f[..., :, None] + g[..., None, :] - M) / reg)


def squared_euclidean_cost(x, y):
    """M_ij = ||x_i - y_j||^2 in GEMM form, clamped at zero."""
    return ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T).clamp_min_(0.0)


def sinkhorn_log_ragged(a, b, row_offsets, col_offsets, reg, cost=None, x=None, y=None,
                        max_iter=1000, tol=1e-6, check_every=1):
    """Many independent problems of different sizes in one call.

    Problem p owns rows a[row_offsets[p]:row_offsets[p+1]] and columns
    b[col_offsets[p]:col_offsets[p+1]]. Its cost is either stored, `cost` a flat tensor holding
    each n_p x m_p block row-major one after the other, or computed from features as
    ||x_i - y_j||^2 with x [sum n_p, D] and y [sum m_p, D].

    Returns (f [sum n_p], g [sum m_p], n_iter [P], err [P]).
    """
    if (cost is None) == (x is None and y is None) or (x is None) != (y is None):
        raise ValueError("cost, x, y: give either a stored `cost` or both features `x` and `y`")
    row_offsets = check_offsets("row_offsets", row_offsets, a.numel())
    col_offsets = check_offsets("col_offsets", col_offsets, b.numel())
    if len(row_offsets) != len(col_offsets):
        raise ValueError(f"row_offsets, col_offsets: expected the same number of problems, got "
                         f"{len(row_offsets) - 1} and {len(col_offsets) - 1}")
    if cost is not None:
        sizes = [(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in
                 zip(row_offsets, row_offsets[1:], col_offsets, col_offsets[1:])]
        if cost.numel() != sum(sizes):
            raise ValueError(f"cost: expected {sum(sizes)} values (the blocks n_p x m_p), got {cost.numel()}")
    num = len(row_offsets) - 1
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    n_iter = torch.zeros(num, dtype=torch.long, device=a.device)
    err = torch.zeros(num, dtype=a.dtype, device=a.device)
    cost_start = 0
    for p in range(num):
        r0, r1 = int(row_offsets[p]), int(row_offsets[p + 1])
        c0, c1 = int(col_offsets[p]), int(col_offsets[p + 1])
        if cost is not None:
            M = cost[cost_start:cost_start + (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
            cost_start += (r1 - r0) * (c1 - c0)
        else:
            M = squared_euclidean_cost(x[r0:r1], y[c0:c1])
        if r1 == r0 or c1 == c0:
            continue
        f[r0:r1], g[c0:c1], n_iter[p], err[p] = sinkhorn_log(
            a[r0:r1], b[c0:c1], M, reg, max_iter, tol, check_every)
    return f, g, n_iter, err
