"""Symmetric KL divergence between predictive distributions, and the k-center greedy under it
(Contextual Diversity, Agarwal et al. 2020, as DeepCore ports it to classification).

For distributions p and q over C classes,
    d(p, q) = 1/2 KL(p || q) + 1/2 KL(q || p) = 1/2 sum_c (p_c - q_c)(log p_c - log q_c),
computed from log-probabilities (log_softmax of the logits), so that a class whose probability
underflows to 0 contributes 0 * finite instead of 0 * log 0.
"""
import numpy as np
import torch

_CHUNK_ELEMENTS = 2 ** 22  # rows x columns x classes held at once by symmetric_kl


def _check_log_probs(name, x):
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor of log-probabilities")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: holds non-finite values")


def symmetric_kl(log_p, log_q=None):
    """d(p_i, q_j) for every pair, [n, m] (log_q defaults to log_p). Evaluated term by term in
    row chunks (never n x m x C at once): exactly 0 on the diagonal of d(p, p), symmetric."""
    _check_log_probs("log_p", log_p)
    log_q = log_p if log_q is None else log_q
    _check_log_probs("log_q", log_q)
    if log_p.shape[1] != log_q.shape[1]:
        raise ValueError(f"log_q: has {log_q.shape[1]} classes, log_p {log_p.shape[1]}")
    p, q = log_p.exp(), log_q.exp()
    out = log_p.new_empty(len(log_p), len(log_q))
    rows = max(1, _CHUNK_ELEMENTS // max(1, log_q.numel()))
    for start in range(0, len(log_p), rows):
        stop = start + rows
        diff_p = p[start:stop, None, :] - q[None, :, :]
        diff_log = log_p[start:stop, None, :] - log_q[None, :, :]
        out[start:stop] = 0.5 * (diff_p * diff_log).sum(-1)
    return out


def kl_to_one(log_p, p, j):
    """d(p_i, p_j) for every row i against the single row j, [n]."""
    return kl_to_row(log_p, p, log_p[j], p[j])


def kl_to_row(log_p, p, log_q, q):
    """d(p_i, q) for every row i against one distribution q (log_q [C], q [C]), [n]: elementwise,
    then row sums, so a row's value has the same bits whatever rows share the tensor."""
    return 0.5 * ((p - q) * (log_p - log_q)).sum(1)


def kcenter_symmetric_kl(log_p, k, first):
    """k-center greedy under d: start from row `first`, then k - 1 times add the row whose
    smallest divergence to the rows chosen so far is largest (lowest index on ties). Returns the
    picks in order, LongTensor [k]. Memory O(n): one running minimum."""
    _check_log_probs("log_p", log_p)
    n = len(log_p)
    if not 0 <= k <= n:
        raise ValueError(f"k: must lie in [0, {n}], got {k}")
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=log_p.device)
    if not 0 <= first < n:
        raise ValueError(f"first: must lie in [0, {n}), got {first}")
    p = log_p.exp()
    min_div = torch.full((n,), torch.inf, dtype=log_p.dtype, device=log_p.device)
    picks = [int(first)]
    for _ in range(k - 1):
        min_div = torch.minimum(min_div, kl_to_one(log_p, p, picks[-1]))
        min_div[picks[-1]] = -1.0  # a centre is never picked again (divergences are >= 0)
        picks.append(int(torch.argmax(min_div)))  # first maximum: lowest index
    return torch.tensor(np.array(picks, dtype=np.int64), device=log_p.device)
