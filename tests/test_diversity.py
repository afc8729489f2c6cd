"""Contextual Diversity, Cal, Moderate-DS and DeepFool against their definitions, by brute force
on small problems (float64 numpy, every divergence and distance materialised), plus the kernels
they run on (lcmat.reference.pairwise_kl and knn) against the same brute force."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import Dataset

import brute_selectors as B
import lcmat
from lcmat import ops, reference
from lcmat.diversity import deepfool

COUNTS = [25, 35, 11]
BACKENDS = [None] + [b for b in ops.available_backends() if b in ("reference", "cpu")]


def problem(counts=COUNTS, seed=0, D=5):
    return B.make_problem(counts, D=D, seed=seed)


# ---------------------------------------------------------------------------------------------
# Brute force

def log_softmax(Z):
    Z = Z - Z.max(1, keepdims=True)
    return Z - np.log(np.exp(Z).sum(1, keepdims=True))


def sym_kl_matrix(logp):
    """d_ij = 1/2 KL(p_i || p_j) + 1/2 KL(p_j || p_i), from the definition of KL."""
    p = np.exp(logp)
    n = len(p)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            kl_ij = np.sum(p[i] * (logp[i] - logp[j]))
            kl_ji = np.sum(p[j] * (logp[j] - logp[i]))
            d[i, j] = 0.5 * kl_ij + 0.5 * kl_ji
    return d


def kcenter(d, k, first):
    """k-center greedy on an explicit divergence matrix; returns (picks, smallest relative gap
    between a step's winner and the runner-up)."""
    picks, gap = [first], np.inf
    while len(picks) < k:
        m = d[:, picks].min(1)
        m[picks] = -1.0
        j = int(np.argmax(m))
        others = np.delete(m, j)
        if len(others):
            gap = min(gap, (m[j] - others.max()) / max(m[j], 1e-300))
        picks.append(j)
    return picks[:k], gap


def cdiv_brute(Z, y, fraction, seed, balance=True):
    rng = np.random.default_rng(seed)
    logp = log_softmax(Z)
    if balance:
        groups = [(np.flatnonzero(y == c), k) for c, k in enumerate(B.budgets(y, fraction))]
    else:
        groups = [(np.arange(len(y)), round(fraction * len(y)))]
    chosen, gap = [], np.inf
    for members, k in groups:
        first = int(rng.integers(len(members)))
        picks, g = kcenter(sym_kl_matrix(logp[members]), k, first)
        chosen += list(members[picks])
        gap = min(gap, g)
    return np.sort(chosen), gap


def knn_brute(X, k):
    d = ((X[:, None, :] - X[None, :, :]) ** 2).sum(2)
    np.fill_diagonal(d, np.inf)
    return np.array([np.lexsort((np.arange(len(X)), row))[:k] for row in d])


def cal_brute(H, Z, y, fraction, neighbours=10, variant="paper", balance=True):
    logp = log_softmax(Z)
    p = np.exp(logp)
    scores = np.zeros(len(y))
    groups = [np.flatnonzero(y == c) for c in range(y.max() + 1)] if balance else [np.arange(len(y))]
    for members in groups:
        k = min(neighbours, len(members) - 1)
        if k == 0:
            continue  # a group of one: no neighbours, score 0
        nb = knn_brute(H[members], k)
        for a, i in enumerate(members):
            divs = []
            for b in nb[a]:
                j = members[b]
                kl_ji = np.sum(p[j] * (logp[j] - logp[i]))
                kl_ij = np.sum(p[i] * (logp[i] - logp[j]))
                divs.append(kl_ji if variant == "paper" else 0.5 * (kl_ij + kl_ji))
            scores[i] = np.mean(divs)
    return scores, pick_by_scores(scores, y, fraction, largest=variant == "paper", balance=balance)


def pick_by_scores(scores, y, fraction, largest, balance=True):
    sign = -1.0 if largest else 1.0
    if balance:
        groups = [(np.flatnonzero(y == c), k) for c, k in enumerate(B.budgets(y, fraction))]
    else:
        groups = [(np.arange(len(y)), round(fraction * len(y)))]
    chosen = []
    for members, k in groups:
        chosen += sorted(members, key=lambda i: (sign * scores[i], i))[:k]
    return np.sort(chosen)


def moderate_brute(H, y, fraction, centre="median", balance=True):
    dist = np.zeros(len(y))
    for c in range(y.max() + 1):
        members = np.flatnonzero(y == c)
        mu = np.median(H[members], axis=0) if centre == "median" else H[members].mean(0)
        dist[members] = np.linalg.norm(H[members] - mu, axis=1)
    scores = np.zeros(len(y))
    groups = [np.flatnonzero(y == c) for c in range(y.max() + 1)] if balance else [np.arange(len(y))]
    for members in groups:
        scores[members] = np.abs(dist[members] - np.median(dist[members]))
    return scores, pick_by_scores(scores, y, fraction, largest=False, balance=balance)


# ---------------------------------------------------------------------------------------------
# Kernels

@given(n=st.integers(1, 9), m=st.integers(1, 7), C=st.integers(1, 6), seed=st.integers(0, 1000),
       scale=st.sampled_from([0.1, 3.0, 60.0]))
def test_symmetric_kl_matches_the_definition(n, m, C, seed, scale):
    rng = np.random.default_rng(seed)
    a, b = log_softmax(scale * rng.normal(size=(n, C))), log_softmax(scale * rng.normal(size=(m, C)))
    got = reference.symmetric_kl(torch.tensor(a), torch.tensor(b)).numpy()
    both = sym_kl_matrix(np.concatenate([a, b]))[:n, n:]
    np.testing.assert_allclose(got, both, rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(got)) and np.all(got >= -1e-12)


def test_symmetric_kl_chunks_and_self_divergence(monkeypatch):
    monkeypatch.setattr("lcmat.reference.pairwise_kl._CHUNK_ELEMENTS", 7)  # a few rows per chunk
    logp = torch.log_softmax(torch.randn(23, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), 1)
    d = reference.symmetric_kl(logp)
    np.testing.assert_allclose(d.numpy(), sym_kl_matrix(logp.numpy()), rtol=1e-10, atol=1e-13)
    assert torch.all(d.diagonal() == 0) and torch.equal(d, d.T)


def test_symmetric_kl_survives_underflowing_probabilities():
    logp = torch.log_softmax(torch.tensor([[0.0, -800.0], [-800.0, 0.0]], dtype=torch.float32), 1)
    d = reference.symmetric_kl(logp)
    assert torch.isfinite(d).all() and d[0, 1] == pytest.approx(800.0, rel=1e-3)  # each KL is 800


@pytest.mark.parametrize("n,k", [(1, 1), (2, 1), (2, 2), (9, 4), (30, 30), (30, 0)])
def test_kcenter_symmetric_kl_is_the_greedy(n, k):
    rng = np.random.default_rng(n + k)
    logp = log_softmax(2.0 * rng.normal(size=(n, 4)))
    first = n // 2
    got = reference.kcenter_symmetric_kl(torch.tensor(logp), k, first).tolist()
    expected, gap = kcenter(sym_kl_matrix(logp), k, first) if k else ([], np.inf)
    assert gap > 1e-9
    assert got == expected


def test_pairwise_kl_bad_input():
    logp = torch.log_softmax(torch.randn(5, 3), 1)
    with pytest.raises(ValueError, match="k"):
        reference.kcenter_symmetric_kl(logp, 6, 0)
    with pytest.raises(ValueError, match="first"):
        reference.kcenter_symmetric_kl(logp, 2, 5)
    with pytest.raises(ValueError, match="log_p"):
        reference.symmetric_kl(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="log_q"):
        reference.symmetric_kl(logp, torch.log_softmax(torch.randn(5, 4), 1))


@given(n=st.integers(2, 30), D=st.integers(1, 6), seed=st.integers(0, 1000), data=st.data())
def test_knn_indices_match_sorting_explicit_distances(n, D, seed, data):
    k = data.draw(st.integers(0, n - 1))
    rng = np.random.default_rng(seed)
    X = rng.integers(-2, 3, size=(n, D)).astype(np.float64)  # small integers: many exact ties
    got = reference.knn_indices(torch.tensor(X), k).numpy()
    np.testing.assert_array_equal(got, knn_brute(X, k))


def test_knn_indices_chunked_and_bad_input(monkeypatch):
    monkeypatch.setattr("lcmat.reference.knn._CHUNK_ELEMENTS", 40)  # a row or two per chunk
    X = np.random.default_rng(3).normal(size=(37, 3))
    np.testing.assert_array_equal(reference.knn_indices(torch.tensor(X), 5).numpy(), knn_brute(X, 5))
    with pytest.raises(ValueError, match="k"):
        reference.knn_indices(torch.tensor(X), 37)
    with pytest.raises(ValueError, match="neighbours"):
        reference.neighbour_kl(torch.zeros(3, 2), torch.zeros(3, 0, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# Contextual Diversity

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("balance", [True, False])
@pytest.mark.parametrize("seed", [0, 5])
def test_cdiv_is_kcenter_on_the_symmetric_kl_matrix(balance, seed, backend):
    H, Z, y = problem(seed=seed)
    cs = lcmat.ContextualDiversity(fraction=0.2, balance=balance, seed=seed, backend=backend,
                                   dtype=torch.float64).select_features(embeddings=H, logits=Z, labels=y)
    expected, gap = cdiv_brute(Z, y, 0.2, seed, balance)
    assert gap > 1e-9
    np.testing.assert_array_equal(cs.indices, expected)


def test_cdiv_seed_changes_the_start_and_float32_agrees():
    H, Z, y = problem()
    a = lcmat.ContextualDiversity(fraction=0.2, seed=1).select_features(logits=Z, labels=y)
    b = lcmat.ContextualDiversity(fraction=0.2, seed=1).select_features(logits=Z, labels=y)
    c = lcmat.ContextualDiversity(fraction=0.2, seed=2).select_features(logits=Z, labels=y)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.indices, cdiv_brute(Z, y, 0.2, 1)[0])
    assert not np.array_equal(a.indices, c.indices)


# ---------------------------------------------------------------------------------------------
# Cal

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["paper", "deepcore"])
@pytest.mark.parametrize("balance", [True, False])
def test_cal_is_mean_kl_to_the_explicit_neighbours(variant, balance, backend):
    H, Z, y = problem(seed=2)
    cs = lcmat.Cal(fraction=0.2, neighbours=4, variant=variant, balance=balance, backend=backend,
                   dtype=torch.float64).select_features(embeddings=H, logits=Z, labels=y)
    scores, expected = cal_brute(H, Z, y, 0.2, 4, variant, balance)
    np.testing.assert_allclose(cs.scores, scores, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(cs.indices, expected)


def test_cal_small_classes_use_all_their_other_samples():
    H, Z, y = problem(counts=[1, 3, 12], seed=4)
    cs = lcmat.Cal(fraction=0.6, neighbours=10, dtype=torch.float64).select_features(embeddings=H, logits=Z, labels=y)
    scores, expected = cal_brute(H, Z, y, 0.6, 10)
    np.testing.assert_allclose(cs.scores, scores, rtol=1e-10, atol=1e-14)
    assert cs.scores[y == 0][0] == 0.0
    np.testing.assert_array_equal(cs.indices, expected)


# ---------------------------------------------------------------------------------------------
# Moderate-DS

@pytest.mark.parametrize("centre", ["median", "mean"])
@pytest.mark.parametrize("balance", [True, False])
@pytest.mark.parametrize("counts", [COUNTS, [10, 11, 4]])  # even and odd class sizes
def test_moderate_is_its_formula(centre, balance, counts):
    H, Z, y = problem(counts=counts, seed=7)
    cs = lcmat.ModerateDS(fraction=0.3, centre=centre, balance=balance,
                          dtype=torch.float64).select_features(embeddings=H, labels=y)
    scores, expected = moderate_brute(H, y, 0.3, centre, balance)
    np.testing.assert_allclose(cs.scores, scores, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(cs.indices, expected)


def test_moderate_keeps_the_middle_distances():
    # One class on a line: distances to the median centre 0 are |x|; the median distance is 3.
    H = np.array([[0.0], [1.0], [-2.0], [3.0], [-4.0], [5.0], [-6.0]])
    cs = lcmat.ModerateDS(fraction=3 / 7).select_features(embeddings=H, labels=np.zeros(7, dtype=int))
    np.testing.assert_array_equal(cs.indices, [2, 3, 4])


# ---------------------------------------------------------------------------------------------
# DeepFool

class Points(Dataset):
    def __init__(self, x, y):
        self.x, self.targets = torch.as_tensor(x, dtype=torch.float32), list(map(int, y))

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def linear_model(D, C, seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Linear(8, C))  # linear: an affine map


def linear_deepfool_norm(model, x, overshoot):
    """For an affine classifier f = W x + b, DeepFool moves in one step to the nearest class
    boundary: ||r|| = (1 + overshoot) (min_{c != o} |f_c - f_o| / ||w_c - w_o|| + 1e-4)."""
    with torch.no_grad():
        W = (model[1].weight @ model[0].weight).double()
        b = (model[1].weight @ model[0].bias + model[1].bias).double()
        f = torch.as_tensor(x).double() @ W.T + b
    out = []
    for fi in f:
        o = int(fi.argmax())
        out.append(min(abs(float(fi[c] - fi[o])) / float((W[c] - W[o]).norm()) for c in range(len(fi)) if c != o))
    return (1 + overshoot) * (np.array(out) + 1e-4)


@pytest.mark.parametrize("overshoot", [0.02, 0.5])
def test_deepfool_on_an_affine_model_is_one_step_to_the_nearest_boundary(overshoot):
    model = linear_model(4, 5, 0)
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(3))
    norms, steps = deepfool(model, x, max_iter=50, overshoot=overshoot)
    np.testing.assert_allclose(norms.numpy(), linear_deepfool_norm(model, x, overshoot), rtol=1e-4)
    assert torch.all(steps == 1)
    assert model.training  # the training flag is restored


@pytest.mark.parametrize("balance", [True, False])
def test_deepfool_selector_keeps_the_smallest_perturbations(balance):
    model = linear_model(4, 3, 1)
    x = np.random.default_rng(0).normal(size=(47, 4))
    y = np.random.default_rng(1).integers(0, 3, 47)
    cs = lcmat.DeepFool(fraction=0.2, balance=balance, batch_size=16).select(model, Points(x, y))
    expected_scores = linear_deepfool_norm(model, x.astype(np.float32), 0.02)
    np.testing.assert_allclose(cs.scores, expected_scores, rtol=1e-4)
    np.testing.assert_array_equal(cs.indices, pick_by_scores(cs.scores, y, 0.2, largest=False, balance=balance))
    np.testing.assert_array_equal(cs.indices, pick_by_scores(expected_scores, y, 0.2, largest=False,
                                                             balance=balance))


def test_deepfool_a_sample_that_never_flips_is_kept_last():
    model = linear_model(4, 3, 3)
    x = np.random.default_rng(2).normal(size=(12, 4))
    with torch.no_grad():  # zero first-layer weights: every input gradient vanishes, nothing moves
        model[0].weight.zero_()
    y = np.zeros(12, dtype=int)
    norms, steps = deepfool(model, torch.tensor(x, dtype=torch.float32), max_iter=3)
    assert torch.all(steps == 4) and torch.all(norms == 0)
    cs = lcmat.DeepFool(fraction=0.5, max_iter=3).select(model, Points(x, y))
    assert np.all(np.isinf(cs.scores))
    cs = lcmat.DeepFool(fraction=0.5, max_iter=3, score="steps").select(model, Points(x, y))
    np.testing.assert_array_equal(cs.scores, 4)


def test_deepfool_steps_on_a_nonlinear_model_and_needs_the_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    norms, steps = deepfool(model, x, max_iter=50, overshoot=0.02)
    assert torch.all(steps >= 1) and torch.all(norms > 0)
    assert (steps < 50).all()
    y = np.zeros(30, dtype=int)
    cs = lcmat.DeepFool(fraction=0.3, score="steps").select(model, Points(x.numpy(), y))
    np.testing.assert_array_equal(cs.scores, steps.numpy())
    with pytest.raises(ValueError, match="model"):
        lcmat.DeepFool().select_features(embeddings=np.zeros((3, 2)), logits=np.zeros((3, 2)), labels=[0, 1, 1])
    with pytest.raises(ValueError, match="score"):
        lcmat.DeepFool(score="norms")
    with pytest.raises(ValueError, match="max_iter"):
        lcmat.DeepFool(max_iter=0)


# ---------------------------------------------------------------------------------------------
# Options and bad input

@pytest.mark.parametrize("make", [
    lambda: lcmat.Cal(neighbours=0), lambda: lcmat.Cal(variant="symmetric"),
    lambda: lcmat.ModerateDS(centre="mode"), lambda: lcmat.DeepFool(overshoot=-1.0),
])
def test_bad_options(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("name", ["cdiv", "cal", "moderate"])
def test_bad_features(name):
    H, Z, y = problem()
    Z[3, 1] = np.nan
    H[3, 1] = np.nan
    with pytest.raises(ValueError):
        lcmat.get_method(name).select_features(embeddings=H, logits=Z, labels=y)
    with pytest.raises(ValueError):
        lcmat.get_method(name).select_features(labels=y)


def test_the_experiment_hands_deepfool_the_selection_model():
    from types import SimpleNamespace

    from lcmat.experiment import select_coreset as _select
    from lcmat.methods import MethodSpec, canonical_method
    model = linear_model(4, 3, 2)
    x = np.random.default_rng(5).normal(size=(30, 4))
    y = np.arange(30) % 3
    features = SimpleNamespace(model=model, train=Points(x, y), device="cpu")
    coreset, _ = _select(MethodSpec("deepfool"), 0.2, 0, y, features, {}, None)
    expected = lcmat.DeepFool(fraction=0.2).select(model, Points(x, y))
    np.testing.assert_array_equal(coreset.indices, expected.indices)
    assert canonical_method("Contextual-Diversity") == "cdiv" and canonical_method("LogDeterminant") == "logdet"


def test_deepfool_precomputed_scores_give_the_same_coreset_and_are_checked():
    model = linear_model(4, 3, 1)
    x = np.random.default_rng(4).normal(size=(30, 4))
    y = np.random.default_rng(5).integers(0, 3, 30)
    selector = lcmat.DeepFool(fraction=0.3, batch_size=8)
    scores = selector.attack_scores(model, Points(x, y), "cpu")
    fresh = selector.select(model, Points(x, y))
    reused = selector.select(model, Points(x, y), scores=scores)
    np.testing.assert_array_equal(reused.indices, fresh.indices)
    np.testing.assert_array_equal(reused.scores, fresh.scores)
    with pytest.raises(ValueError, match="scores"):
        selector.select(model, Points(x, y), scores=scores[:-1])
