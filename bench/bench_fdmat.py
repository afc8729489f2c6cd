"""FDMat's kernels per backend (no outside library computes them): the feature transform, the
squared-distance cost to the class prototypes, and the scores from Sinkhorn potentials.

Shapes (N, C, D): tiny (256, 10, 64); cifar10 (50,000, 10, 512); imagenet (200,000, 1,000, 512),
a 200,000-sample slice at ImageNet-1k's classes (the full 1,281,167 x 1,000 cost is 5.1 GB).
"""
import functools

import pytest
import torch

from _common import DEVICE, assert_close, backends, bench
from lcmat import algorithms, ops

SHAPES = {"tiny": (256, 10, 64), "cifar10": (50_000, 10, 512), "imagenet": (200_000, 1000, 512)}
SIZES = list(SHAPES)
REG = 0.1


@functools.lru_cache(maxsize=1)
def problem(N, C, D):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen).relu_().to(DEVICE)
    labels = torch.randint(0, C, (N,), generator=gen).to(DEVICE)
    z = ops.fdmat_transform(x, backend="reference")
    protos = algorithms.class_prototypes(z, labels, C)
    M = ops.prototype_cost(z, protos, backend="reference")
    f = torch.randn(N, generator=gen).to(DEVICE) * 0.01 - REG * torch.log(torch.tensor(float(N)))
    g = torch.randn(C, generator=gen).to(DEVICE) * 0.01
    return x, z, protos, M, f, g


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", backends())
def test_fdmat_transform(benchmark, backend, size):
    N, C, D = SHAPES[size]
    x, *_ = problem(N, C, D)
    assert_close(ops.fdmat_transform(x, backend=backend), ops.fdmat_transform(x, backend="reference"),
                 rtol=1e-4, atol=1e-5, what="transform")
    bench(benchmark, lambda: ops.fdmat_transform(x, backend=backend), impl=backend, op="fdmat_transform",
          shape=f"N={N}, D={D}", bytes=2 * 4 * N * D)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", backends())
def test_prototype_cost(benchmark, backend, size):
    N, C, D = SHAPES[size]
    _, z, protos, M, _, _ = problem(N, C, D)
    assert_close(ops.prototype_cost(z, protos, backend=backend), M, rtol=1e-3, atol=1e-4, what="cost")
    bench(benchmark, lambda: ops.prototype_cost(z, protos, backend=backend), impl=backend,
          op="prototype_cost", shape=f"N={N}, C={C}, D={D}", flops=2 * N * C * D, bytes=4 * (N * D + N * C))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", backends())
def test_fdmat_scores(benchmark, backend, size):
    N, C, D = SHAPES[size]
    *_, M, f, g = problem(N, C, D)
    assert_close(ops.fdmat_scores(M, f, g, REG, backend=backend), ops.fdmat_scores(M, f, g, REG, backend="reference"),
                 rtol=1e-3, atol=1e-12, what="scores")
    bench(benchmark, lambda: ops.fdmat_scores(M, f, g, REG, backend=backend), impl=backend, op="fdmat_scores",
          shape=f"N={N}, C={C}", bytes=4 * N * C)
