"""Graph cut and log-determinant: the greedy kernels against explicit set-function evaluation,
step by step, and the selectors against the definition on materialised last-layer gradients."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import brute_selectors as B
import lcmat
from lcmat import reference

COUNTS = [25, 35, 11]


def graph_cut_f(S, A, lam):
    A = list(A)
    return S[:, A].sum() - lam * S[np.ix_(A, A)].sum()


def logdet_f(S, A, reg):
    A = list(A)
    return np.linalg.slogdet(S[np.ix_(A, A)] + reg * np.eye(len(A)))[1] if A else 0.0


def greedy(f, n, k):
    """The greedy on an explicit set function: each step the largest f(A + e) - f(A), lowest
    index on ties; returns (picks, objective after each pick, smallest relative gap to the runner-up)."""
    picks, values, gap = [], [], np.inf
    for _ in range(k):
        base = f(picks)
        gains = np.array([-np.inf if e in picks else f(picks + [e]) - base for e in range(n)])
        j = int(np.argmax(gains))
        others = np.delete(gains, j)
        if np.isfinite(others).any() and gains[j] != others.max():  # exact ties: lowest index, both sides
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
# The cpu twin against the reference

needs_cpu = pytest.mark.skipif("cpu" not in lcmat.ops.available_backends(), reason="no compiled extension")


def random_block(n, seed, dtype, symmetric=True):
    S = random_psd(n, seed, rank=min(n + 2, 6))
    if not symmetric:  # graph cut is defined for any non-negative S
        S = S * np.random.default_rng(seed).uniform(0.5, 1.5, size=S.shape)
    return torch.tensor(S, dtype=dtype)


@needs_cpu
@given(n=st.integers(1, 40), seed=st.integers(0, 1000), lazy=st.booleans(), lam=st.sampled_from([0.0, 0.5, 1.0]),
       symmetric=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]), data=st.data())
def test_cpu_graph_cut_matches_the_reference(n, seed, lazy, lam, symmetric, dtype, data):
    k = data.draw(st.integers(0, n))
    S = random_block(n, seed, dtype, symmetric)
    ref = reference.graph_cut_greedy(S.double(), k, lam, False)
    picks, objective = lcmat.csrc.graph_cut_greedy(S, k, lam, lazy)
    assert picks.dtype == torch.long and objective.dtype == dtype
    expected, _, gap = greedy(lambda A: graph_cut_f(S.double().numpy(), A, lam), n, k)
    if gap > 1e-5:
        assert picks.tolist() == expected == ref[0].tolist()
    np.testing.assert_allclose(objective.double().numpy(),
                               [float(reference.graph_cut_value(S.double(), picks[:t + 1], lam)) for t in range(k)],
                               rtol=1e-5, atol=1e-4)


@needs_cpu
@given(n=st.integers(1, 40), seed=st.integers(0, 1000), lazy=st.booleans(), reg=st.sampled_from([1e-2, 1.0]),
       dtype=st.sampled_from([torch.float32, torch.float64]), data=st.data())
def test_cpu_log_determinant_matches_the_reference(n, seed, lazy, reg, dtype, data):
    k = data.draw(st.integers(0, n))
    S = random_block(n, seed, dtype)
    picks, objective = lcmat.csrc.log_determinant_greedy(S, k, reg, lazy)
    expected, _, gap = greedy(lambda A: logdet_f(S.double().numpy(), A, reg), n, k)
    if gap > 1e-4:
        assert picks.tolist() == expected
    np.testing.assert_allclose(objective.double().numpy(),
                               [logdet_f(S.double().numpy(), picks[:t + 1].tolist(), reg) for t in range(k)],
                               rtol=1e-4, atol=1e-4)


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
def test_cpu_bad_input_and_opcheck():
    S = random_block(6, 0, torch.float64)
    with pytest.raises(ValueError, match="k"):
        lcmat.csrc.graph_cut_greedy(S, 7)
    with pytest.raises(ValueError, match="lam"):
        lcmat.csrc.graph_cut_greedy(S, 2, lam=-1.0)
    with pytest.raises(ValueError, match="reg"):
        lcmat.csrc.log_determinant_greedy(S, 2, reg=-1.0)
    with pytest.raises(ValueError, match="positive definite"):
        lcmat.csrc.log_determinant_greedy(torch.tensor([[1.0, 3.0], [3.0, 1.0]], dtype=torch.float64), 2, reg=0.1)
    with pytest.raises(ValueError, match="sim"):
        lcmat.csrc.graph_cut_greedy(S.masked_fill(S > 0.9, float("nan")), 2)
    torch.library.opcheck(torch.ops.lcmat.graph_cut_greedy.default, (S, 3, 1.0, True))
    torch.library.opcheck(torch.ops.lcmat.log_determinant_greedy.default, (S, 3, 1.0, False))
