"""Graph cut and log-determinant: the greedy kernels against explicit set-function evaluation,
step by step, and the selectors against the definition on materialised last-layer gradients."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import brute_selectors as B
from backends import only
import lcmat
from lcmat import reference

COUNTS = [25, 35, 11]


def graph_cut_f(S, A, lam):
    A = list(A)
    return S[:, A].sum() - lam * S[np.ix_(A, A)].sum()


def logdet_f(S, A, reg):
    A = list(A)
    return np.linalg.slogdet(S[np.ix_(A, A)] + reg * np.eye(len(A)))[1] if A else 0.0


def greedy(f, n, k, exact_ties=True):
    """The greedy on an explicit set function: each step the largest f(A + e) - f(A), lowest
    index on ties; returns (picks, objective after each pick, smallest relative gap to the runner-up).
    exact_ties=True: gains equal here are ties that the code under test must see as exact too (no
    gap); False: they count as a zero gap (gains equal in exact arithmetic, e.g. a constant
    diagonal, round differently in each implementation)."""
    picks, values, gap = [], [], np.inf
    for _ in range(k):
        base = f(picks)
        gains = np.array([-np.inf if e in picks else f(picks + [e]) - base for e in range(n)])
        j = int(np.argmax(gains))
        others = np.delete(gains, j)
        if np.isfinite(others).any() and (gains[j] != others.max() or not exact_ties):
            gap = min(gap, (gains[j] - others.max()) / max(abs(gains[j]), 1e-12))
        picks.append(j)
        values.append(f(picks))
    return picks, np.array(values), gap


def cosine_similarity(G):
    g = G / np.maximum(np.linalg.norm(G, axis=1, keepdims=True), 1e-300)
    cos = np.clip(g @ g.T, -1, 1)
    np.fill_diagonal(cos, 1.0)
    return 0.5 + 0.5 * cos


def random_psd(n, seed, rank=None):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, rank or n + 2))
    return cosine_similarity(X)


@given(n=st.integers(1, 12), seed=st.integers(0, 500), lam=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
       lazy=st.booleans(), data=st.data())
def test_graph_cut_greedy_is_the_greedy_on_the_set_function(n, seed, lam, lazy, data):
    k = data.draw(st.integers(0, n))
    S = random_psd(n, seed)
    picks, objective = reference.graph_cut_greedy(torch.tensor(S), k, lam, lazy)
    expected, values, gap = greedy(lambda A: graph_cut_f(S, A, lam), n, k)
    if gap > 1e-9:
        assert picks.tolist() == expected
    np.testing.assert_allclose(objective.numpy(), [graph_cut_f(S, picks[:t + 1].tolist(), lam) for t in range(k)],
                               rtol=1e-9, atol=1e-9)


@given(n=st.integers(1, 12), seed=st.integers(0, 500), reg=st.sampled_from([1e-3, 0.1, 1.0]),
       lazy=st.booleans(), rank=st.sampled_from([None, 2]), data=st.data())
def test_log_determinant_greedy_is_the_greedy_on_the_set_function(n, seed, reg, lazy, rank, data):
    k = data.draw(st.integers(0, n))
    S = random_psd(n, seed, rank)  # rank 2: singular blocks, kept finite by reg
    picks, objective = reference.log_determinant_greedy(torch.tensor(S), k, reg, lazy)
    expected, values, gap = greedy(lambda A: logdet_f(S, A, reg), n, k)
    if gap > 1e-7:
        assert picks.tolist() == expected
    np.testing.assert_allclose(objective.numpy(), [logdet_f(S, picks[:t + 1].tolist(), reg) for t in range(k)],
                               rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("fn", ["graph_cut_greedy", "log_determinant_greedy"])
def test_lazy_and_naive_make_the_same_picks(fn):
    S = torch.tensor(random_psd(80, 3, rank=6))
    naive = getattr(reference, fn)(S, 30, lazy=False)
    lazy = getattr(reference, fn)(S, 30, lazy=True)
    assert torch.equal(naive[0], lazy[0])
    torch.testing.assert_close(naive[1], lazy[1])


def test_log_determinant_deepcore_gain():
    S = random_psd(9, 1)  # full rank: no gain reaches S_ee, so no rounding-level ties
    picks, _ = reference.log_determinant_deepcore_greedy(torch.tensor(S), 5)
    expected = [0]  # all gains are zero at the first step
    while len(expected) < 5:
        A = expected
        gains = [-np.inf if e in A else S[e, A] @ np.linalg.pinv(S[np.ix_(A, A)]) @ S[A, e] for e in range(9)]
        expected.append(int(np.argmax(gains)))
    assert picks.tolist() == expected


def test_submodular_bad_input():
    S = torch.tensor(random_psd(5, 0))
    with pytest.raises(ValueError, match="k"):
        reference.graph_cut_greedy(S, 6)
    with pytest.raises(ValueError, match="lam"):
        reference.graph_cut_greedy(S, 2, lam=-1.0)
    with pytest.raises(ValueError, match="reg"):
        reference.log_determinant_greedy(S, 2, reg=0.0)
    with pytest.raises(ValueError, match="sim"):
        reference.graph_cut_greedy(S[:, :4], 2)
    with pytest.raises(ValueError, match="sim"):
        reference.log_determinant_greedy(S.masked_fill(S > 0.9, float("inf")), 2)
    with pytest.raises(ValueError, match="positive definite"):
        reference.log_determinant_greedy(torch.tensor([[1.0, 3.0], [3.0, 1.0]], dtype=torch.float64), 2, reg=0.1)


# ---------------------------------------------------------------------------------------------
# Selectors

def brute_selection(H, Z, y, fraction, function, metric="cossim", features="gradients", **params):
    chosen, gap = [], np.inf
    for c, k in enumerate(B.budgets(y, fraction)):
        members = np.flatnonzero(y == c)
        G = B.gradients(H[members], Z[members], y[members]) if features == "gradients" else H[members]
        if metric == "cossim":
            S = cosine_similarity(G)
        else:
            D = np.linalg.norm(G[:, None, :] - G[None, :, :], axis=2)
            S = D.max() - D
        if function == "graphcut":
            f = lambda A: graph_cut_f(S, A, params.get("lam", 1.0))  # noqa: E731
        else:
            f = lambda A: logdet_f(S, A, params.get("reg", 1.0))  # noqa: E731
        picks, _, g = greedy(f, len(members), k)
        chosen += list(members[picks])
        gap = min(gap, g)
    return np.sort(chosen), gap


@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("name,params", [("graphcut", {}), ("graphcut", {"lam": 0.4}), ("logdet", {}),
                                         ("logdet", {"reg": 0.05})])
@pytest.mark.parametrize("metric,features", [("cossim", "gradients"), ("euclidean", "embeddings"),
                                             ("cossim", "embeddings")])
def test_selector_is_the_greedy_on_explicit_similarities(name, params, metric, features, lazy):
    H, Z, y = B.make_problem(COUNTS, D=4, seed=5)
    if name == "logdet" and metric == "euclidean":
        params = {"reg": 50.0}  # L - D is not positive semi-definite; a large reg makes it so here
    cs = lcmat.get_method(name, fraction=0.2, metric=metric, space=features, lazy=lazy, dtype=torch.float64,
                          **params).select_features(embeddings=H, logits=Z, labels=y)
    expected, gap = brute_selection(H, Z, y, 0.2, name, metric, features, **params)
    assert gap > 1e-7
    np.testing.assert_array_equal(cs.indices, expected)
    assert cs.weights is None


@pytest.mark.parametrize("name", ["graphcut", "logdet"])
def test_global_budget_and_determinism(name):
    H, Z, y = B.make_problem(COUNTS, D=4, seed=6)
    a = lcmat.get_method(name, fraction=0.3, balance=False).select_features(embeddings=H, logits=Z, labels=y)
    b = lcmat.get_method(name, fraction=0.3, balance=False).select_features(embeddings=H, logits=Z, labels=y)
    assert len(a.indices) == round(0.3 * len(y))
    np.testing.assert_array_equal(a.indices, b.indices)


def test_logdet_deepcore_variant_and_bad_options():
    H, Z, y = B.make_problem(COUNTS, D=4, seed=5)
    cs = lcmat.LogDeterminant(fraction=0.2, variant="deepcore").select_features(embeddings=H, logits=Z, labels=y)
    for c in range(3):  # DeepCore's first pick is the class's first sample
        assert np.flatnonzero(y == c)[0] in cs.indices
    for bad in [dict(metric="cosine"), dict(space="inputs"), dict(lazy="yes"), dict(reg=0), dict(variant="x")]:
        with pytest.raises(ValueError):
            lcmat.LogDeterminant(**bad)
    with pytest.raises(ValueError, match="lam"):
        lcmat.GraphCut(lam=-0.5)

# ---------------------------------------------------------------------------------------------
# Every backend against the reference and the definition, through lcmat.ops: "cpu" (the compiled
# kernels on CPU tensors), "triton" (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1, as the
# tests run it without a GPU) and "cuda" (the compiled kernels on CUDA tensors).

INTERPRETED = not torch.cuda.is_available()  # Triton in its interpreter: milliseconds a launch, two a pick
FUNCTIONS = {"graph_cut_greedy": (graph_cut_f, "lam"), "log_determinant_greedy": (logdet_f, "reg")}


def device_of(backend):
    """The device `backend` (the conftest fixture) runs on here, or a skip when it is not available."""
    if backend not in lcmat.ops.available_backends():
        pytest.skip(f"backend {backend!r} is not available here")
    on_gpu = backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
    return torch.device("cuda" if on_gpu else "cpu")


def max_n(backend):
    return 20 if backend == "triton" and INTERPRETED else 40


def run(fn, backend, S, k, param, lazy=False):
    """ops.<fn> on `backend`; (picks, objective) back on the CPU, after checking their types."""
    dev = device_of(backend)
    picks, objective = getattr(lcmat.ops, fn)(S.to(dev), k, param, lazy, backend=backend)
    assert picks.dtype == torch.long and objective.dtype == S.dtype
    assert picks.device.type == objective.device.type == dev.type
    assert picks.shape == objective.shape == (k,)
    return picks.cpu(), objective.cpu()


def random_block(n, seed, dtype, symmetric=True):
    """W K W with K a low-rank cosine similarity and W a random positive diagonal: non-negative,
    positive semi-definite, and no two gains equal in exact arithmetic (a constant diagonal would
    make the last graph-cut gains at lam = 1/2 equal, and each implementation round them its own
    way)."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.5, size=n)
    S = random_psd(n, seed, rank=min(n + 2, 6)) * w[:, None] * w[None, :]
    if not symmetric:  # graph cut is defined for any non-negative S
        S = S * rng.uniform(0.5, 1.5, size=S.shape)
    return torch.tensor(S, dtype=dtype)


def assert_objective(fn, S, picks, objective, param, tol):
    f = FUNCTIONS[fn][0]
    S64 = S.double().numpy()
    np.testing.assert_allclose(objective.double().numpy(), [f(S64, picks[:t + 1].tolist(), param)
                                                            for t in range(len(picks))], rtol=tol, atol=tol)


@given(seed=st.integers(0, 1000), lazy=st.booleans(), lam=st.sampled_from([0.0, 0.5, 1.0]),
       symmetric=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]), data=st.data())
def test_graph_cut_matches_the_reference(backend, seed, lazy, lam, symmetric, dtype, data):
    device_of(backend)
    n = data.draw(st.integers(1, max_n(backend)), label="n")
    k = data.draw(st.integers(0, n), label="k")
    S = random_block(n, seed, dtype, symmetric)
    picks, objective = run("graph_cut_greedy", backend, S, k, lam, lazy)
    expected, _, gap = greedy(lambda A: graph_cut_f(S.double().numpy(), A, lam), n, k, exact_ties=False)
    if gap > 1e-5:
        assert picks.tolist() == expected == reference.graph_cut_greedy(S.double(), k, lam)[0].tolist()
    assert_objective("graph_cut_greedy", S, picks, objective, lam, 1e-5)


@given(seed=st.integers(0, 1000), lazy=st.booleans(), reg=st.sampled_from([1e-2, 1.0]),
       dtype=st.sampled_from([torch.float32, torch.float64]), data=st.data())
def test_log_determinant_matches_the_reference(backend, seed, lazy, reg, dtype, data):
    device_of(backend)
    n = data.draw(st.integers(1, max_n(backend)), label="n")
    k = data.draw(st.integers(0, n), label="k")
    S = random_block(n, seed, dtype)
    picks, objective = run("log_determinant_greedy", backend, S, k, reg, lazy)
    expected, _, gap = greedy(lambda A: logdet_f(S.double().numpy(), A, reg), n, k, exact_ties=False)
    if gap > 1e-4:
        assert picks.tolist() == expected == reference.log_determinant_greedy(S.double(), k, reg)[0].tolist()
    assert_objective("log_determinant_greedy", S, picks, objective, reg, 1e-4)


@pytest.mark.parametrize("fn", list(FUNCTIONS))
@pytest.mark.parametrize("n,k", [(1, 0), (1, 1), (2, 1), (2, 2), (17, 0), (17, 1), (17, 17), (33, 5)])
def test_budgets_and_odd_sizes(backend, fn, n, k):
    """Budgets 0, 1 and n, blocks of one and two, a size just past a Triton tile (16 under the
    interpreter), float64: the reference's picks exactly."""
    S = random_block(n, n + k, torch.float64)
    param = 0.7
    picks, objective = run(fn, backend, S, k, param, lazy=k % 2 == 1)
    ref = getattr(reference, fn)(S, k, param)
    assert picks.tolist() == ref[0].tolist()
    torch.testing.assert_close(objective, ref[1], rtol=1e-10, atol=1e-10)


def duplicated_integer_block(fn, copies=2):
    """An integer similarity whose candidates come in `copies` identical copies (rows and
    columns equal), so exact ties everywhere; every sum and product is exact in float32.
    Graph cut: S_ij = 8 - |p_i - p_j|_1 for integer points; log-det: S = B B^T, B integer."""
    rng = np.random.default_rng(3)
    if fn == "graph_cut_greedy":
        P = np.tile(rng.integers(0, 4, size=(7, 2)), (copies, 1))
        return 8.0 - np.abs(P[:, None, :] - P[None, :, :]).sum(2)
    B = np.tile(rng.integers(-2, 3, size=(7, 4)), (copies, 1))
    return (B @ B.T).astype(float)


@pytest.mark.parametrize("fn", list(FUNCTIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_ties_lowest_index_wins(backend, fn, dtype):
    S = duplicated_integer_block(fn, copies=3)
    n, param = S.shape[0], 0.5
    f = FUNCTIONS[fn][0]
    k = n if fn == "graph_cut_greedy" else 7  # log-det: S B B^T has rank 4; beyond it, gains ~ log(reg)
    expected, _, gap = greedy(lambda A: f(S, A, param), n, k)
    assert gap > 1e-6  # the only ties are exact ones (a test that can fail)
    picks, _ = run(fn, backend, torch.tensor(S, dtype=dtype), k, param)
    assert picks.tolist() == expected
    for j in expected:  # the lowest copy wins: a pick's earlier copies were picked before it
        if j >= 7:
            assert j - 7 in expected[:expected.index(j)]


def test_non_contiguous_and_asymmetric_blocks(backend):
    base = torch.tensor(random_psd(45, 11), dtype=torch.float64)
    asym = base * torch.rand(45, 45, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for fn, S in [("graph_cut_greedy", asym.t()), ("graph_cut_greedy", asym[::2, ::2]),
                  ("log_determinant_greedy", base[1::2, 1::2]), ("log_determinant_greedy", base.t())]:
        assert not S.is_contiguous()
        picks, objective = run(fn, backend, S, 6, 0.3)
        ref = getattr(reference, fn)(S.contiguous(), 6, 0.3)
        assert picks.tolist() == ref[0].tolist()
        torch.testing.assert_close(objective, ref[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(backend, dtype):
    """Half-precision similarities run in float32 (cpu, cuda) or float64 (triton) and return
    the objective in the input's dtype; the picks are the reference's on the rounded values."""
    S = random_block(24, 5, torch.float64).to(dtype)
    for fn, f in [("graph_cut_greedy", graph_cut_f), ("log_determinant_greedy", logdet_f)]:
        picks, objective = run(fn, backend, S, 8, 0.5)
        S64 = S.double()
        expected, _, gap = greedy(lambda A: f(S64.numpy(), A, 0.5), 24, 8, exact_ties=False)
        assert gap > 1e-4
        assert picks.tolist() == expected == getattr(reference, fn)(S64, 8, 0.5)[0].tolist()
        torch.testing.assert_close(objective.double(), getattr(reference, fn)(S64, 8, 0.5)[1], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("fn", list(FUNCTIONS))
def test_larger_block(backend, fn):
    n, k = (70, 12) if backend == "triton" and INTERPRETED else (300, 60)
    S = random_block(n, 7, torch.float32)
    picks, objective = run(fn, backend, S, k, 1.0)
    ref = getattr(reference, fn)(S.double(), k)
    assert picks.tolist() == ref[0].tolist()
    torch.testing.assert_close(objective.double(), ref[1], rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
@only("cuda", "triton")
@pytest.mark.parametrize("fn", list(FUNCTIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_class_sized_block(backend, fn, dtype):
    """A block of one CIFAR-10 class at 1/4 scale (several thread blocks and tiles per step)."""
    S = random_block(1300, 0, dtype)
    picks, objective = run(fn, backend, S, 130, 1.0)
    ref = getattr(reference, fn)(S.double().cuda(), 130)
    assert picks.tolist() == ref[0].tolist()
    torch.testing.assert_close(objective.double(), ref[1].cpu(), rtol=1e-5, atol=1e-4)


def test_bad_input(backend):
    dev = device_of(backend)
    S = random_block(6, 0, torch.float64).to(dev)
    ops = lcmat.ops
    with pytest.raises(ValueError, match="k"):
        ops.graph_cut_greedy(S, 7, backend=backend)
    with pytest.raises(ValueError, match="k"):
        ops.log_determinant_greedy(S, -1, backend=backend)
    with pytest.raises(ValueError, match="lam"):
        ops.graph_cut_greedy(S, 2, lam=-1.0, backend=backend)
    with pytest.raises(ValueError, match="reg"):
        ops.log_determinant_greedy(S, 2, reg=0.0, backend=backend)
    with pytest.raises(ValueError, match="sim"):
        ops.graph_cut_greedy(S[:, :4], 2, backend=backend)
    with pytest.raises(ValueError, match="sim"):
        ops.graph_cut_greedy(S.masked_fill(S > 0.9, float("nan")), 2, backend=backend)
    with pytest.raises(ValueError, match="sim"):
        ops.log_determinant_greedy(S.masked_fill(S > 0.9, float("inf")), 2, backend=backend)
    # S + reg I indefinite: the second pick has no positive pivot, on every backend the same error
    bad = torch.tensor([[1.0, 3.0], [3.0, 1.0]], dtype=torch.float64, device=dev)
    for lazy in (False, True):
        with pytest.raises(ValueError, match="positive definite.*pick 2"):
            ops.log_determinant_greedy(bad, 2, reg=0.1, lazy=lazy, backend=backend)
    assert ops.log_determinant_greedy(bad, 1, reg=0.1, backend=backend)[0].tolist() == [0]


@only("cpu", "triton")
@pytest.mark.parametrize("name", ["graphcut", "logdet"])
def test_selectors_on_every_backend(backend, name):
    device_of(backend)
    H, Z, y = B.make_problem([14, 9], D=4, seed=2)
    chosen = [lcmat.get_method(name, fraction=0.3, dtype=torch.float64, backend=b)
              .select_features(embeddings=H, logits=Z, labels=y).indices for b in ("reference", backend)]
    np.testing.assert_array_equal(chosen[0], chosen[1])


@pytest.mark.gpu
def test_cuda_opcheck_and_auto_dispatch():
    """The CUDA kernels' schemas and fake shapes; on CUDA tensors lcmat.ops picks cuda first."""
    device_of("cuda")
    S = random_block(13, 0, torch.float32).cuda()
    torch.library.opcheck(torch.ops.lcmat.graph_cut_greedy.default, (S, 4, 1.0, True))
    torch.library.opcheck(torch.ops.lcmat.log_determinant_greedy.default, (S.double(), 4, 1.0, False))
    assert lcmat.ops.resolve("graph_cut_greedy", None, S)[0] == "cuda"
    assert lcmat.ops.resolve("log_determinant_greedy", None, S)[0] == "cuda"


def test_auto_dispatch_on_cpu_tensors():
    S = random_block(5, 0, torch.float32)
    want = "cpu" if "cpu" in lcmat.ops.available_backends() else "reference"
    assert lcmat.ops.resolve("graph_cut_greedy", None, S)[0] == want
    assert lcmat.ops.resolve("log_determinant_greedy", None, S)[0] == want


# ---------------------------------------------------------------------------------------------
# The cpu twin's own guarantees

needs_cpu = pytest.mark.skipif("cpu" not in lcmat.ops.available_backends(), reason="no compiled extension")


@needs_cpu
@pytest.mark.parametrize("fn", ["graph_cut_greedy", "log_determinant_greedy"])
@pytest.mark.parametrize("n,k", [(300, 60), (257, 257), (1, 0)])
def test_cpu_lazy_is_bitwise_the_naive_greedy(fn, n, k):
    S = random_block(n, 7, torch.float32)
    naive = getattr(lcmat.csrc, fn)(S, k, lazy=False)
    lazy = getattr(lcmat.csrc, fn)(S, k, lazy=True)
    assert torch.equal(naive[0], lazy[0]) and torch.equal(naive[1], lazy[1])
    ref = getattr(reference, fn)(S.double(), k)
    assert naive[0].tolist() == ref[0].tolist()


@needs_cpu
def test_cpu_opcheck():
    S = random_block(6, 0, torch.float64)
    torch.library.opcheck(torch.ops.lcmat.graph_cut_greedy.default, (S, 3, 1.0, True))
    torch.library.opcheck(torch.ops.lcmat.log_determinant_greedy.default, (S, 3, 1.0, False))
