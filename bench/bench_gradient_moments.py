"""gradient_moments and one LCMat-C outer iteration, pytest-benchmark style.

    pytest bench/bench_gradient_moments.py --benchmark-only            # everything here
    pytest bench/bench_gradient_moments.py --benchmark-only -k kernel  # the kernel only

test_kernel: forward + backward of ops.gradient_moments per backend (reference, cpu; triton and
cuda where a GPU exists) and shape (N samples, C classes, D embedding width), from a tiny shape to
CIFAR-10's (ConvNet-3, 128 channels: D = 2048) and a CIFAR-100-like one.

test_outer_iteration: one LCMat-C outer iteration (matching steps and network updates) with the
closed-form moments against the same loss computed from per-sample gradients materialised by
torch.func (vmap of grad over the last layer: an N x C (D + 1) tensor), side by side. The peak
memory of each (resident set, in a fresh process) is measured by `python bench/bench_gradient_moments.py
--memory [cifar10] [cifar100]`, which prints both, at CIFAR-10's shape and a CIFAR-100 one.
"""
import os
import resource
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from lcmat import ops
from lcmat.condense import LCMatC
from lcmat.condense.losses import gradient_distance

SHAPES = {"tiny": (16, 4, 8), "cifar10-convnet": (1280, 10, 2048), "cifar100-like": (2000, 100, 512)}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [b for b in ops.available_backends() if b != "triton" or DEVICE == "cuda"]


def _problem(n, C, D, device=DEVICE):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, D, generator=g).to(device).requires_grad_(True)
    z = (2 * torch.randn(n, C, generator=g)).to(device).requires_grad_(True)
    y = (torch.arange(n) % C).to(device)
    return h, z, y


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel(benchmark, backend, shape):
    n, C, D = SHAPES[shape]
    if backend == "reference" and shape == "cifar100-like" and DEVICE == "cpu":
        pytest.skip("the reference's N x C^2 one-hot products are too slow here")
    h, z, y = _problem(n, C, D)

    def step():
        mean, var = ops.gradient_moments(h, z, y, backend=backend)
        torch.autograd.grad(mean.sum() + var.sum(), (h, z))
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark(step)


# ---- one outer iteration: closed forms against materialised per-sample gradients -----------------

class LCMatCPerSample(LCMatC):
    """The same loss from per-sample gradients materialised by torch.func (the plain way)."""

    def matching_loss(self, model, x_real, y_real, x_syn, y_syn):
        with torch.no_grad():
            G_real = per_sample_grads(model.fc, model.embed(x_real), y_real)
        G_syn = per_sample_grads(model.fc, model.embed(x_syn), y_syn)
        C = model.fc.out_features
        loss = x_syn.new_zeros(())
        for c in range(C):
            gr, gs = G_real[y_real == c], G_syn[y_syn == c]
            if len(gr) and len(gs):
                loss = loss + gradient_distance(gr.mean(0), gs.mean(0), self.metric, C)
                loss = loss + 0.5 * self.rho * (gr.var(0, unbiased=False) - gs.var(0, unbiased=False)).abs().sum()
        return loss


def per_sample_grads(fc, h, y):
    """[N, C (D + 1)]: each sample's gradient of its cross-entropy, [bias; weight], by vmap(grad)."""
    params = {k: v.detach() for k, v in fc.named_parameters()}

    def loss_one(p, hi, yi):
        return F.cross_entropy(functional_call(fc, p, (hi[None],)), yi[None])

    g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, h, y)
    return torch.cat([g["bias"], g["weight"].reshape(len(y), -1)], dim=1)


def _cifar_like(n_per_class=64, C=10):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(C).repeat_interleave(n_per_class)
    return torch.randn(len(y), 3, 32, 32, generator=g), y


ITERATION = dict(iterations=1, outer_loop=2, net_steps=1, batch_net=64, width=128, rho=1.0,
                 metric="mse", progress=False, device=DEVICE)
# (classes, real images per class per matching step, stored images per class). At CIFAR-100 the
# materialised per-sample gradients are C (D + 1) = 204,900 floats a sample.
PROBLEMS = {"cifar10": (10, 64, 10), "cifar100": (100, 16, 2)}
VARIANTS = {"closed-form": LCMatC, "per-sample-autograd": LCMatCPerSample}


def _method(variant, problem):
    C, batch_real, ipc = PROBLEMS[problem]
    x, y = _cifar_like(batch_real, C)
    return VARIANTS[variant](ipc, batch_real=batch_real, **ITERATION), x, y


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_outer_iteration(benchmark, variant):
    method, x, y = _method(variant, "cifar10")
    benchmark.pedantic(lambda: method.condense(x, y), rounds=3, iterations=1)


def _measure(variant, problem):
    """Seconds per outer iteration (median of 3) and the process's peak resident memory."""
    method, x, y = _method(variant, problem)
    method.condense(x, y)  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(3):
        t = time.perf_counter()
        method.condense(x, y)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{problem}\t{variant}\t{sorted(times)[1]:.3f}\t{peak / 1024:.0f}\t{(peak - base) / 1024:.0f}")


if __name__ == "__main__":
    if "--measure" in sys.argv:
        _measure(sys.argv[-2], sys.argv[-1])
    elif "--memory" in sys.argv:  # --memory [cifar10|cifar100 ...]: each variant in a fresh process
        problems = [a for a in sys.argv[1:] if a in PROBLEMS] or list(PROBLEMS)
        print("problem\tvariant\tseconds/outer iteration (median of 3)\tpeak RSS MiB\tpeak growth after warm-up MiB")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        for problem in problems:
            for variant in VARIANTS:
                subprocess.run([sys.executable, __file__, "--measure", variant, problem], check=True, env=env)
