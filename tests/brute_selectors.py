"""Brute-force selector definitions for the selector tests (docs/design.md), float64 numpy.

Everything is materialised from the definitions: per-sample gradients and Hessian diagonals as
n x C (D + 1) matrices, distances by broadcasting, greedy gains evaluated for every candidate,
the FDMat plan solved by POT. Nothing here uses an identity that the kernels rely on.
"""
import numpy as np


# ---------------------------------------------------------------------------------------------
# Synthetic problems

def make_problem(counts, D=5, seed=0, logit_scale=2.0, shuffle=True, nonneg=False):
    """Embeddings [N, D], logits [N, C], labels [N] (float64 / int64 numpy) with counts[c]
    samples of class c, classes interleaved in a random order when `shuffle`."""
    rng = np.random.default_rng(seed)
    C = len(counts)
    labels = np.repeat(np.arange(C), counts)
    if shuffle:
        labels = labels[rng.permutation(len(labels))]
    N = len(labels)
    H = rng.normal(size=(N, D))
    if nonneg:
        H = np.maximum(H, 0.0) + 0.05 * rng.random((N, D))
    W = rng.normal(size=(C, D))
    Z = logit_scale * (H @ W.T / np.sqrt(D) + 0.5 * rng.normal(size=(N, C)))
    return H, Z, labels


def class_order_preserving_shuffle(labels, seed):
    """perm with perm[new position] = old position: every sample moves, but the samples of
    each class keep their relative order (so within-class order effects are unchanged).
    The shuffled dataset is X[perm]; a pick p in it is the original sample perm[p]."""
    rng = np.random.default_rng(seed)
    new_labels = labels[rng.permutation(len(labels))]
    perm = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        perm[np.flatnonzero(new_labels == c)] = np.flatnonzero(labels == c)
    return perm


def budgets(labels, fraction):
    """k_c = round(fraction * n_c), Python's round (half to even)."""
    return [round(fraction * int(n)) for n in np.bincount(labels)]


# ---------------------------------------------------------------------------------------------
# Last layer, materialised

def softmax(Z):
    Z = Z - Z.max(1, keepdims=True)
    p = np.exp(Z)
    return p / p.sum(1, keepdims=True)


def errors(Z, y):
    """e_i = softmax(z_i) - onehot(y_i), [n, C]."""
    e = softmax(Z)
    e[np.arange(len(y)), y] -= 1.0
    return e


def gradients(H, Z, y, scale=None):
    """g_i = s_i [e_i ; vec(e_i h_i^T)], [n, C (D + 1)] (bias first, weight row-major)."""
    e = errors(Z, y)
    g = np.concatenate([e, (e[:, :, None] * H[:, None, :]).reshape(len(y), -1)], axis=1)
    return g if scale is None else g * scale[:, None]


def hessian_diagonals(H, Z, y, scale=None):
    """d_i = s_i [q_i ; vec(q_i (h_i * h_i)^T)] with q = p (1 - p), [n, C (D + 1)]."""
    p = softmax(Z)
    q = p * (1.0 - p)
    d = np.concatenate([q, (q[:, :, None] * (H * H)[:, None, :]).reshape(len(y), -1)], axis=1)
    return d if scale is None else d * scale[:, None]


def top_variance_coords(d, K):
    """The K coordinates of largest population variance over the rows, lowest index on ties."""
    var = d.var(axis=0)
    return np.argsort(-var, kind="stable")[:K]


def compat_scale(n, batch_size):
    """s_i = 1 / b_i: the n class samples, in dataset order, cut into batches of batch_size."""
    sizes = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        sizes += [b] * b
    return 1.0 / np.array(sizes, dtype=np.float64)


def lcmat_distance(H, Z, y, rho, K, scale=None):
    """D_ij = ||g_i - g_j||_2 + rho ||d_i[K] - d_j[K]||_1, every term materialised."""
    g = gradients(H, Z, y, scale)
    D = np.sqrt(((g[:, None, :] - g[None, :, :]) ** 2).sum(2))
    if rho != 0 and K > 0:
        d = hessian_diagonals(H, Z, y, scale)
        d = d[:, top_variance_coords(d, K)]
        D = D + rho * np.abs(d[:, None, :] - d[None, :, :]).sum(2)
    return D


# ---------------------------------------------------------------------------------------------
# Facility location

def facility_location(D, k, L):
    """Naive greedy on F(S) = sum_i max(0, max_{j in S} (L - D_ij)), lowest index on ties.

    Returns (picks in order, smallest relative gap between a step's winning gain and the best
    other gain: a near-tie makes the picks depend on rounding, and tests check it is not one)."""
    sim = np.maximum(L - D, 0.0)
    cover = np.zeros(len(D))
    picks, gap = [], np.inf
    for _ in range(k):
        gains = np.array([-np.inf if j in picks else np.maximum(sim[:, j] - cover, 0.0).sum()
                          for j in range(len(D))])
        j = int(np.argmax(gains))  # first maximum
        others = np.delete(gains, j)
        if np.isfinite(others).any():
            gap = min(gap, (gains[j] - others.max()) / max(abs(gains[j]), 1e-300))
        picks.append(j)
        cover = np.maximum(cover, sim[:, j])
    return picks, gap


def cluster_sizes(D, picks):
    """gamma_j: how many rows have pick j as their nearest selected element (earlier pick on ties)."""
    nearest = np.argmin(D[:, picks], axis=1)
    return np.bincount(nearest, minlength=len(picks)).astype(np.float64)


def lcmat_select(H, Z, y, fraction, rho=0.01, K=100, mode="paper", batch_size=128):
    """LCMat-S from its definition, per class: (sorted indices, weights aligned, min gap)."""
    indices, weights, gap = [], [], np.inf
    for c, k in enumerate(budgets(y, fraction)):
        members = np.flatnonzero(y == c)
        scale = compat_scale(len(members), batch_size) if mode == "compat" else None
        D = lcmat_distance(H[members], Z[members], y[members], rho, K, scale)
        L = D.max() if mode == "paper" else 10.0
        picks, g = facility_location(D, k, L)
        gap = min(gap, g)
        indices += list(members[picks])
        weights += list(cluster_sizes(D, picks))
    order = np.argsort(indices)
    return np.array(indices)[order], np.array(weights)[order], gap


# ---------------------------------------------------------------------------------------------
# Herding, k-Center

def herding(x, k):
    """Greedy argmin_i || mu - mean(S + {i}) ||, lowest index on ties; picks in order."""
    mu = x.mean(0)
    picks = []
    for _ in range(k):
        best, best_dist = None, np.inf
        for i in range(len(x)):
            if i in picks:
                continue
            dist = np.linalg.norm(mu - x[picks + [i]].mean(0))
            if dist < best_dist:
                best, best_dist = i, dist
        picks.append(best)
    return picks


def farthest_point(x, k, first):
    """Farthest-point traversal from `first`: add argmax_i min_{j in S} ||x_i - x_j||."""
    picks = [first]
    while len(picks) < k:
        d = np.min(np.linalg.norm(x[:, None, :] - x[None, picks, :], axis=2), axis=1)
        d[picks] = -1.0
        picks.append(int(np.argmax(d)))
    return picks


def covering_radius(x, subset):
    """max over the rows of the distance to the nearest element of `subset`."""
    return np.linalg.norm(x[:, None, :] - x[None, subset, :], axis=2).min(1).max()


# ---------------------------------------------------------------------------------------------
# FDMat, with POT's log-domain Sinkhorn

def fdmat_transform(X, beta=0.5):
    """(x + 1e-6)^beta, centred by the global mean, divided by the transformed feature's norm."""
    x = (X + 1e-6) ** beta
    return (x - x.mean(0)) / np.linalg.norm(x, axis=1, keepdims=True)


def fdmat_scores(X, y, lam=10.0, beta=0.5):
    """s_i = sum_c (P_ic M_ic)^2 with P the entropic plan (reg 1/lam) between the N samples
    (mass 1) and the C prototypes (mass n_c), solved by POT on masses divided by N."""
    import ot
    x = fdmat_transform(X, beta)
    C = int(y.max()) + 1
    mu = np.stack([x[y == c].mean(0) for c in range(C)])
    M = ((x[:, None, :] - mu[None, :, :]) ** 2).sum(2)
    N = len(y)
    a, b = np.full(N, 1.0 / N), np.bincount(y, minlength=C) / N
    P = N * ot.bregman.sinkhorn_log(a, b, M, 1.0 / lam, numItermax=20000, stopThr=1e-14, warn=False)
    return ((P * M) ** 2).sum(1)


# ---------------------------------------------------------------------------------------------
# Checking a selector's output against the facility-location definition

def greedy_order(D, chosen, L, rtol):
    """A pick order in which the set `chosen` is what the naive greedy picks, up to gains within
    `rtol` of the step's best (mathematical ties, e.g. two samples that only cover each other,
    come out of floating point in either order); None when no such order exists.

    Without near-ties this is exactly the definition: each step's unique best must be chosen."""
    sim = np.maximum(L - D, 0.0)
    chosen = [int(j) for j in chosen]

    def search(picks, cover):
        if len(picks) == len(chosen):
            return picks
        gains = np.array([-np.inf if j in picks else np.maximum(sim[:, j] - cover, 0.0).sum()
                          for j in range(len(D))])
        best = gains.max()
        for j in chosen:
            if j not in picks and gains[j] >= best - rtol * abs(best):
                found = search(picks + [j], np.maximum(cover, sim[:, j]))
                if found is not None:
                    return found
        return None

    return search([], np.zeros(len(D)))


def check_lcmat(cs_indices, cs_weights, H, Z, y, fraction, rho=0.01, K=100, mode="paper",
                batch_size=128, rtol=1e-9):
    """Assert that a coreset (sorted indices, aligned weights or None) is LCMat-S's by the
    definition, class by class; returns the brute-force strict picks for messages."""
    indices = np.asarray(cs_indices)
    for c, k in enumerate(budgets(y, fraction)):
        members = np.flatnonzero(y == c)
        scale = compat_scale(len(members), batch_size) if mode == "compat" else None
        D = lcmat_distance(H[members], Z[members], y[members], rho, K, scale)
        L = D.max() if mode == "paper" else 10.0
        mine = indices[y[indices] == c]
        local = np.searchsorted(members, mine)
        assert len(mine) == k, f"class {c}: {len(mine)} picks, budget {k}"
        order = greedy_order(D, local, L, rtol)
        strict = sorted(members[facility_location(D, k, L)[0]])
        assert order is not None, (f"class {c}: picks {list(mine)} are not the greedy facility-location "
                                   f"picks; the definition picks {strict}")
        if cs_weights is not None:
            gamma = cluster_sizes(D, order)
            expected = gamma[np.argsort(np.array(order))]  # aligned with sorted local positions
            got = np.asarray(cs_weights)[y[indices] == c]
            np.testing.assert_array_equal(got, expected, err_msg=f"class {c}: weights != cluster sizes")
