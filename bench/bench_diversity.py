"""The comparison set (Contextual Diversity, DeepFool, Cal, Moderate-DS, graph cut, log-det):
selection time per method and backend, and the graph-cut / log-determinant greedy against apricot
and submodlib on the same similarity block, side by side in one run (pytest-benchmark).

    python -m pytest bench/bench_diversity.py --benchmark-only -q                  # tiny shape
    LCMAT_BENCH_CIFAR=1 python -m pytest bench/bench_diversity.py --benchmark-only  # + CIFAR-10 shape

Shapes: "tiny" (N = 600, C = 10, D = 32) and "cifar10" (N = 50,000, C = 10, D = 512, per class
n_c = 5,000, k_c = 500; only with LCMAT_BENCH_CIFAR=1). Features are the synthetic ones of
run_selectors.py. The peers (apricot-select, submodlib-py) are optional: their tests skip when
they do not import. Each group of the pytest-benchmark table is one comparison; compare rows of a
group only (same machine, same run).
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from run_selectors import synthetic_features  # noqa: E402

import lcmat  # noqa: E402
from lcmat import ops, reference  # noqa: E402
from lcmat.diversity import deepfool  # noqa: E402
from lcmat.submodular import similarity_from_gram  # noqa: E402

SHAPES = {"tiny": (600, 10, 32), "cifar10": (50_000, 10, 512)}
CIFAR = pytest.mark.skipif(os.environ.get("LCMAT_BENCH_CIFAR") != "1", reason="set LCMAT_BENCH_CIFAR=1")
SHAPE_PARAMS = ["tiny", pytest.param("cifar10", marks=CIFAR)]
BACKENDS = [b for b in ("reference", "cpu") if b in ops.available_backends()]
FEATURE_METHODS = ["cdiv", "cal", "moderate", "graphcut", "logdet"]
_cache = {}


def features(shape):
    if shape not in _cache:
        _cache[shape] = synthetic_features(*SHAPES[shape])
    return _cache[shape]


def rounds(shape):
    return 3 if shape == "tiny" else 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", FEATURE_METHODS + ["lcmat"])
@pytest.mark.parametrize("shape", SHAPE_PARAMS)
def test_select(benchmark, shape, method, backend):
    """A whole selection at fraction 0.1 (per class); the backend runs lcmat.ops's kernels. At the
    CIFAR-10 shape every method is also timed against LCMat-S (cpu) as a yardstick, and the
    backends are compared only where a kernel of the method has a cpu twin (graph cut, log-det)."""
    if shape == "cifar10" and backend == "reference" and method not in ("graphcut", "logdet"):
        pytest.skip("the same code on both backends (no cpu twin) or the yardstick")
    H, Z, y, _ = features(shape)
    selector = lcmat.get_method(method, fraction=0.1, backend=backend, progress=False)
    benchmark.group = f"select {method} {shape}" if method in ("graphcut", "logdet") else f"select {shape}"
    cs = benchmark.pedantic(lambda: selector.select_features(embeddings=H, logits=Z, labels=y),
                            rounds=rounds(shape), iterations=1, warmup_rounds=0)
    assert len(cs.indices) == round(0.1 * len(y))


@pytest.mark.parametrize("shape", SHAPE_PARAMS)
def test_deepfool(benchmark, shape):
    """DeepFool on every sample through a small MLP over the D-dimensional features."""
    H, Z, y, _ = features(shape)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(H.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    benchmark.group = f"deepfool {shape}"

    def run():
        return [deepfool(model, H[i:i + 1024], 50, 0.02) for i in range(0, len(H), 1024)]

    benchmark.pedantic(run, rounds=rounds(shape) if shape == "tiny" else 1, iterations=1)


# ---- graph cut and log-det against the peers, on one class's similarity block ------------------

def class_block(shape):
    """Class 0's cosine similarity of last-layer gradients (float64 for the peers) and k_c."""
    if ("block", shape) not in _cache:
        _cache["block", shape] = _class_block(shape)
    return _cache["block", shape]


def _class_block(shape):
    H, Z, y, _ = features(shape)
    index = torch.nonzero(y == 0).flatten()
    e, _ = ops.last_layer_factors(Z[index], y[index])
    S = similarity_from_gram(ops.gradient_gram(H[index], e), "cossim").double()
    return S, round(0.1 * len(index))


@pytest.mark.parametrize("impl", ["reference-naive", "reference-lazy", "cpu-naive", "cpu-lazy", "apricot-naive",
                                  "apricot-lazy", "submodlib-naive", "submodlib-lazy"])
@pytest.mark.parametrize("shape", SHAPE_PARAMS)
def test_graph_cut_greedy(benchmark, shape, impl):
    S, k = class_block(shape)
    benchmark.group = f"graph cut greedy {shape}"
    run = _graph_cut_runner(impl, S, k)
    picks = benchmark.pedantic(run, rounds=rounds(shape), iterations=1, warmup_rounds=1)
    # The same function: the greedy values agree to a few per cent (the first step is a tie on the
    # cosine block, broken by the lowest index here and differently by the peers, so the sets differ).
    mine = float(reference.graph_cut_value(S, ops.graph_cut_greedy(S, k, 1.0, False, backend="reference")[0]))
    theirs = float(reference.graph_cut_value(S, torch.tensor(list(picks), dtype=torch.long)))
    assert theirs == pytest.approx(mine, rel=0.05)


@pytest.mark.parametrize("impl", ["reference-naive", "reference-lazy", "cpu-naive", "cpu-lazy", "submodlib-naive",
                                  "submodlib-lazy"])
@pytest.mark.parametrize("shape", SHAPE_PARAMS)
def test_log_determinant_greedy(benchmark, shape, impl):
    S, k = class_block(shape)
    benchmark.group = f"log-det greedy {shape}"
    run = _log_det_runner(impl, S, k)
    picks = benchmark.pedantic(run, rounds=rounds(shape), iterations=1, warmup_rounds=1)
    mine = float(reference.log_determinant_value(S, ops.log_determinant_greedy(S, k, 1.0, False,
                                                                               backend="reference")[0]))
    theirs = float(reference.log_determinant_value(S, torch.tensor(list(picks), dtype=torch.long)))
    assert theirs == pytest.approx(mine, rel=0.05)


def _lcmat_or_skip(name, greedy, S, k):
    if name == "reference" and greedy == "lazy" and len(S) > 1000:
        pytest.skip("the reference's lazy greedy is a Python heap: minutes at this shape")
    if name not in ops.available_backends():
        pytest.skip(f"backend {name} not available")


def _graph_cut_runner(impl, S, k):
    name, greedy = impl.split("-")
    if name in ("reference", "cpu"):
        _lcmat_or_skip(name, greedy, S, k)
        return lambda: ops.graph_cut_greedy(S, k, 1.0, greedy == "lazy", backend=name)[0].tolist()
    S_np = S.numpy()
    if name == "apricot":
        apricot = pytest.importorskip("apricot")
        # apricot's graph cut: f(A) = sum_{i in V, j in A} alpha S_ij - sum_{i, j in A} S_ij (alpha = 1)
        return lambda: list(apricot.GraphCutSelection(k, metric="precomputed", optimizer=greedy).fit(S_np).ranking)
    submodlib = pytest.importorskip("submodlib")
    return lambda: _submodlib_picks(submodlib.GraphCutFunction(n=len(S_np), mode="dense", ggsijs=S_np, lambdaVal=1.0),
                                    k, greedy)


def _log_det_runner(impl, S, k):
    name, greedy = impl.split("-")
    if name in ("reference", "cpu"):
        _lcmat_or_skip(name, greedy, S, k)
        return lambda: ops.log_determinant_greedy(S, k, 1.0, greedy == "lazy", backend=name)[0].tolist()
    submodlib = pytest.importorskip("submodlib")
    S_np = S.numpy()
    return lambda: _submodlib_picks(submodlib.LogDeterminantFunction(n=len(S_np), mode="dense", sijs=S_np,
                                                                     lambdaVal=1.0), k, greedy)


def _submodlib_picks(function, k, greedy):
    import contextlib
    import io
    optimizer = "NaiveGreedy" if greedy == "naive" else "LazyGreedy"
    with contextlib.redirect_stdout(io.StringIO()):  # submodlib prints its own progress bar
        out = function.maximize(budget=k, optimizer=optimizer, stopIfZeroGain=False, stopIfNegativeGain=False,
                                verbose=False)
    return [j for j, _ in out]
