"""GradMatch, Glister and AdaCore: whole selections per backend, and DeepCore's own code on the
same features, side by side in one run (pytest-benchmark).

    python -m pytest bench/bench_matching.py --benchmark-only -q                 # tiny shape
    LCMAT_BENCH_CIFAR=1 python -m pytest bench/bench_matching.py --benchmark-only  # + CIFAR-10
    DEEPCORE_SRC=/path/to/DeepCore LCMAT_BENCH_CIFAR=1 python -m pytest bench/bench_matching.py ...

Shapes: "tiny" (3 classes of 200, D = 32) and "cifar10" (N = 50,000, C = 10, D = 512, k_c = 500),
the synthetic post-ReLU features of run_selectors.py. The "class" shape is one CIFAR-10 class
(n = 5,000), on which DeepCore's functions run: DeepCore loops over the classes independently,
so one class gives the ratio. DeepCore's code is not imported as a package (its nets need
torchvision): `deepcore_function` compiles the one function from its source file, unchanged,
and its gradients are materialised as its calc_gradient does (N x C (D + 1), included in its
time). DEEPCORE_SRC: a checkout of github.com/PatrickZH/DeepCore; those tests skip without it.
LCMAT_BENCH_ROUNDS: rounds per case (default 3).
"""
import ast
import os
import sys
import types

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from run_selectors import synthetic_features  # noqa: E402

import lcmat  # noqa: E402
from lcmat import reference as R  # noqa: E402

SHAPES = {"tiny": (600, 3, 32), "class": (5000, 1, 512), "cifar10": (50000, 10, 512)}
BIG = os.environ.get("LCMAT_BENCH_CIFAR") == "1"
ROUNDS = int(os.environ.get("LCMAT_BENCH_ROUNDS", "3"))
DEEPCORE = os.environ.get("DEEPCORE_SRC")
METHODS = {"gradmatch": {}, "gradmatch-deepcore": {"deepcore": True, "lam": 1.0},
           "glister": {}, "glister-eta0": {"eta": 0.0}, "adacore": {}}
_cache = {}


def features(shape):
    """(H, Z, y): a "class" shape is one class of the CIFAR-10 features, with C = 10 logits."""
    if shape not in _cache:
        if shape == "class":
            H, Z, y, _ = synthetic_features(50000, 10, 512)
            idx = (y == 0).nonzero().squeeze(1)
            _cache[shape] = H[idx].contiguous(), Z[idx].contiguous(), y[idx].contiguous()
        else:
            N, C, D = SHAPES[shape]
            _cache[shape] = synthetic_features(N, C, D)[:3]
    return _cache[shape]


def skip_big(shape):
    if shape != "tiny" and not BIG:
        pytest.skip("CIFAR-10 shapes run with LCMAT_BENCH_CIFAR=1")


def run_once(benchmark, fn):
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("shape", ["tiny", "class", "cifar10"])
def test_selection(benchmark, shape, method, backend):
    skip_big(shape)
    if backend not in lcmat.ops.available_backends():
        pytest.skip(f"backend {backend} not available")
    H, Z, y = features(shape)
    options = dict(METHODS[method])
    name = method.split("-")[0]
    selector = lcmat.get_method(name, fraction=0.1, backend=backend, progress=False, **options)
    if shape == "class":
        picks, _ = run_once(benchmark, lambda: group_pick(selector, H, Z, y))
        assert len(picks) == round(0.1 * len(y))
        return
    cs = run_once(benchmark, lambda: selector.select_features(embeddings=H, logits=Z, labels=y))
    assert len(cs.indices) == sum(round(0.1 * int(n)) for n in torch.bincount(y))


def group_pick(selector, H, Z, y):
    """The selector's work on one group (a class of the "class" shape, whose logits have C = 10
    columns while its labels hold one class, which select_features refuses)."""
    data = types.SimpleNamespace(embeddings=H, logits=Z, labels=y, num_classes=Z.shape[1])
    selector.prepare(data)
    return selector.pick(data, np.arange(len(y)), round(0.1 * len(y)))


# ---------------------------------------------------------------------------------------------
# DeepCore's code on the same features

def deepcore_function(relative_path, class_name, function_name, namespace):
    """DeepCore's method `class_name.function_name` from its source, compiled as a plain
    function (its `self` is a namespace carrying the attributes it reads)."""
    path = os.path.join(DEEPCORE, relative_path)
    tree = ast.parse(open(path).read(), path)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == function_name)
    module = ast.Module(body=[fn], type_ignores=[])
    exec(compile(module, path, "exec"), namespace)
    return namespace[function_name]


def deepcore_gradients(H, Z, y):
    """DeepCore's calc_gradient on given features: [bias grads, weight grads], N x C (D + 1)."""
    Z = Z.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(Z, y, reduction="sum")
    bias = torch.autograd.grad(loss, Z)[0]
    n, C, D = len(y), Z.shape[1], H.shape[1]
    weight = H.view(n, 1, D).repeat(1, C, 1) * bias.view(n, C, 1).repeat(1, 1, D)
    return torch.cat([bias, weight.flatten(1)], dim=1)


def need_deepcore():
    if not DEEPCORE:
        pytest.skip("set DEEPCORE_SRC to a DeepCore checkout")


def _self():
    return types.SimpleNamespace(args=types.SimpleNamespace(print_freq=10 ** 9))


@pytest.mark.parametrize("shape", ["tiny", "class"])
def test_deepcore_gradmatch(benchmark, shape):
    """DeepCore's orthogonal_matching_pursuit_np (its CPU path) on one group."""
    need_deepcore()
    skip_big(shape)
    from scipy.linalg import lstsq
    from scipy.optimize import nnls
    omp = deepcore_function("deepcore/methods/gradmatch.py", "GradMatch", "orthogonal_matching_pursuit_np",
                            {"np": np, "lstsq": lstsq, "nnls": nnls, "torch": torch})
    H, Z, y = features(shape)
    idx = (y == 0).nonzero().squeeze(1)
    k = round(0.1 * len(idx))

    def run():
        g = deepcore_gradients(H[idx], Z[idx], y[idx])
        return omp(_self(), g.numpy().T, g.mean(0).numpy(), budget=k)

    weights = run_once(benchmark, run)
    picks, w = group_pick(lcmat.GradMatch(fraction=0.1, deepcore=True, lam=1.0), H[idx], Z[idx], y[idx])
    benchmark.extra_info["same_picks"] = bool(np.array_equal(np.flatnonzero(weights), np.sort(picks[w > 0])))


@pytest.mark.parametrize("shape", ["tiny", "class"])
def test_deepcore_glister(benchmark, shape):
    """DeepCore's Glister selection on one group: the gains g_i . mean validation gradient
    (validation = the group) through its LazyGreedy, as its finish_run calls it."""
    need_deepcore()
    skip_big(shape)
    sys.path.insert(0, os.path.join(DEEPCORE, "deepcore", "methods", "methods_utils"))
    import submodular_optimizer
    H, Z, y = features(shape)
    idx = (y == 0).nonzero().squeeze(1)
    k = round(0.1 * len(idx))

    def run():
        grads = deepcore_gradients(H[idx], Z[idx], y[idx])
        val_grads = grads.mean(0)
        optimizer = submodular_optimizer.LazyGreedy(args=_self().args, index=np.arange(len(idx)), budget=k)
        return optimizer.select(gain_function=lambda idx_gain, selected, **kwargs: torch.matmul(
            grads[idx_gain], val_grads.view(-1, 1)).detach().cpu().numpy().flatten(), upadate_state=None)

    picks = run_once(benchmark, run)
    ours, _ = group_pick(lcmat.Glister(fraction=0.1, eta=0.0), H[idx], Z[idx], y[idx])
    benchmark.extra_info["same_picks"] = bool(np.array_equal(np.sort(picks), np.sort(ours)))


@pytest.mark.parametrize("shape", ["tiny", "class"])
def test_omp_kernel(benchmark, shape):
    """The pursuit alone (reference.omp_last_layer) on one group, for the kernel's share."""
    skip_big(shape)
    H, Z, y = features(shape)
    idx = (y == 0).nonzero().squeeze(1)
    h = H[idx].double()
    e, _ = R.last_layer_factors(Z[idx].double(), y[idx])
    b = R.gradient_target_dot(h, e, h, e)
    run_once(benchmark, lambda: R.omp_last_layer(h, e, b, round(0.1 * len(idx)), 0.5))
