"""Greedy facility location over a distance block (DESIGN.md 2.1, step 3).

    F(S) = sum_i max(0, max_{j in S} (L - D_ij))

The naive greedy adds, k times, the unselected j of largest gain
    gain_j = sum_i max(0, (L - D_ij) - m_i),   m_i = max(0, max_{j in S} (L - D_ij)),
the lowest index winning ties. The lazy greedy (Minoux) keeps stale gains as upper bounds, which
submodularity guarantees, and re-evaluates only the current best; it makes the same picks.
"""
import heapq

import torch


def _similarity(dist, L):
    L = dist.max() if L is None else torch.as_tensor(L, dtype=dist.dtype, device=dist.device)
    return (L - dist).clamp_min(0.0)


def _gains(sim, coverage):
    return (sim - coverage[:, None]).clamp_min_(0.0).sum(0)


def facility_location_greedy(dist, k, L=None, lazy=False):
    """Pick k columns of the n x n distance block `dist` greedily.

    L defaults to max_ij D_ij (the paper mode of LCMat-S). Returns (picks LongTensor [k] in pick
    order, objective [k] with F after each pick, weights [k]: how many rows have that pick as
    their nearest selected element, ties to the earlier pick).
    """
    n = dist.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k: must lie in [0, {n}], got {k}")
    sim = _similarity(dist, L)
    picks = _lazy_picks(sim, k) if lazy else _naive_picks(sim, k)
    picks = torch.tensor(picks, dtype=torch.long, device=dist.device)
    objective = sim[:, picks].cummax(dim=1).values.sum(0) if k else sim.new_zeros(0)
    return picks, objective, nearest_pick_counts(dist, picks)


def _naive_picks(sim, k):
    n = sim.shape[0]
    coverage = sim.new_zeros(n)
    selected = torch.zeros(n, dtype=torch.bool, device=sim.device)
    picks = []
    for _ in range(k):
        gains = _gains(sim, coverage).masked_fill_(selected, -1.0)
        j = int(torch.argmax(gains))  # argmax returns the first maximum: lowest index wins
        picks.append(j)
        selected[j] = True
        coverage = torch.maximum(coverage, sim[:, j])
    return picks


def _lazy_picks(sim, k):
    n = sim.shape[0]
    coverage = sim.new_zeros(n)
    # Heap of (-upper bound on gain, index): ties on the bound pop the lowest index first.
    heap = [(-float(g), j) for j, g in enumerate(_gains(sim, coverage).tolist())]
    heapq.heapify(heap)
    picks = []
    while len(picks) < k:
        _, j = heapq.heappop(heap)
        gain = float((sim[:, j] - coverage).clamp_min(0.0).sum())
        # j is the true best if its fresh gain still beats every other bound (ties: lower index).
        if not heap or (-gain, j) <= heap[0]:
            picks.append(j)
            coverage = torch.maximum(coverage, sim[:, j])
        else:
            heapq.heappush(heap, (-gain, j))
    return picks


def nearest_pick_counts(dist, picks):
    """gamma_j: the number of rows whose nearest selected element is pick j (ties: earlier pick)."""
    if len(picks) == 0:
        return dist.new_zeros(0)
    nearest = dist[:, picks].argmin(dim=1)
    return torch.bincount(nearest, minlength=len(picks)).to(dist.dtype)
