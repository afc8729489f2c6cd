"""Whole-network per-sample gradient norms over every nn.Linear (`ops.per_sample_grad_norms`,
GraNd with layers="all") against Opacus (GradSampleModule), torch.func (vmap of grad) and BackPACK
(BatchL2Grad), and the per-layer kernel `ops.linear_grad_norms` alone.

Networks, at (N, T, d_in, width), C = 10 classes:
- mlp: T = 1 (an MLP on flattened images): tiny (64, 1, 32, 32); cifar10 (1,024, 1, 3,072, 512).
- seq-wide: a sequence model (Linear-ReLU-Linear-ReLU per position, mean over positions, a linear
  head) with wide layers: tiny (16, 8, 32, 32); cifar10 (128, 64, 256, 512). Ghost norms are
  cheaper here: T (d_in + d_out) < d_in d_out.
- seq-mid: between the two: tiny (16, 16, 16, 32); cifar10 (128, 128, 128, 256). The first
  layer materialises, the second sits on the boundary T (d_in + d_out) = d_in d_out.
- seq-long: the same with long sequences and narrow layers: tiny (16, 32, 16, 16); cifar10
  (64, 1,024, 64, 128). Materialising is cheaper: T (d_in + d_out) > d_in d_out.
The "cifar10" size holds these realistic shapes (there is no ImageNet size for this family).
Every timed call is one forward and one backward pass plus the norms; the peers run an ordinary
backward pass (batch weight gradients included), in batches of about 64 MB of per-sample
gradients. Opacus and torch.func materialise the per-sample gradients; BackPACK's BatchL2Grad
takes the rank-one form at T = 1 and for sequences one four-operand einsum over A and G whose
contraction order torch's einsum path search picks.

LCMAT_BENCH_BEFORE=1 adds the impl "cpu-param-backward": the cpu kernels behind the earlier
backward pass, autograd.grad with respect to the parameters (which also forms the batch weight
gradients), so that the gain of taking the gradients at the layer outputs is measured in the
same run.

As a script, `python bench/bench_linear_grad_norms.py [--rounds R] [networks]` times every
implementation in turns at the cifar10 size (one call of each per round, medians and ratios to
cpu printed as a markdown table): on a loaded machine, pytest-benchmark's consecutive rounds of
one implementation then another see different loads, turns see the same.
"""
import copy
import functools
import importlib.util
import os
import statistics
import time

import pytest
import torch
from torch import nn

from _common import DEVICE, THREADS, assert_close, backends, bench, peer, sync
from lcmat import ops

MODELS = {
    "mlp": {"tiny": (64, 1, 32, 32), "cifar10": (1024, 1, 3072, 512)},
    "seq-wide": {"tiny": (16, 8, 32, 32), "cifar10": (128, 64, 256, 512)},
    "seq-mid": {"tiny": (16, 16, 16, 32), "cifar10": (128, 128, 128, 256)},
    "seq-long": {"tiny": (16, 32, 16, 16), "cifar10": (64, 1024, 64, 128)},
}
SIZES = ["tiny", "cifar10"]
C = 10


class MeanOverPositions(nn.Module):
    def forward(self, x):
        return x.mean(dim=1) if x.dim() == 3 else x


@functools.lru_cache(maxsize=1)
def problem(model_name, size):
    N, T, d_in, width = MODELS[model_name][size]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          MeanOverPositions(), nn.Linear(width, C)).to(DEVICE).eval()
    x = torch.randn(N, d_in, device=DEVICE) if T == 1 else torch.randn(N, T, d_in, device=DEVICE)
    y = torch.randint(0, C, (N,), device=DEVICE)
    return model, x, y


def work(model_name, size):
    """Forward and backward of the linear layers (6 N T d_in d_out FLOPs per layer, the head at
    T = 1) and the bytes of their inputs and output gradients."""
    N, T, d_in, width = MODELS[model_name][size]
    layers = [(d_in, width, T), (width, width, T), (width, C, 1)]
    return dict(flops=sum(6 * N * t * a * b for a, b, t in layers),
                bytes=sum(4 * N * t * (a + b) for a, b, t in layers))


LOSS = nn.CrossEntropyLoss(reduction="none")


def lcmat_norms(model, x, y, backend):
    return ops.per_sample_grad_norms(model, x, y, LOSS, backend=backend)


def batches(model, N):
    params = sum(p.numel() for p in model.parameters())
    size = max(1, (1 << 24) // params)
    return [(s, min(N, s + size)) for s in range(0, N, size)]


def func_norms(model, x, y):
    tf = torch.func
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return nn.functional.cross_entropy(tf.functional_call(model, p, (xi[None],)), yi[None])
    out = []
    for s, e in batches(model, len(x)):
        grads = tf.vmap(tf.grad(loss), in_dims=(None, 0, 0))(params, x[s:e], y[s:e])
        out.append(sum(g.flatten(1).square().sum(1) for g in grads.values()).sqrt())
    return torch.cat(out)


def opacus_norms(model, x, y):
    opacus = peer("opacus")
    wrapped = opacus.GradSampleModule(model, loss_reduction="sum")
    wrapped.train()  # Opacus records activations in train mode only (the networks here have no
    out = []         # dropout or normalisation, so the outputs are those of eval mode)
    try:
        for s, e in batches(model, len(x)):
            wrapped.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(wrapped(x[s:e]), y[s:e], reduction="sum").backward()
            out.append(sum(p.grad_sample.flatten(1).square().sum(1) for p in model.parameters()).sqrt())
            for p in model.parameters():
                p.grad_sample = None
                p.grad = None
    finally:
        wrapped._close()
        model.eval()
    return torch.cat(out)


@functools.lru_cache(maxsize=1)
def backpack_model(model):
    """A copy of `model` extended by BackPACK (extend() adds hooks and buffers), made once."""
    return peer("backpack").extend(copy.deepcopy(model))


def backpack_norms(model, x, y):
    bp = peer("backpack")
    from backpack import extensions
    extended = backpack_model(model)
    lossf = bp.extend(nn.CrossEntropyLoss(reduction="sum"))
    out = []
    for s, e in batches(model, len(x)):
        extended.zero_grad(set_to_none=True)
        with bp.backpack(extensions.BatchL2Grad()):
            lossf(extended(x[s:e]), y[s:e]).backward()
        out.append(sum(p.batch_l2 for p in extended.parameters()).sqrt())
    return torch.cat(out)


def param_backward_norms(model, x, y):
    """The earlier path: the output gradients caught by tensor hooks during autograd.grad with
    respect to the parameters (which forms the batch weight gradients too), the cpu kernels."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    calls = {layer: [] for layer in layers}

    def hook(layer, args, output):
        record = [args[0].detach(), None]
        calls[layer].append(record)
        output.register_hook(lambda g: record.__setitem__(1, g.detach()))
    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        losses = LOSS(model(x), y)
        torch.autograd.grad(losses.sum(), [p for p in model.parameters()])
    finally:
        for h in handles:
            h.remove()
    n = len(x)
    total = torch.zeros(n)
    for layer in layers:
        A = torch.cat([a.reshape(n, -1, a.shape[-1]) for a, _ in calls[layer]], dim=1)
        G = torch.cat([g.reshape(n, -1, g.shape[-1]) for _, g in calls[layer]], dim=1)
        total += ops.linear_grad_norms(A, G, backend="cpu") + G.sum(1).square().sum(1)
    return total.sqrt()


PEERS = {"torch.func": func_norms, "opacus": opacus_norms, "backpack": backpack_norms}
BEFORE = ["cpu-param-backward"] if os.environ.get("LCMAT_BENCH_BEFORE") == "1" and DEVICE.type == "cpu" else []


# The MLP at CIFAR-10 shape: 1,024 x 3,072 x 512 per-sample weight gradients, a minute in the
# reference; the check there is against the cpu backend (itself checked against the reference in
# tests and at the other shapes here).
TOO_BIG_FOR_REFERENCE = {("mlp", "cifar10")}


@functools.lru_cache(maxsize=1)
def expected_norms(model_name, size):
    model, x, y = problem(model_name, size)
    oracle = "cpu" if (model_name, size) in TOO_BIG_FOR_REFERENCE and "cpu" in backends() else "reference"
    return lcmat_norms(model, x, y, oracle)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("impl", backends() + BEFORE + list(PEERS))
def test_per_sample_grad_norms(benchmark, impl, model_name, size):
    model, x, y = problem(model_name, size)
    if impl == "reference" and (model_name, size) in TOO_BIG_FOR_REFERENCE:
        pytest.skip("the reference materialises every per-sample gradient (6.4 GB here)")
    expected = expected_norms(model_name, size)
    if impl in PEERS:
        peer("torch" if impl == "torch.func" else impl)
        fn = functools.partial(PEERS[impl], model, x, y)
    elif impl == "cpu-param-backward":
        fn = functools.partial(param_backward_norms, model, x, y)
    else:
        fn = functools.partial(lcmat_norms, model, x, y, impl)
    assert_close(fn(), expected, rtol=1e-3, atol=1e-6, what=f"{impl} per-sample gradient norms")
    N, T, d_in, width = MODELS[model_name][size]
    bench(benchmark, fn, impl=impl, op=f"per_sample_grad_norms ({model_name})",
          shape=f"N={N}, T={T}, d_in={d_in}, width={width}", **work(model_name, size))


LAYER_SHAPES = {  # (N, T, d_in, d_out): ghost-friendly, materialise-friendly, rank one
    "wide": {"tiny": (16, 8, 32, 32), "cifar10": (128, 64, 512, 512)},
    "long": {"tiny": (16, 32, 8, 8), "cifar10": (64, 1024, 64, 64)},
    "rank-one": {"tiny": (64, 1, 32, 32), "cifar10": (1024, 1, 3072, 512)},
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("layer", list(LAYER_SHAPES))
@pytest.mark.parametrize("backend", backends())
def test_linear_grad_norms(benchmark, backend, layer, size):
    N, T, d_in, d_out = LAYER_SHAPES[layer][size]
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(N, T, d_in, generator=gen).to(DEVICE)
    G = torch.randn(N, T, d_out, generator=gen).to(DEVICE)
    assert_close(ops.linear_grad_norms(A, G, backend=backend), ops.linear_grad_norms(A, G, backend="reference"),
                 rtol=1e-3, atol=1e-3, what="squared norms")
    ghost = T * (d_in + d_out) <= d_in * d_out
    flops = 2 * N * T * T * (d_in + d_out) if ghost else 2 * N * T * d_in * d_out
    bench(benchmark, lambda: ops.linear_grad_norms(A, G, backend=backend), impl=backend,
          op=f"linear_grad_norms ({layer})", shape=f"N={N}, T={T}, d_in={d_in}, d_out={d_out}",
          flops=flops, bytes=4 * N * T * (d_in + d_out))


def alternating(model_names, rounds, size="cifar10"):
    """Median time (ms) of every implementation on each network, timed in turns (one call of each
    per round), so that a loaded machine slows them alike; each checked first, as above."""
    torch.set_num_threads(THREADS)
    impls = {b: functools.partial(lcmat_norms, backend=b) for b in backends() if b != "reference"}
    impls.update({"cpu-param-backward": param_backward_norms} if DEVICE.type == "cpu" else {})
    impls.update({k: fn for k, fn in PEERS.items() if installed(k)})
    table = {}
    for name in model_names:
        model, x, y = problem(name, size)
        expected = expected_norms(name, size)
        calls = {}
        for impl, fn in impls.items():
            call = functools.partial(fn, model, x, y)
            assert_close(call(), expected, rtol=1e-3, atol=1e-6, what=f"{impl} per-sample gradient norms")
            calls[impl] = call
        times = {impl: [] for impl in calls}
        for _ in range(rounds):
            for impl, call in calls.items():
                start = time.perf_counter()
                call()
                sync()
                times[impl].append(time.perf_counter() - start)
        table[name] = {impl: 1e3 * statistics.median(t) for impl, t in times.items()}
    return table


def installed(impl):
    return importlib.util.find_spec("torch" if impl == "torch.func" else impl) is not None


def test_alternating_runner():
    """The script's timing in turns, once at the tiny size, so that it cannot rot."""
    table = alternating(["seq-long"], rounds=1, size="tiny")
    assert {"cpu", "cpu-param-backward"} <= set(table["seq-long"]) or "cpu" not in backends()
    assert all(t > 0 for t in table["seq-long"].values())


def main():
    """python bench/bench_linear_grad_norms.py [--rounds R] [networks]: the alternating timing
    above as a markdown table (cpu's median and every other's, with its ratio to cpu's)."""
    import argparse
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("networks", nargs="*", default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    table = alternating(args.networks, args.rounds)
    impls = list(next(iter(table.values())))
    print("| network | shape | " + " | ".join(f"{i} (ms)" for i in impls) + " |")
    print("|---|---|" + "---:|" * len(impls))
    for name, medians in table.items():
        N, T, d_in, width = MODELS[name]["cifar10"]
        ours = medians[impls[0]]
        cells = [f"{medians[impls[0]]:.0f}"] + [f"{medians[i]:.0f} ({medians[i] / ours:.2f}x)" for i in impls[1:]]
        print(f"| {name} | N = {N}, T = {T}, d_in = {d_in}, width {width} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
