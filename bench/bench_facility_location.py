"""Greedy facility location on one precomputed n x n distance block (LCMat-S's step per class):
lcmat's backends (lazy and naive greedy) against apricot and submodlib.

F(S) = sum_i max_{j in S} S_ij with S_ij = L - D_ij, L = max D (lcmat/reference/facility_location.py).
The peers get the similarity matrix S (apricot: metric="precomputed"; submodlib: mode="dense"
with a precomputed sim_kernel) and k; before timing, their picks must equal lcmat's naive-greedy
picks or, where float32 near-ties summed in another order part them, reach the same objective
(relative 1e-5); extra_info "same_picks" counts the picks in common.

Shapes: tiny n = 200, k = 20; cifar10 n = 5,000, k = 500 (one CIFAR-10 class at 10 %);
imagenet n = 1,281, k = 128 (one ImageNet-1k class at 10 %).
"""
import functools

import numpy as np
import pytest
import torch

from _common import DEVICE, backends, bench, peer
from lcmat import ops

SHAPES = {"tiny": (200, 20), "cifar10": (5000, 500), "imagenet": (1281, 128)}
SIZES = list(SHAPES)


@functools.lru_cache(maxsize=2)
def block(n):
    """Distances of n random points in 16 dimensions, float32, and their similarity L - D."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=gen, dtype=torch.float64)
    dist = torch.cdist(x, x).float()
    dist.fill_diagonal_(0.0)
    sim = (dist.max() - dist).numpy()
    return dist.to(DEVICE), sim


@functools.lru_cache(maxsize=4)
def expected_picks(n, k):
    dist, _ = block(n)
    return ops.facility_location_greedy(dist, k, lazy=False, backend="reference")[0].cpu().numpy()


def objective(sim, picks):
    """F(S) = sum_i max_{j in S} S_ij in float64."""
    return float(sim[:, picks].astype(np.float64).max(axis=1).sum())


def greedy_work(n, k, lazy):
    """The naive greedy reads the n x n block k times; the lazy one about once plus a few
    columns per step (recorded as one read: a lower bound)."""
    reads = n * n if lazy else k * n * n
    return dict(bytes=4 * reads, flops=2 * reads)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "naive"])
@pytest.mark.parametrize("backend", backends())
def test_facility_location_greedy(benchmark, backend, lazy, size):
    n, k = SHAPES[size]
    dist, _ = block(n)
    picks = ops.facility_location_greedy(dist, k, lazy=lazy, backend=backend)[0].cpu().numpy()
    np.testing.assert_array_equal(picks, expected_picks(n, k))
    bench(benchmark, lambda: ops.facility_location_greedy(dist, k, lazy=lazy, backend=backend),
          impl=backend, op=f"facility_location_greedy ({'lazy' if lazy else 'naive'})",
          shape=f"n={n}, k={k}", **greedy_work(n, k, lazy))


def apricot_picks(sim, k, optimizer):
    apricot = peer("apricot")
    selector = apricot.FacilityLocationSelection(k, metric="precomputed", optimizer=optimizer,
                                                 verbose=False)
    return np.asarray(selector.fit(sim).ranking)


def submodlib_picks(sim, k, optimizer):
    submodlib = peer("submodlib")
    fl = submodlib.FacilityLocationFunction(n=sim.shape[0], mode="dense", sijs=sim, separate_rep=False)
    picks = fl.maximize(budget=k, optimizer=optimizer, stopIfZeroGain=False,
                        stopIfNegativeGain=False, verbose=False, show_progress=False)
    return np.array([int(j) for j, _ in picks])


PEERS = {
    "apricot-lazy": lambda sim, k: apricot_picks(sim, k, "lazy"),
    "apricot-naive": lambda sim, k: apricot_picks(sim, k, "naive"),
    "submodlib-lazy": lambda sim, k: submodlib_picks(sim, k, "LazyGreedy"),
    "submodlib-naive": lambda sim, k: submodlib_picks(sim, k, "NaiveGreedy"),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", list(PEERS))
def test_facility_location_peer(benchmark, impl, size):
    n, k = SHAPES[size]
    _, sim = block(n)
    picks, expected = PEERS[impl](sim, k), expected_picks(n, k)
    same = int((picks == expected).sum())
    if same < k:  # float32 near-ties summed in another order: then the same objective
        np.testing.assert_allclose(objective(sim, picks), objective(sim, expected), rtol=1e-5,
                                   err_msg=f"{impl}: picks and objective differ from lcmat's")
    bench(benchmark, lambda: PEERS[impl](sim, k), impl=impl, same_picks=same,
          op=f"facility_location_greedy ({impl.split('-')[1]})", shape=f"n={n}, k={k}",
          **greedy_work(n, k, impl.endswith("lazy")))
