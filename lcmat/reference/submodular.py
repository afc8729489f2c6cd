"""Greedy maximisation of the graph-cut and log-determinant set functions over a similarity
block S (n x n, symmetric, non-negative for graph cut, positive semi-definite for log-det).

Graph cut (Iyer and Bilmes; lambda as in submodlib):
    f(A) = sum_{i in V} sum_{j in A} S_ij - lam sum_{i in A} sum_{j in A} S_ij,
    f(A + e) - f(A) = sum_i S_ie - lam (sum_{j in A} (S_je + S_ej) + S_ee).
Log-determinant, with a regulariser reg > 0 on the diagonal:
    f(A) = log det(S_AA + reg I),
    f(A + e) - f(A) = log(S_ee + reg - c_e . c_e),
c_e the row of e in the Cholesky factor of the picks so far (incremental Cholesky: one new
column per pick, O(n k^2) in all).

The naive greedy evaluates every gain at each step and keeps the largest, lowest index on ties.
The lazy greedy (Minoux) keeps stale gains as upper bounds (submodularity: gains only shrink)
and re-evaluates the best only; it makes the naive greedy's picks, up to gains that differ by
rounding alone. Both return (picks LongTensor [k] in pick order, objective [k]: f after each pick).
"""
import heapq
import math

import torch


def check_similarity(sim, k):
    if not isinstance(sim, torch.Tensor) or sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError("sim: expected a square 2-D tensor")
    if sim.numel() and not bool(torch.isfinite(sim).all()):
        raise ValueError("sim: holds non-finite values")
    n = sim.shape[0]
    if isinstance(k, bool) or int(k) != k or not 0 <= k <= n:
        raise ValueError(f"k: must be an integer in [0, {n}], got {k}")
    return int(k)


def _lazy(gains, k, fresh_gain, add):
    """Minoux's lazy greedy: gains [n] the first step's exact gains; fresh_gain(j) the gain of j
    now; add(j) records a pick. Heap of (-bound, index): equal bounds pop the lowest index."""
    heap = [(-g, j) for j, g in enumerate(gains.tolist())]
    heapq.heapify(heap)
    picks = []
    while len(picks) < k:
        _, j = heapq.heappop(heap)
        gain = fresh_gain(j)
        if not heap or (-gain, j) <= heap[0]:
            picks.append(j)
            add(j)
        else:
            heapq.heappush(heap, (-gain, j))
    return picks


def graph_cut_greedy(sim, k, lam=1.0, lazy=False):
    """Greedy graph cut on `sim` (module docstring), lam >= 0."""
    k = check_similarity(sim, k)
    if not lam >= 0:
        raise ValueError(f"lam: must be >= 0, got {lam}")
    n = sim.shape[0]
    coverage = sim.sum(0)                 # sum_i S_ie
    diagonal = sim.diagonal()
    picks, gains_taken = [], []
    if lazy:
        def fresh_gain(j):
            index = torch.tensor(picks, dtype=torch.long, device=sim.device)
            within = (sim[index, j] + sim[j, index]).sum()
            return float(coverage[j] - lam * (within + diagonal[j]))

        def add(j):
            gains_taken.append(fresh_gain(j))
            picks.append(j)

        _lazy(coverage - lam * diagonal, k, fresh_gain, add)
    else:
        inside = sim.new_zeros(n)         # sum_{j in A} (S_je + S_ej)
        selected = torch.zeros(n, dtype=torch.bool, device=sim.device)
        for _ in range(k):
            gains = (coverage - lam * (inside + diagonal)).masked_fill_(selected, -torch.inf)
            j = int(torch.argmax(gains))
            gains_taken.append(float(gains[j]))
            picks.append(j)
            selected[j] = True
            inside += sim[j] + sim[:, j]
    return _picks_and_objective(picks, gains_taken, sim)


def graph_cut_value(sim, picks, lam=1.0):
    """f(A) of graph cut for A = picks (a LongTensor)."""
    return sim[:, picks].sum() - lam * sim[picks][:, picks].sum()


def log_determinant_greedy(sim, k, reg=1.0, lazy=False):
    """Greedy log-determinant on `sim` (module docstring), reg > 0. Raises ValueError when a
    pivot S_ee + reg - |c_e|^2 of a pick is not positive (S + reg I is not positive definite)."""
    k = check_similarity(sim, k)
    if not reg > 0:
        raise ValueError(f"reg: must be > 0, got {reg}")
    n = sim.shape[0]
    factor = sim.new_zeros(n, k)   # row e: c_e (the Cholesky row of e against the picks so far)
    picks, pivots = [], []

    def take(j, pivot):
        """Record pick j with pivot S_jj + reg - |c_j|^2; its own Cholesky entry is sqrt(pivot)."""
        if not pivot > 0:
            raise ValueError(f"sim: S + reg I is not positive definite (pivot {pivot:.3g} at pick "
                             f"{len(picks) + 1}); raise reg or use a positive semi-definite similarity")
        factor[j, len(picks)] = pivot ** 0.5
        picks.append(j)
        pivots.append(pivot)

    if lazy:
        done = [0] * n  # how many Cholesky columns of each candidate's row are computed

        def residual_of(j):
            row = factor[j]
            for t in range(done[j], len(picks)):
                p = picks[t]
                row[t] = (sim[j, p] - row[:t] @ factor[p, :t]) / pivots[t] ** 0.5
            done[j] = len(picks)
            return float(sim[j, j] + reg - row[:len(picks)] @ row[:len(picks)])

        def add(j):
            take(j, residual_of(j))
            done[j] = len(picks)

        _lazy(torch.log((sim.diagonal() + reg).clamp_min(0)), k, lambda j: _log(residual_of(j)), add)
    else:
        residual = sim.diagonal() + reg  # S_ee + reg - |c_e|^2, every candidate
        selected = torch.zeros(n, dtype=torch.bool, device=sim.device)
        for _ in range(k):
            gains = torch.log(residual.clamp_min(0)).masked_fill_(selected, -torch.inf)
            j = int(torch.argmax(gains))
            selected[j] = True
            t = len(picks)
            pivot = float(residual[j])
            column = (sim[:, j] - factor[:, :t] @ factor[j, :t]) / max(pivot, 1e-300) ** 0.5
            take(j, pivot)
            column[j] = factor[j, t]
            factor[:, t] = column
            residual.sub_(column * column)
    picks_t = torch.tensor(picks, dtype=torch.long, device=sim.device)
    objective = torch.tensor(pivots, dtype=torch.float64).log().cumsum(0).to(sim.dtype)
    return picks_t, objective.to(sim.device)


def _log(value):
    return float("-inf") if not value > 0 else math.log(value)


def log_determinant_value(sim, picks, reg=1.0):
    """f(A) = log det(S_AA + reg I) for A = picks (a LongTensor)."""
    block = sim[picks][:, picks]
    return torch.linalg.slogdet(block + reg * torch.eye(len(picks), dtype=sim.dtype, device=sim.device))[1]


def log_determinant_deepcore_greedy(sim, k):
    """DeepCore's LogDeterminant gain, kept for comparison: at each step the candidate e of
    largest S_eA pinv(S_AA) S_Ae (lowest index on ties; all zero at the first step, so index 0
    first). This is the part of S_ee explained by the picks, i.e. the opposite of the
    log-determinant gain log(S_ee - S_eA S_AA^-1 S_Ae); the picks are near-duplicates of earlier
    ones. Naive greedy only. Returns (picks, objective: log det(S_AA + 1e-12 I) after each pick)."""
    k = check_similarity(sim, k)
    n = sim.shape[0]
    selected = torch.zeros(n, dtype=torch.bool, device=sim.device)
    picks = []
    for _ in range(k):
        if picks:
            index = torch.tensor(picks, dtype=torch.long, device=sim.device)
            cross = sim[:, index]  # S_eA for every e
            gains = ((cross @ torch.linalg.pinv(sim[index][:, index])) * cross).sum(1)
        else:
            gains = sim.new_zeros(n)
        j = int(torch.argmax(gains.masked_fill(selected, -torch.inf)))
        picks.append(j)
        selected[j] = True
    picks_t = torch.tensor(picks, dtype=torch.long, device=sim.device)
    objective = [log_determinant_value(sim, picks_t[:t + 1], 1e-12) for t in range(k)]
    return picks_t, torch.stack(objective).to(sim.dtype) if objective else sim.new_zeros(0)


def _picks_and_objective(picks, gains, sim):
    """(picks LongTensor, f after each pick as the running sum of the gains taken)."""
    picks_t = torch.tensor(picks, dtype=torch.long, device=sim.device)
    objective = torch.tensor(gains, dtype=torch.float64).cumsum(0).to(sim.dtype).to(sim.device)
    return picks_t, objective
