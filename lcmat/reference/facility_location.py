"""Greedy facility location over a distance block (docs/design.md, "Facility location").

    F(S) = sum_i max(0, max_{j in S} (L - D_ij))

The naive greedy adds, k times, the unselected j of largest gain
    gain_j = sum_i max(0, (L - D_ij) - m_i),   m_i = max(0, max_{j in S} (L - D_ij)),
the lowest index winning ties. The lazy greedy (Minoux) keeps stale gains as upper bounds, which
submodularity guarantees, and re-evaluates only the current best; it makes the same picks.
"""
import heapq
import math

import torch


def check_distance_block(dist, L=None):
    """Refuse a block the greedy cannot rank: NaN or Inf distances (a NaN gain never wins a
    comparison, so a greedy would loop or return arbitrary picks), or gains sum_i S_ij that
    overflow the dtype (every gain infinite: a tie broken by index); and a block that is not
    square (the greedy's candidates are the points it covers)."""
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist: expected a square n x n distance block, got shape {tuple(dist.shape)}")
    if dist.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(dist))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("dist: the distance block contains NaN or Inf")
    if L is not None and not math.isfinite(float(L)):
        raise ValueError(f"L: must be finite, got {L!r}")
    top_similarity = (hi if L is None else float(L)) - lo
    if top_similarity * dist.shape[0] >= torch.finfo(dist.dtype).max:
        raise FloatingPointError(f"dist: the greedy's gains (up to {dist.shape[0]} x {top_similarity:.3g}) overflow "
                                 f"{dist.dtype}; divide the distances (and L) by a common factor, which leaves "
                                 f"the picks unchanged, or use float64")


def similarity_columns(dist, L):
    """S^T with S_ij = max(0, L - D_ij): row j holds column j of S, contiguous."""
    check_distance_block(dist, L)
    if L is None:
        L = dist.max() if dist.numel() else 0.0
    L = torch.as_tensor(L, dtype=dist.dtype, device=dist.device)
    return (L - dist.T).clamp_min(0.0).contiguous()


def _gains(sim_t, coverage, cols=slice(None)):
    """gain_j = sum_i max(0, S_ij - m_i) for the columns `cols`. Naive and lazy greedy both call
    this, so equal gains round equally and ties break the same way."""
    return (sim_t[cols] - coverage).clamp_min_(0.0).sum(-1)


def facility_location_greedy(dist, k, L=None, lazy=False):
    """Pick k columns of the n x n distance block `dist` greedily.

    L defaults to max_ij D_ij (the paper mode of LCMat-S). Returns (picks LongTensor [k] in pick
    order, objective [k] with F after each pick, weights [k]: how many rows have that pick as
    their nearest selected element, ties to the earlier pick).
    """
    n = dist.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k: must lie in [0, {n}], got {k}")
    sim_t = similarity_columns(dist, L)
    picks = lazy_greedy_picks(sim_t, [0] * n, [k]) if lazy else _naive_picks(sim_t, k)
    return greedy_result(dist, sim_t, picks)


def facility_location_greedy_batch(dists, ks, L=None, lazy=False):
    """The greedy of `facility_location_greedy` on many blocks in one call (one per class):
    block b gets ks[b] picks; L (None: each block's own max D) applies to every block. Returns
    one (picks, objective, weights) per block, in order."""
    dists, ks = check_greedy_batch(dists, ks)
    return [facility_location_greedy(d, k, L, lazy) for d, k in zip(dists, ks)]


def check_greedy_batch(dists, ks):
    """(list of blocks, list of int budgets), or ValueError naming the argument."""
    dists, ks = list(dists), list(ks)
    if len(dists) != len(ks):
        raise ValueError(f"ks: expected one budget per block ({len(dists)}), got {len(ks)}")
    for b, (d, k) in enumerate(zip(dists, ks)):
        if not isinstance(d, torch.Tensor) or d.dim() != 2:
            raise ValueError(f"dists: block {b} must be a 2-D tensor")
        if (d.dtype, d.device) != (dists[0].dtype, dists[0].device):
            raise ValueError(f"dists: block {b} is {d.dtype} on {d.device}, block 0 {dists[0].dtype} on "
                             f"{dists[0].device}")
        if int(k) != k or not 0 <= k <= min(d.shape):
            raise ValueError(f"ks: block {b} has shape {tuple(d.shape)}, budget {k}")
    return dists, [int(k) for k in ks]


def greedy_result(dist, sim_t, picks):
    """(picks LongTensor, objective after each pick, nearest-pick counts)."""
    picks = torch.tensor(picks, dtype=torch.long, device=dist.device)
    objective = sim_t[picks].cummax(dim=0).values.sum(1) if len(picks) else sim_t.new_zeros(0)
    return picks, objective, nearest_pick_counts(dist, picks)


def _naive_picks(sim_t, k):
    n = sim_t.shape[0]
    coverage = sim_t.new_zeros(n)
    selected = torch.zeros(n, dtype=torch.bool, device=sim_t.device)
    picks = []
    for _ in range(k):
        gains = _gains(sim_t, coverage).masked_fill_(selected, -1.0)
        j = int(torch.argmax(gains))  # argmax returns the first maximum: lowest index wins
        picks.append(j)
        selected[j] = True
        coverage = torch.maximum(coverage, sim_t[j])
    return picks


def lazy_greedy_picks(sim_t, groups, quotas):
    """Lazy greedy where column j may be picked while its group groups[j] has fewer than
    quotas[groups[j]] picks (the plain greedy: one group, quota k)."""
    n = sim_t.shape[0]
    coverage = sim_t.new_zeros(n)
    left = list(quotas)
    # Heap of (-upper bound on gain, index): ties on the bound pop the lowest index first.
    heap = [(-float(g), j) for j, g in enumerate(_gains(sim_t, coverage).tolist()) if left[groups[j]] > 0]
    heapq.heapify(heap)
    picks, k = [], sum(quotas)
    while len(picks) < k:
        _, j = heapq.heappop(heap)
        if left[groups[j]] == 0:  # its group is full: never eligible again
            continue
        gain = float(_gains(sim_t, coverage, slice(j, j + 1))[0])
        # j is the true best if its fresh gain still beats every other bound (ties: lower index).
        if not heap or (-gain, j) <= heap[0]:
            picks.append(j)
            left[groups[j]] -= 1
            coverage = torch.maximum(coverage, sim_t[j])
        else:
            heapq.heappush(heap, (-gain, j))
    return picks


def nearest_pick_counts(dist, picks):
    """gamma_j: the number of rows whose nearest selected element is pick j (ties: earlier pick)."""
    if len(picks) == 0:
        return dist.new_zeros(0)
    nearest = dist[:, picks].argmin(dim=1)
    return torch.bincount(nearest, minlength=len(picks)).to(dist.dtype)
