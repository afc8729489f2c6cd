"""Last-layer per-sample quantities (softmax cross-entropy after a final nn.Linear): lcmat's closed
forms against the libraries that compute them from autograd: BackPACK (BatchGrad, BatchL2Grad,
BatchDiagHessian on the final nn.Linear, as the LCMat authors' code uses), Opacus
(GradSampleModule) and torch.func (vmap of grad).

- test_grad_norms: ||grad_theta loss_i|| over the layer's weight and bias, [N].
- test_curvature_moments: mean and second moment over the samples of every coordinate of the
  per-sample Hessian diagonal, two [C (D + 1)] vectors (what LCMat-S ranks coordinates by).
  torch.func is left out here: its per-sample Hessian is a P x P matrix per sample.

Peers materialise per-sample gradients (or Hessian diagonals), N x C (D + 1) numbers; they run
in batches of about 64 MB of them, as a user holding memory would. Every peer's result is
checked against lcmat's before timing.

Shapes (N, C, D): tiny (256, 10, 64); cifar10 (50,000, 10, 512); imagenet (20,000, 1,000, 512), a
20,000-sample slice at ImageNet-1k's classes and embedding width.
"""
import functools

import pytest
import torch
from torch import nn

from _common import DEVICE, assert_close, backends, bench, peer
from lcmat import ops

SHAPES = {"tiny": (256, 10, 64), "cifar10": (50_000, 10, 512), "imagenet": (20_000, 1000, 512)}
SIZES = list(SHAPES)


@functools.lru_cache(maxsize=1)
def problem(N, C, D):
    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(D, C)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(C, D, generator=gen) / D ** 0.5)
        layer.bias.copy_(torch.randn(C, generator=gen) * 0.1)
    h = torch.randn(N, D, generator=gen)
    y = torch.randint(0, C, (N,), generator=gen)
    layer = layer.to(DEVICE)
    h, y = h.to(DEVICE), y.to(DEVICE)
    with torch.no_grad():
        logits = layer(h)
    return layer, h, y, logits


def batches(N, C, D):
    size = max(1, (1 << 24) // (C * (D + 1)))
    return [(s, min(N, s + size)) for s in range(0, N, size)]


# ---- per-sample gradient norms ----------------------------------------------------------------

def lcmat_norms(h, logits, y, backend):
    return ops.last_layer_grad_norms(h, logits, y, backend=backend)[0]


def func_norms(layer, h, y):
    tf = torch.func
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, x, t):
        z = tf.functional_call(layer, p, (x[None],))
        return nn.functional.cross_entropy(z, t[None], reduction="sum")
    out = []
    for s, e in batches(len(h), *layer.weight.shape):
        grads = tf.vmap(tf.grad(loss), in_dims=(None, 0, 0))(params, h[s:e], y[s:e])
        out.append(sum(g.flatten(1).square().sum(1) for g in grads.values()).sqrt())
    return torch.cat(out)


def opacus_norms(layer, h, y):
    opacus = peer("opacus")
    model = opacus.GradSampleModule(layer, loss_reduction="sum")
    out = []
    for s, e in batches(len(h), *layer.weight.shape):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(h[s:e]), y[s:e], reduction="sum").backward()
        out.append(sum(p.grad_sample.flatten(1).square().sum(1) for p in layer.parameters()).sqrt())
        for p in layer.parameters():
            p.grad_sample = None
    model._close()
    return torch.cat(out)


def backpack_norms(layer, h, y, quantity):
    bp = peer("backpack")
    from backpack import extensions
    model, lossf = bp.extend(layer), bp.extend(nn.CrossEntropyLoss(reduction="sum"))
    out = []
    for s, e in batches(len(h), *layer.weight.shape):
        model.zero_grad()
        with bp.backpack(extensions.BatchL2Grad() if quantity == "BatchL2Grad" else extensions.BatchGrad()):
            lossf(model(h[s:e]), y[s:e]).backward()
        if quantity == "BatchL2Grad":
            out.append(sum(p.batch_l2 for p in layer.parameters()).sqrt())
        else:
            out.append(sum(p.grad_batch.flatten(1).square().sum(1) for p in layer.parameters()).sqrt())
    return torch.cat(out)


NORM_PEERS = {
    "torch.func": func_norms,
    "opacus": opacus_norms,
    "backpack-BatchGrad": lambda layer, h, y: backpack_norms(layer, h, y, "BatchGrad"),
    "backpack-BatchL2Grad": lambda layer, h, y: backpack_norms(layer, h, y, "BatchL2Grad"),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", backends() + list(NORM_PEERS))
def test_grad_norms(benchmark, impl, size):
    N, C, D = SHAPES[size]
    layer, h, y, logits = problem(N, C, D)
    expected = lcmat_norms(h, logits, y, "reference")
    if impl in NORM_PEERS:
        fn = functools.partial(NORM_PEERS[impl], layer, h, y)
    else:
        fn = functools.partial(lcmat_norms, h, logits, y, impl)
    assert_close(fn(), expected, rtol=1e-3, atol=1e-5, what=f"{impl} gradient norms")
    bench(benchmark, fn, impl=impl, op="last-layer per-sample gradient norms", shape=f"N={N}, C={C}, D={D}",
          bytes=4 * N * (C + D), flops=2 * N * (C + D))


# ---- Hessian-diagonal moments -----------------------------------------------------------------

def lcmat_moments(h, logits, y, backend):
    _, q = ops.last_layer_factors(logits, y, backend=backend)
    return ops.curvature_moments(h, q, backend=backend)


def backpack_moments(layer, h, y):
    bp = peer("backpack")
    from backpack import extensions
    model, lossf = bp.extend(layer), bp.extend(nn.CrossEntropyLoss(reduction="sum"))
    C, D = layer.weight.shape
    mean = torch.zeros(C * (D + 1), dtype=torch.float64, device=h.device)
    second = torch.zeros_like(mean)
    for s, e in batches(len(h), C, D):
        model.zero_grad()
        with bp.backpack(extensions.BatchDiagHessian()):
            lossf(model(h[s:e]), y[s:e]).backward()
        diag = torch.cat([layer.bias.diag_h_batch, layer.weight.diag_h_batch.flatten(1)], dim=1).double()
        mean += diag.sum(0)
        second += diag.square().sum(0)
    return mean / len(h), second / len(h)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", backends() + ["backpack-BatchDiagHessian"])
def test_curvature_moments(benchmark, impl, size):
    N, C, D = SHAPES[size]
    layer, h, y, logits = problem(N, C, D)
    expected = lcmat_moments(h, logits, y, "reference")
    if impl == "backpack-BatchDiagHessian":
        fn = functools.partial(backpack_moments, layer, h, y)
    else:
        fn = functools.partial(lcmat_moments, h, logits, y, impl)
    mean, second = fn()
    assert_close(mean, expected[0], rtol=1e-3, atol=1e-9, what=f"{impl} mean")
    assert_close(second, expected[1], rtol=1e-3, atol=1e-12, what=f"{impl} second moment")
    bench(benchmark, fn, impl=impl, op="last-layer Hessian-diagonal moments", shape=f"N={N}, C={C}, D={D}",
          bytes=4 * N * (C + D), flops=4 * N * C * D)
