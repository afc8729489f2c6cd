"""k nearest neighbours in embedding space, and the KL divergence of a sample's prediction from
its neighbours' (Cal: contrastive active learning, Margatina et al. 2021).

Distances are squared Euclidean, ||x_i||^2 + ||x_j||^2 - 2 <x_i, x_j> (one GEMM per chunk of
rows); a row is never its own neighbour; among equal distances the lower index is nearer.
"""
import torch

_CHUNK_ELEMENTS = 2 ** 24  # rows x columns of distances held at once


def knn_indices(x, k):
    """The k rows nearest to each row (itself excluded), LongTensor [n, k], nearest first."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError("x: expected a 2-D tensor [n, D]")
    n = len(x)
    if not 0 <= k < max(n, 1):
        raise ValueError(f"k: must lie in [0, {max(n - 1, 0)}] (each row has n - 1 = {n - 1} others), got {k}")
    out = torch.empty(n, k, dtype=torch.long, device=x.device)
    if k == 0 or n == 0:
        return out
    sq = (x * x).sum(1)
    rows = max(1, _CHUNK_ELEMENTS // n)
    columns = torch.arange(n, device=x.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        d2 = (sq[start:stop, None] + sq[None, :] - 2.0 * (x[start:stop] @ x.T)).clamp_min_(0.0)
        d2[torch.arange(stop - start, device=x.device), columns[start:stop]] = torch.inf  # not itself
        out[start:stop] = smallest_lowest_index(d2, k)
    return out


def smallest_lowest_index(d, k):
    """Per row, the k columns of smallest value, lower column first among equal values, in
    increasing (value, column) order. topk finds the k-th value; the ties at that value are
    then resolved by column so that the set does not depend on topk's internal order."""
    kth = d.topk(k, dim=1, largest=False).values[:, -1:]
    below = d < kth
    at = d == kth
    need = k - below.sum(1, keepdim=True)
    chosen = below | (at & (at.cumsum(1) <= need))
    cols = chosen.nonzero()[:, 1].view(len(d), k)  # ascending column order within each row
    vals = d.gather(1, cols)
    order = vals.argsort(dim=1, stable=True)  # by value, ties stay in column order
    return cols.gather(1, order)


def neighbour_kl(log_p, neighbours, symmetric=False):
    """Cal's score of each row: the mean over its neighbours j of KL(p_j || p_i) (the paper), or
    of the symmetric 1/2 KL(p_i || p_j) + 1/2 KL(p_j || p_i) (DeepCore's code), [n]."""
    if neighbours.shape[0] != log_p.shape[0]:
        raise ValueError(f"neighbours: expected {log_p.shape[0]} rows, got {neighbours.shape[0]}")
    if neighbours.shape[1] == 0:
        raise ValueError("neighbours: need at least one neighbour per row")
    return neighbour_kl_rows(log_p, log_p[neighbours], symmetric)  # [n, k, C]: linear in n


def neighbour_kl_rows(log_p, log_nb, symmetric=False):
    """neighbour_kl from the neighbours' log-probabilities themselves, log_nb [n, k, C]."""
    log_self = log_p[:, None, :]
    if symmetric:
        div = 0.5 * ((log_self.exp() - log_nb.exp()) * (log_self - log_nb)).sum(-1)
    else:
        div = (log_nb.exp() * (log_nb - log_self)).sum(-1)
    return div.mean(1)
