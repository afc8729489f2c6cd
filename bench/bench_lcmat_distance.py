"""LCMat-S's per-class distance block and the whole per-class selection.

- test_gradient_distance, test_pairwise_l1, test_lcmat_distance: the kernels, per backend, on one
  class: tiny n = 128 (C = 10, D = 64, K = 16); cifar10 n = 5,000 (C = 10, D = 512, K = 100);
  imagenet n = 1,281 (C = 1,000, D = 512, K = 100).
- test_lcmat_select_block: one class end to end (factors, top-variance coordinates, distance
  block, lazy greedy) against the released research approach: per-sample gradients and Hessian
  diagonals materialised (n x C (D + 1) each), the gradient distances by torch.cdist, the
  Hessian term as an n x n x K broadcast, and a naive greedy. The research approach runs at the
  largest n whose n x n x K float32 temporary stays under 2 GB on this shared machine: n = 2,000
  at CIFAR-10's C, D, K (at n = 5,000 it would need 10 GB). The distance blocks must agree and the
  research picks must reach lcmat's objective before timing.
"""
import functools

import pytest
import torch

from _common import DEVICE, assert_close, backends, bench
from lcmat import algorithms, ops

SHAPES = {"tiny": (128, 10, 64, 16), "cifar10": (5000, 10, 512, 100), "imagenet": (1281, 1000, 512, 100)}
SIZES = list(SHAPES)
RHO = 1.0


@functools.lru_cache(maxsize=1)
def one_class(n, C, D, K):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(n, D, generator=gen).relu_()  # post-ReLU embeddings
    logits = torch.randn(n, C, generator=gen) * 2.0
    y = torch.randint(0, C, (n,), generator=gen)
    h, logits, y = h.to(DEVICE), logits.to(DEVICE), y.to(DEVICE)
    e, q = ops.last_layer_factors(logits, y, backend="reference")
    coords = algorithms.top_variance_coords(h, q, K, backend="reference")
    return h, logits, y, e, q, coords


def gram_work(n, C, D):
    """The two Gram matrices h h^T and e e^T: 2 n^2 (D + C) FLOPs; the block written once."""
    return dict(flops=2 * n * n * (D + C), bytes=4 * (n * (D + C) + n * n))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", backends())
def test_gradient_distance(benchmark, backend, size):
    n, C, D, K = SHAPES[size]
    h, _, _, e, _, _ = one_class(n, C, D, K)
    out = ops.gradient_distance(h, e, backend=backend)
    assert_close(out, ops.gradient_distance(h, e, backend="reference"), rtol=1e-3, atol=1e-3, what="distance")
    bench(benchmark, lambda: ops.gradient_distance(h, e, backend=backend), impl=backend,
          op="gradient_distance", shape=f"n={n}, C={C}, D={D}", **gram_work(n, C, D))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", backends())
def test_pairwise_l1(benchmark, backend, size):
    n, C, D, K = SHAPES[size]
    h, _, _, _, q, coords = one_class(n, C, D, K)
    d = ops.hessian_diag_coords(h, q, coords, backend="reference")
    out = ops.pairwise_l1(d, backend=backend)
    assert_close(out, ops.pairwise_l1(d, backend="reference"), rtol=1e-4, atol=1e-6, what="L1 distances")
    bench(benchmark, lambda: ops.pairwise_l1(d, backend=backend), impl=backend, op="pairwise_l1",
          shape=f"n={n}, K={K}", flops=3 * n * n * K, bytes=4 * (n * K + n * n))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", backends())
def test_lcmat_distance(benchmark, backend, size):
    n, C, D, K = SHAPES[size]
    h, _, _, e, q, coords = one_class(n, C, D, K)
    out = ops.lcmat_distance(h, e, q, coords, RHO, backend=backend)
    assert_close(out, ops.lcmat_distance(h, e, q, coords, RHO, backend="reference"), rtol=1e-3, atol=1e-3,
                 what="LCMat distance")
    work = gram_work(n, C, D)
    bench(benchmark, lambda: ops.lcmat_distance(h, e, q, coords, RHO, backend=backend), impl=backend,
          op="lcmat_distance", shape=f"n={n}, C={C}, D={D}, K={K}", flops=work["flops"] + 3 * n * n * K,
          bytes=work["bytes"])


# ---- one class end to end ---------------------------------------------------------------------

END_SHAPES = {"tiny": (128, 10, 64, 16, 13), "cifar10": (2000, 10, 512, 100, 200)}


def lcmat_block(h, logits, y, K, k, backend):
    e, q = ops.last_layer_factors(logits, y, backend=backend)
    coords = algorithms.top_variance_coords(h, q, K, backend=backend)
    dist = ops.lcmat_distance(h, e, q, coords, RHO, backend=backend)
    picks, objective, _ = ops.facility_location_greedy(dist, k, lazy=True, backend=backend)
    return dist, picks, objective


def research_block(h, logits, y, K, k):
    """The materialising approach: per-sample gradient and Hessian diagonal as dense rows
    [bias (C); weight (C x D)], distances from them directly, naive greedy."""
    p = torch.softmax(logits, 1)
    e = p - torch.nn.functional.one_hot(y, p.shape[1]).to(p.dtype)
    q = p * (1 - p)
    grads = torch.cat([e, (e[:, :, None] * h[:, None, :]).flatten(1)], 1)            # n x P
    hess = torch.cat([q, (q[:, :, None] * (h * h)[:, None, :]).flatten(1)], 1)       # n x P
    var = hess.double().var(0, unbiased=False)
    coords = var.argsort(descending=True, stable=True)[:K]
    sub = hess[:, coords]
    l1 = (sub[:, None, :] - sub[None, :, :]).abs().sum(-1)                           # n x n x K
    dist = torch.cdist(grads, grads) + RHO * l1
    dist.fill_diagonal_(0.0)
    picks, objective, _ = ops.facility_location_greedy(dist, k, lazy=False, backend="reference")
    return dist, picks, objective


@pytest.mark.parametrize("size", list(END_SHAPES))
@pytest.mark.parametrize("impl", backends() + ["research"])
def test_lcmat_select_block(benchmark, impl, size):
    n, C, D, K, k = END_SHAPES[size]
    h, logits, y, _, _, _ = one_class(n, C, D, K)
    dist, _, objective = lcmat_block(h, logits, y, K, k, "reference")
    if impl == "research":
        fn = functools.partial(research_block, h, logits, y, K, k)
    else:
        fn = functools.partial(lcmat_block, h, logits, y, K, k, impl)
    dist_i, _, objective_i = fn()
    assert_close(dist_i, dist, rtol=1e-2, atol=1e-2 * float(dist.max()), what=f"{impl} distance block")
    assert_close(objective_i[-1], objective[-1], rtol=1e-4, atol=0.0, what=f"{impl} objective")
    bench(benchmark, fn, impl=impl, op="LCMat-S one class end to end", shape=f"n={n}, C={C}, D={D}, K={K}, k={k}")
