"""Brute-force definitions for tests: materialised, slow and obvious, written from docs/design.md.

Nothing here uses an identity the kernels rely on. Per-sample gradients and Hessian diagonals
come from autograd over the flattened last-layer parameters theta = [bias (C); weight (C x D)
row-major]; the greedy evaluates F(S) from its definition; L1 distances broadcast n x m x K.
"""
from fractions import Fraction

import numpy as np
import torch


# ---------------------------------------------------------------------------------------------
# Data

def generator(seed):
    return torch.Generator().manual_seed(int(seed))


def random_class(n, C, D, seed, dtype=torch.float64, logit_scale=3.0):
    """Embeddings [n, D], logits [n, C], labels [n] and a positive scale [n] for one class."""
    gen = generator(seed)
    embeddings = torch.randn(n, D, generator=gen, dtype=torch.float64).to(dtype)
    logits = (logit_scale * torch.randn(n, C, generator=gen, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, C, (n,), generator=gen)
    scale = (0.25 + torch.rand(n, generator=gen, dtype=torch.float64)).to(dtype)
    return embeddings, logits, labels, scale


# ---------------------------------------------------------------------------------------------
# Last layer, materialised by autograd

def _sample_loss(theta, h, z, onehot, s):
    """s * CE(z + W h + b, y) as a function of theta = [b; vec(W)], evaluated at theta = 0.

    At theta = 0 the logits equal z, and derivatives with respect to (b, W) depend only on the
    logits and h, so this gives the last layer's per-sample gradient and Hessian at logits z.
    """
    C = z.shape[0]
    bias, weight = theta[:C], theta[C:].reshape(C, h.shape[0])
    logits = z + weight @ h + bias
    return -s * (onehot * torch.log_softmax(logits, dim=0)).sum()


def _per_sample(fn, embeddings, logits, labels, scale):
    n, C = logits.shape
    D = embeddings.shape[1]
    dtype = torch.float64
    h, z = embeddings.to(dtype), logits.to(dtype)
    onehot = torch.nn.functional.one_hot(labels, C).to(dtype)
    s = torch.ones(n, dtype=dtype) if scale is None else scale.to(dtype)
    theta = torch.zeros(C * (D + 1), dtype=dtype)
    return torch.func.vmap(fn, in_dims=(None, 0, 0, 0, 0))(theta, h, z, onehot, s)


def per_sample_gradients(embeddings, logits, labels, scale=None):
    """g_i = d/dtheta [s_i CE_i], [n, C (D + 1)] in float64, by torch.func.grad."""
    return _per_sample(torch.func.grad(_sample_loss), embeddings, logits, labels, scale)


def per_sample_hessian_diagonals(embeddings, logits, labels, scale=None):
    """d_i = diag of d^2/dtheta^2 [s_i CE_i], [n, C (D + 1)] in float64, from the full Hessian."""
    hessians = _per_sample(torch.func.hessian(_sample_loss), embeddings, logits, labels, scale)
    return torch.diagonal(hessians, dim1=-2, dim2=-1)


def population_variance(d):
    """Variance over rows of every column, divisor n, computed so that mathematical ties stay
    bitwise ties: each column is reduced by the same elementwise sequence of row operations,
    after subtracting row 0 (so identical rows give exactly zero)."""
    x = d - d[0]
    total = torch.zeros_like(x[0])
    for row in x:
        total = total + row
    mean = total / x.shape[0]
    total = torch.zeros_like(x[0])
    for row in x:
        total = total + (row - mean) ** 2
    return total / x.shape[0]


def descending_order(values):
    """Indices by decreasing value, lowest index first among equal values."""
    vals = values.tolist()
    return sorted(range(len(vals)), key=lambda j: (-vals[j], j))


# ---------------------------------------------------------------------------------------------
# Distances

def pairwise_euclidean(x, y=None):
    """||x_i - y_j||_2 by broadcasting, [n, m]."""
    y = x if y is None else y
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1).sqrt()


def pairwise_squared_euclidean(x, y):
    """||x_i - y_j||^2 by broadcasting, [n, m]."""
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def pairwise_l1(a, b=None):
    """||a_i - b_j||_1 by broadcasting the full n x m x K tensor."""
    b = a if b is None else b
    return (a[:, None, :] - b[None, :, :]).abs().sum(-1)


def gram_distance_tolerance(distance, sq_norms, rel=1e-12):
    """Allowed error of a distance computed from a Gram matrix: the squared distance may be off
    by rel (||g_i||^2 + ||g_j||^2) (cancellation in sq_i + sq_j - 2 <g_i, g_j>), so the distance
    by min(sqrt(t), t / distance) with t that squared-distance error."""
    t = rel * (sq_norms[:, None] + sq_norms[None, :])
    return torch.minimum(t.sqrt(), t / distance.clamp_min(1e-300))


# ---------------------------------------------------------------------------------------------
# Facility location, from F(S) = sum_i max(0, max_{j in S} (L - D_ij))
#
# Evaluated in exact rational arithmetic on the given float values (and float L): mathematically
# equal objectives compare equal, so "lowest index wins ties" is the definition's, not rounding's.

def exact_rows(dist):
    """The distance block as a list of rows of Fractions (exact copies of the floats)."""
    rows = dist.tolist() if isinstance(dist, torch.Tensor) else dist
    return [[v if isinstance(v, Fraction) else Fraction(v) for v in row] for row in rows]


def default_L(dist):
    """L = max_ij D_ij (0 for an empty block), a float."""
    rows = dist.tolist() if isinstance(dist, torch.Tensor) else dist
    return float(max((v for row in rows for v in row), default=0.0))


def facility_value(dist, subset, L):
    """F(S) exactly, as a Fraction; `dist` a tensor, a list of float rows or exact_rows."""
    rows = exact_rows(dist)
    L = Fraction(L)
    total = Fraction(0)
    for row in rows:
        best = Fraction(0)
        for j in subset:
            best = max(best, L - row[j])
        total += best
    return total


def greedy_facility_location(dist, k, L=None):
    """Naive greedy: k times add the unselected j maximising F(S + j), lowest index on ties.
    Returns (picks, objective after each pick as floats)."""
    L = default_L(dist) if L is None else float(L)
    rows = exact_rows(dist)
    picks, objective = [], []
    for _ in range(k):
        best_j, best_value = None, None
        for j in range(len(rows)):
            if j in picks:
                continue
            value = facility_value(rows, picks + [j], L)
            if best_value is None or value > best_value:
                best_j, best_value = j, value
        picks.append(best_j)
        objective.append(float(best_value))
    return picks, objective


def nearest_pick_counts(dist, picks):
    """For every row, its nearest pick (the earlier pick on ties); how many rows each pick has."""
    rows = dist.tolist()
    counts = [0] * len(picks)
    for row in rows:
        best = None
        for position, j in enumerate(picks):
            if best is None or row[j] < row[picks[best]]:
                best = position
        if best is not None:
            counts[best] += 1
    return counts


# ---------------------------------------------------------------------------------------------
# Entropic OT through POT

def pot_plan(a, b, M, reg, stop=1e-14, max_iter=20000, method="sinkhorn_log"):
    """The entropic plan for masses a, b of equal total t: POT solves the normalised problem
    (a / t, b / t) and the plan scales by t (the constraints are linear and the entropic
    solution P = diag(u) K diag(v) is unchanged up to that factor). a and b are normalised each
    by its own sum, so that rounding in the totals (float32 inputs) cannot make POT's problem
    infeasible. Returns (P, f, g) as float64 numpy arrays; f, g = reg log u, reg log v are the
    potentials of the normalised problem (equal to ours up to an additive constant)."""
    import ot

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    M = np.asarray(M, dtype=np.float64)
    t = a.sum()
    a, b = a / t, b / b.sum()
    if method == "sinkhorn_log":
        plan, log = ot.bregman.sinkhorn_log(a, b, M, reg, numItermax=max_iter, stopThr=stop,
                                            log=True, warn=False)
        f, g = reg * log["log_u"], reg * log["log_v"]
    else:
        plan, log = ot.sinkhorn(a, b, M, reg, numItermax=max_iter, stopThr=stop, log=True,
                                warn=False)
        f, g = reg * np.log(log["u"]), reg * np.log(log["v"])
    marginal_error = np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()
    assert marginal_error < 1e-11, f"POT did not converge: marginal error {marginal_error}"
    return t * plan, f, g
