"""Greedy graph cut and log-determinant on one precomputed n x n similarity block (GraphCut's and
LogDeterminant's step per class): lcmat's backends (lazy and naive greedy) against submodlib
(GraphCutFunction, LogDeterminantFunction) and apricot (GraphCutSelection).

The functions (lcmat/reference/submodular.py):
    graph cut  f(A) = sum_{i in V, j in A} S_ij - lam sum_{i, j in A} S_ij,   lam = 1 here;
    log-det    f(A) = log det(S_AA + reg I),                                  reg = 1 here.
The peers compute the same functions under other names:
  - submodlib's GraphCutFunction(lambdaVal) is this graph cut with lam = lambdaVal (mode="dense",
    ggsijs = S); its LogDeterminantFunction(lambdaVal) is this log-det with reg = lambdaVal
    (sijs = S). On exact ties it does not take the lowest index (with a constant diagonal, e.g. the
    plain cosine similarity, every first log-det gain ties and its first pick is the last index).
  - apricot's GraphCutSelection(alpha) maximises alpha sum_{i in V, j in A} S_ij - sum_{i, j in A} S_ij,
    i.e. alpha times this graph cut with lam = 1 / alpha: the same picks with alpha = 1 / lam (its
    reported gains are alpha times lcmat's). apricot has no log-determinant.
The block is S = W K W with K = 1/2 + 1/2 cos (DeepCore's cosine similarity, positive
semi-definite) of random points in 16 dimensions and W a random positive diagonal, so that S is
non-negative and positive semi-definite (as both functions and apricot want) and the diagonal is
not constant (no exact ties, whose order the peers break differently). Before timing, every
implementation's picks must equal the reference's naive greedy on the block's values in float64
or, where float32 near-ties part them, reach the same objective (relative 1e-5); extra_info
"same_picks" counts the picks in common.

Shapes: tiny n = 200, k = 20; cifar10 n = 5,000, k = 500 (one CIFAR-10 class at 10 %). The work
recorded is the naive greedy's for both greedies (graph cut: S read once for the column sums,
then a row and a column of S per pick; log-det: the incremental Cholesky's n k^2 / 2 multiply-adds
over a float64 factor).
"""
import functools

import numpy as np
import pytest
import torch

from _common import DEVICE, backends, bench, peer
from lcmat import ops, reference

SHAPES = {"tiny": (200, 20), "cifar10": (5000, 500)}
SIZES = list(SHAPES)
LAM, REG = 1.0, 1.0
FUNCTIONS = ("graph_cut_greedy", "log_determinant_greedy")


@functools.lru_cache(maxsize=2)
def block(n):
    """S = W (1/2 + 1/2 cos) W for n random points in 16 dimensions, float32 on DEVICE, and the
    same values as a float64 numpy array for the peers."""
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(n, 16, generator=gen, dtype=torch.float64), dim=1)
    w = 0.5 + torch.rand(n, generator=gen, dtype=torch.float64)
    sim = ((0.5 + 0.5 * x @ x.T) * w[:, None] * w[None, :]).float()
    return sim.to(DEVICE), sim.double().numpy()


def param_of(fn):
    return LAM if fn == "graph_cut_greedy" else REG


@functools.lru_cache(maxsize=8)
def expected_picks(fn, n, k):
    """The reference's naive greedy on the block's values in float64 (what the compiled and
    Triton greedies accumulate in)."""
    sim, _ = block(n)
    return getattr(ops, fn)(sim.double(), k, param_of(fn), False, backend="reference")[0].cpu().numpy()


def check_picks(fn, picks, n, k, who):
    """The expected picks, or, where float32 near-ties resolved in another order part them, the
    same objective (relative 1e-5); returns how many picks agree."""
    _, sim = block(n)
    picks, expected = np.asarray(picks), expected_picks(fn, n, k)
    same = int((picks == expected).sum())
    if same < k:
        np.testing.assert_allclose(objective(fn, sim, picks), objective(fn, sim, expected), rtol=1e-5,
                                   err_msg=f"{who}: picks and objective differ from the reference's")
    return same


def objective(fn, sim, picks):
    """f(A) in float64 for A = picks."""
    picks = torch.as_tensor(np.asarray(picks), dtype=torch.long)
    S = torch.from_numpy(sim)
    if fn == "graph_cut_greedy":
        return float(reference.graph_cut_value(S, picks, LAM))
    return float(reference.log_determinant_value(S, picks, REG))


def greedy_work(fn, n, k):
    if fn == "graph_cut_greedy":
        return dict(bytes=4 * (n * n + 2 * k * n), flops=n * n + 4 * k * n)
    return dict(bytes=8 * n * k * k // 2 + 4 * k * n, flops=n * k * k)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "naive"])
@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("backend", backends())
def test_submodular_greedy(benchmark, backend, fn, lazy, size):
    n, k = SHAPES[size]
    if backend == "reference" and lazy and fn == "log_determinant_greedy" and n > 1000:
        pytest.skip("the reference's lazy log-det catches each candidate up in a Python loop: minutes")
    sim, _ = block(n)
    run = functools.partial(getattr(ops, fn), sim, k, param_of(fn), lazy, backend=backend)
    same = check_picks(fn, run()[0].cpu().numpy(), n, k, backend)
    bench(benchmark, run, impl=backend, same_picks=same, op=f"{fn} ({'lazy' if lazy else 'naive'})",
          shape=f"n={n}, k={k}", **greedy_work(fn, n, k))


def submodlib_picks(fn, sim, k, optimizer):
    submodlib = peer("submodlib")
    n = sim.shape[0]
    if fn == "graph_cut_greedy":
        f = submodlib.GraphCutFunction(n=n, mode="dense", lambdaVal=LAM, ggsijs=sim, separate_rep=False)
    else:
        f = submodlib.LogDeterminantFunction(n=n, mode="dense", lambdaVal=REG, sijs=sim)
    picks = f.maximize(budget=k, optimizer=optimizer, stopIfZeroGain=False, stopIfNegativeGain=False,
                       verbose=False, show_progress=False)
    return np.array([int(j) for j, _ in picks])


def apricot_picks(sim, k, optimizer):
    apricot = peer("apricot")
    selector = apricot.GraphCutSelection(k, metric="precomputed", alpha=1.0 / LAM, optimizer=optimizer,
                                         verbose=False)
    return np.asarray(selector.fit(sim).ranking)


PEERS = {
    ("graph_cut_greedy", "submodlib-lazy"): lambda sim, k: submodlib_picks("graph_cut_greedy", sim, k, "LazyGreedy"),
    ("graph_cut_greedy", "submodlib-naive"): lambda sim, k: submodlib_picks("graph_cut_greedy", sim, k, "NaiveGreedy"),
    ("graph_cut_greedy", "apricot-lazy"): lambda sim, k: apricot_picks(sim, k, "lazy"),
    ("graph_cut_greedy", "apricot-naive"): lambda sim, k: apricot_picks(sim, k, "naive"),
    ("log_determinant_greedy", "submodlib-lazy"):
        lambda sim, k: submodlib_picks("log_determinant_greedy", sim, k, "LazyGreedy"),
    ("log_determinant_greedy", "submodlib-naive"):
        lambda sim, k: submodlib_picks("log_determinant_greedy", sim, k, "NaiveGreedy"),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fn,impl", list(PEERS), ids=[f"{fn}-{impl}" for fn, impl in PEERS])
def test_submodular_peer(benchmark, fn, impl, size):
    n, k = SHAPES[size]
    _, sim = block(n)
    same = check_picks(fn, PEERS[fn, impl](sim, k), n, k, impl)
    bench(benchmark, lambda: PEERS[fn, impl](sim, k), impl=impl, same_picks=same,
          op=f"{fn} ({impl.split('-')[1]})", shape=f"n={n}, k={k}", **greedy_work(fn, n, k))
