"""Log-domain Sinkhorn (FDMat's optimal transport): lcmat's backends against POT and GeomLoss.

Shapes: N x C with N samples and C class prototypes, float32 cost in [0, 4] (squared distances of
unit vectors), uniform masses, reg = 0.1. Every solver runs the same number of iterations
(tol = 0): tiny 256 x 10, cifar10 50,000 x 10 (FDMat at CIFAR-10 shape), imagenet 200,000 x 1,000.

- test_sinkhorn_potentials: the solver alone (lcmat returns potentials, no plan).
- test_sinkhorn_plan: P = exp((f_i + g_j - M_ij) / reg) from the potentials.
- test_sinkhorn_end_to_end: plan from (a, b, M), what a user of `ot.sinkhorn` gets: lcmat
  (potentials, then the plan), POT `ot.sinkhorn(method="sinkhorn_log")` on numpy arrays and on
  torch tensors, and GeomLoss `geomloss.ot.solve`. GeomLoss runs a symmetric Sinkhorn with
  eps-annealing, so its iterates are not lcmat's or POT's; it reaches the same plan at
  convergence, which is what is checked (on a 2,000 x C problem of the same kind; POT too) before
  the timed runs at equal iteration counts.
"""
import functools

import numpy as np
import pytest
import torch

from _common import DEVICE, assert_close, backends, bench, peer
from lcmat import ops

REG = 0.1
SHAPES = {"tiny": (256, 10, 10), "cifar10": (50_000, 10, 20), "imagenet": (200_000, 1000, 3)}
SIZES = list(SHAPES)


@functools.lru_cache(maxsize=2)
def problem(n, m, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, 32, generator=gen), dim=1)
    p = torch.nn.functional.normalize(torch.randn(m, 32, generator=gen), dim=1)
    M = ops.reference.squared_euclidean_cost(x, p).to(DEVICE)
    a = torch.full((n,), 1.0 / n, device=DEVICE)
    b = torch.full((m,), 1.0 / m, device=DEVICE)
    return a, b, M


def stream_bytes(n, m, iters):
    """Two passes over the float32 cost per iteration."""
    return 2 * n * m * 4 * iters


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", backends())
def test_sinkhorn_potentials(benchmark, backend, size):
    n, m, iters = SHAPES[size]
    a, b, M = problem(n, m)
    f, g, _, _ = ops.sinkhorn_log(a, b, M, REG, max_iter=iters, tol=0.0, backend=backend)
    if backend != "reference":
        f_ref, g_ref, _, _ = ops.sinkhorn_log(a, b, M, REG, max_iter=iters, tol=0.0, backend="reference")
        assert_close(f, f_ref, rtol=1e-4, atol=1e-5, what="f")
        assert_close(g, g_ref, rtol=1e-4, atol=1e-5, what="g")
    bench(benchmark, lambda: ops.sinkhorn_log(a, b, M, REG, max_iter=iters, tol=0.0, backend=backend),
          bytes=stream_bytes(n, m, iters), impl=backend, op="sinkhorn_log", shape=f"{n}x{m}",
          iters=iters, exps=2 * n * m * iters)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", backends())
def test_sinkhorn_plan(benchmark, backend, size):
    n, m, iters = SHAPES[size]
    a, b, M = problem(n, m)
    f, g, _, _ = ops.sinkhorn_log(a, b, M, REG, max_iter=iters, tol=0.0)
    P = ops.sinkhorn_plan(f, g, M, REG, backend=backend)
    assert_close(P, ops.sinkhorn_plan(f, g, M, REG, backend="reference"), rtol=1e-5, atol=1e-12, what="plan")
    bench(benchmark, lambda: ops.sinkhorn_plan(f, g, M, REG, backend=backend),
          bytes=2 * n * m * 4, impl=backend, op="sinkhorn_plan", shape=f"{n}x{m}", exps=n * m)


def lcmat_plan(a, b, M, iters, backend=None, tol=0.0):
    f, g, _, _ = ops.sinkhorn_log(a, b, M, REG, max_iter=iters, tol=tol, backend=backend)
    return ops.sinkhorn_plan(f, g, M, REG, backend=backend)


def pot_plan(a, b, M, iters, on_numpy, tol=0.0):
    ot = peer("ot")
    if on_numpy:
        a, b, M = a.cpu().numpy(), b.cpu().numpy(), M.cpu().numpy()
    return ot.sinkhorn(a, b, M, REG, method="sinkhorn_log", numItermax=iters, stopThr=tol, warn=False)


def geomloss_plan(a, b, M, iters):
    got = peer("geomloss.ot")
    return got.solve(M, reg=REG, a=a, b=b, max_iter=iters).plan


PEERS = {
    "pot-numpy": lambda a, b, M, iters: pot_plan(a, b, M, iters, True),
    "pot-torch": lambda a, b, M, iters: pot_plan(a, b, M, iters, False),
    "geomloss": geomloss_plan,
}


@functools.lru_cache(maxsize=None)
def check_peer(name, m):
    """The peer's plan at convergence equals lcmat's, on a 2,000 x m problem."""
    a, b, M = problem(2000, m, seed=1)
    expected = lcmat_plan(a, b, M, 5000, tol=1e-6)
    actual = torch.as_tensor(np.asarray(PEERS[name](a, b, M, 1000)) if name == "pot-numpy"
                             else PEERS[name](a, b, M, 1000))
    scale = float(expected.max())
    assert_close(actual, expected, rtol=0.0, atol=0.02 * scale, what=f"{name} plan at convergence")
    return True


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", backends() + list(PEERS))
def test_sinkhorn_end_to_end(benchmark, impl, size):
    n, m, iters = SHAPES[size]
    a, b, M = problem(n, m)
    if impl in PEERS:
        peer("geomloss" if impl == "geomloss" else "ot")
        check_peer(impl, m)
        fn = functools.partial(PEERS[impl], a, b, M, iters)
    else:
        P = lcmat_plan(a, b, M, iters, impl)
        assert_close(P, lcmat_plan(a, b, M, iters, "reference"), rtol=1e-3, atol=1e-9, what="plan")
        fn = functools.partial(lcmat_plan, a, b, M, iters, impl)
    bench(benchmark, fn, bytes=stream_bytes(n, m, iters) + 2 * n * m * 4, impl=impl,
          op="sinkhorn end to end", shape=f"{n}x{m}", iters=iters)
