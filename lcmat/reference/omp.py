"""Orthogonal matching pursuit with non-negative weights on last-layer gradients (GradMatch).

The vectors are the last-layer gradients g_i = [e_i ; vec(e_i h_i^T)] (see `last_layer`), known
only through inner products: G_ij = g_i . g_j = (e_i . e_j)(1 + h_i . h_j) and b_i = g_i . t for
the target t. OMP picks k of them:

    r = t;  S = []
    repeat k times:
        j = argmax_{i not in S} g_i . r                 (signed; lowest index on ties)
        S = S + [j]
        w = argmin_{w >= 0} || sum_{s in S} w_s g_s - t ||^2 + lam ||w||^2
        r = t - sum_{s in S} w_s g_s

Since g_i . r = b_i - sum_s w_s G_is, a step needs the n x |S| Gram columns of the picks (one new
column per step, O(n (C + D))), never the n x C (D + 1) gradients nor the n x n Gram. The weights
minimise w^T (G_SS + lam I) w - 2 b_S^T w over w >= 0 (the same objective less ||t||^2), solved by
Lawson and Hanson's active set method warm-started from the previous step's weights.
"""
import torch


def gradient_columns(embeddings, e, picks):
    """G[:, picks] = (e @ e[picks]^T) * (1 + h @ h[picks]^T), [n, len(picks)]."""
    return (e @ e[picks].T) * (1.0 + embeddings @ embeddings[picks].T)


def gradient_column(embeddings, e, h_j, e_j):
    """G[:, j] = (e_i . e_j)(1 + h_i . h_j) for one row j given by its vectors h_j [D], e_j [C],
    [n]. Products and row sums, not a matrix-vector product: each entry then has the same bits
    whatever the number of rows and their place in memory, so a pursuit over rows split across
    processes (lcmat.distributed) computes the same column."""
    return (e * e_j).sum(1) * (1.0 + (embeddings * h_j).sum(1))


def residual_correlation(b, columns, w):
    """g_i . r = b_i - sum_s w_s G_is for every row, [n]; row sums as in `gradient_column`."""
    return b - (columns * w).sum(1)


def _pursuit_state(embeddings, b, k):
    """(Gram columns of the picks [n, k], the rows still available [n]) before the first pick."""
    n = embeddings.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k: must lie in [0, {n}], got {k}")
    return b.new_zeros(n, k), torch.ones(n, dtype=torch.bool, device=b.device)


def _pick_next(embeddings, e, corr, available, columns, step):
    """j = argmax over the available rows of the correlation g_i . r (lowest index on ties); marks
    j taken and stores its Gram column as column `step`."""
    j = int(torch.argmax(corr.masked_fill(~available, -torch.inf)))
    available[j] = False
    columns[:, step] = gradient_column(embeddings, e, embeddings[j], e[j])
    return j


def gradient_target_dot(embeddings, e, target_embeddings, target_e, scale=1.0):
    """b_i = g_i . t with t = scale * sum_v g_v over the target rows, [n].

    t is formed in its factored shape, bias sum_v e_v [C] and weight sum_v e_v h_v^T [C, D], so
    b_i = e_i . t_bias + e_i . (t_weight h_i) costs O(n C D) and no n x m block.
    """
    t_bias = target_e.sum(0) * scale
    t_weight = (target_e.T @ target_embeddings) * scale
    return target_dot(embeddings, e, t_bias, t_weight)


def target_dot(embeddings, e, t_bias, t_weight):
    """b_i = g_i . t for a target given by its bias part t_bias [C] and weight part t_weight [C, D]."""
    return (e * (t_bias + embeddings @ t_weight.T)).sum(1)


def _solve(A, b):
    """A^{-1} b for a symmetric positive semi-definite A; least squares when it is singular."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(b[:, None], L)[:, 0]
    return torch.linalg.lstsq(A, b[:, None], driver="gelsd" if A.device.type == "cpu" else None).solution[:, 0]


def nnls_quadratic(A, b, w=None, tol=None, max_iter=None, settled=False):
    """argmin_{w >= 0} w^T A w - 2 b^T w for a symmetric positive semi-definite A [k, k].

    Lawson and Hanson's active set method on the quadratic: move the coordinate of largest
    positive dual b - A w into the passive set, solve the passive system, and step back to the
    boundary while a passive coordinate would turn non-positive. `w`: a feasible start (>= 0,
    e.g. the previous solution padded with zeros); settled=True says it already solves the
    system on its own support (the previous OMP step's weights), which skips one solve.
    Returns w [k].
    """
    k = len(b)
    w = b.new_zeros(k) if w is None else w.clone().clamp_min_(0.0)
    if tol is None:
        scale = float(b.abs().max()) + float(A.abs().max()) * float(w.abs().max()) if k else 0.0
        tol = 10.0 * max(k, 1) * torch.finfo(b.dtype).eps * max(scale, 1e-300)
    max_iter = 3 * k + 10 if max_iter is None else max_iter
    passive = w > 0
    if bool(passive.any()) and not settled:
        w = _passive_solve(A, b, w, passive)
        passive = w > 0
    for _ in range(max_iter):
        dual = (b - A @ w).masked_fill(passive, -torch.inf)
        j = int(torch.argmax(dual)) if k else 0
        if k == 0 or not float(dual[j]) > tol:
            return w
        passive[j] = True
        w = _passive_solve(A, b, w, passive)
        passive = w > 0
    raise RuntimeError(f"nnls_quadratic: no convergence in {max_iter} iterations (k = {k})")


def _passive_solve(A, b, w, passive):
    """The inner loop: the solution on the passive set, moving back to the boundary from the
    feasible w while some passive coordinate of the solution is <= 0."""
    for _ in range(len(b) + 1):
        idx = passive.nonzero().flatten()
        s = torch.zeros_like(w)
        s[idx] = _solve(A[idx][:, idx], b[idx])
        bad = passive & (s <= 0)
        if not bool(bad.any()):
            return s
        # the largest step from w towards s that keeps every passive coordinate >= 0
        alpha = float((w[bad] / (w[bad] - s[bad])).min())
        w = w + alpha * (s - w)
        w[bad & (w <= torch.finfo(w.dtype).eps * w.abs().max())] = 0.0
        passive = passive & (w > 0)
        if not bool(passive.any()):
            return torch.zeros_like(w)
    raise RuntimeError("nnls_quadratic: the inner loop did not terminate")


def omp_last_layer(embeddings, e, b, k, lam=0.0):
    """Non-negative OMP over the last-layer gradients of the rows (the module docstring).

    embeddings [n, D], e [n, C] (error factors), b [n] = g_i . t, k picks, lam >= 0 the ridge.
    Returns (picks LongTensor [k] in pick order, weights [k] aligned with the picks: the NNLS
    weights after the last pick). Zero correlations or a zero residual do not stop it early: every
    step picks, so exactly k rows come back (a pick may keep weight 0).
    """
    picks, w = [], b.new_zeros(0)
    columns, available = _pursuit_state(embeddings, b, k)
    corr = b.clone()
    for step in range(k):
        j = _pick_next(embeddings, e, corr, available, columns, step)
        picks.append(j)
        chosen = torch.tensor(picks, device=b.device)
        A = columns[chosen, :step + 1] + lam * torch.eye(step + 1, dtype=b.dtype, device=b.device)
        w = nnls_quadratic(A, b[chosen], torch.cat([w, w.new_zeros(1)]), settled=True)
        corr = residual_correlation(b, columns[:, :step + 1], w)
    return torch.tensor(picks, dtype=torch.long, device=b.device), w


def omp_last_layer_deepcore(embeddings, e, b, k, lam=1.0):
    """DeepCore's OMP (deepcore/methods/gradmatch.py), on the same Gram identities.

    Differences from `omp_last_layer`: the weights during the pursuit are unconstrained ridge
    solutions (G_SS + lam I) w = b_S (the first step's w_j = b_j / G_jj, without lam); after
    the last pick the weights are the non-negative least-squares solution of
    min_{w >= 0} || (G_SS + lam I) w - b_S ||_2 (DeepCore's scipy nnls on the normal
    equations), and a single pick gets weight 1. Returns (picks [k], weights [k]).
    """
    picks, w = [], b.new_zeros(0)
    columns, available = _pursuit_state(embeddings, b, k)
    corr = b.clone()
    for step in range(k):
        j = _pick_next(embeddings, e, corr, available, columns, step)
        picks.append(j)
        chosen = torch.tensor(picks, device=b.device)
        if step == 0:
            norm = columns[j, 0]
            w = b[chosen] / norm if float(norm) > 0 else b.new_zeros(1)  # DeepCore divides by 0 here
        else:
            A = columns[chosen, :step + 1] + lam * torch.eye(step + 1, dtype=b.dtype, device=b.device)
            w = torch.linalg.lstsq(A, b[chosen][:, None]).solution[:, 0]
        corr = residual_correlation(b, columns[:, :step + 1], w)
    if k == 1:
        w = b.new_ones(1)
    elif k > 1:
        w = nnls_quadratic(A.T @ A, A.T @ b[chosen])
    return torch.tensor(picks, dtype=torch.long, device=b.device), w
