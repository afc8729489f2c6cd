"""Coverage-centric selection (the idea of CCS, Zheng et al., ICLR 2023): keep every level of
difficulty represented instead of only the easiest or the hardest samples.

Within a group (a class, or the whole set) with difficulty scores (higher = harder):
1. drop the hardest `prune_hard` fraction (mislabelled and ambiguous samples), never so many
   that fewer than k samples remain;
2. cut the remaining score range into `num_strata` strata of equal width;
3. share the budget k over the strata, smallest stratum first: each gets
   min(its size, floor(budget left / strata left)), so small strata are taken whole and the
   rest is spread evenly;
4. the selector's own criterion then picks inside each stratum (or, for the facility location
   with quotas=True, over the whole group with each stratum held to its budget).
"""
import math

import numpy as np


def prune_hardest(scores, k, prune_hard):
    """Positions (ascending) that survive dropping the hardest `prune_hard` fraction,
    keeping at least k. Ties at the cut drop the higher position first."""
    n = len(scores)
    drop = min(int(math.floor(prune_hard * n)), n - k)
    order = np.lexsort((-np.arange(n), -np.asarray(scores)))  # hardest first, later index first
    return np.sort(order[drop:]) if drop > 0 else np.arange(n)


def strata_of(scores, num_strata):
    """Stratum id in [0, num_strata) of each score: equal-width bins over [min, max]."""
    scores = np.asarray(scores, dtype=np.float64)
    lo, hi = scores.min(), scores.max()
    if hi <= lo:
        return np.zeros(len(scores), dtype=np.int64)
    ids = np.floor((scores - lo) / (hi - lo) * num_strata).astype(np.int64)
    return np.minimum(ids, num_strata - 1)


def stratum_budgets(sizes, k):
    """Share k over strata of the given sizes, smallest first (ties: lower stratum first)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    budgets = np.zeros(len(sizes), dtype=np.int64)
    left = k
    order = np.argsort(sizes, kind="stable")
    for done, s in enumerate(order):
        budgets[s] = min(sizes[s], left // (len(order) - done))
        left -= budgets[s]
    return budgets


def coverage_strata(scores, k, num_strata=50, prune_hard=0.1):
    """(kept positions, stratum of each kept position, budget of each stratum) for one group;
    strata are numbered 0.. over the non-empty ones, and the budgets sum to k."""
    kept = prune_hardest(scores, k, prune_hard)
    ids = strata_of(np.asarray(scores)[kept], num_strata)
    present, ids = np.unique(ids, return_inverse=True)  # renumber the non-empty strata 0..
    budgets = stratum_budgets(np.bincount(ids, minlength=len(present)), k)
    return kept, ids.astype(np.int64), budgets


def coverage_groups(scores, k, num_strata=50, prune_hard=0.1):
    """[(positions, k_s)] for one group: the non-empty strata with their budgets (k_s > 0)."""
    if k <= 0:
        return []
    kept, ids, budgets = coverage_strata(scores, k, num_strata, prune_hard)
    return [(kept[ids == s], int(b)) for s, b in enumerate(budgets) if b > 0]
