"""GradMatch, Glister and AdaCore against their definitions, by brute force on tiny problems:
per-sample gradients materialised as n x C (D + 1) matrices (tests/brute_selectors.py), NNLS by
enumerating supports, every greedy step evaluated for every candidate."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import brute_selectors as B
import lcmat
from lcmat import reference as R
from lcmat.reference import adacore as adacore_module
from helpers import PairDataset

COUNTS = [25, 35, 11]
BACKENDS = [None] + [b for b in lcmat.ops.available_backends() if b in ("reference", "cpu")]


# ---------------------------------------------------------------------------------------------
# Brute-force definitions

def nnls_brute(A, b):
    """argmin_{w >= 0} w^T A w - 2 b^T w (A positive definite) by enumerating supports: the
    optimum is the one feasible support solution satisfying the KKT conditions."""
    k = len(b)
    best, best_value = np.zeros(k), 0.0
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            s = list(support)
            w = np.zeros(k)
            w[s] = np.linalg.solve(A[np.ix_(s, s)], b[s])
            if (w[s] >= 0).all():
                value = w @ A @ w - 2 * b @ w
                if value < best_value:
                    best, best_value = w, value
    return best, best_value


def omp_brute(g, t, k, lam):
    """The step-by-step definition on materialised gradients g [n, P] and target t [P]:
    (picks, final weights, smallest relative gap between a step's best and second correlation)."""
    r, picks, gap, w = t.copy(), [], np.inf, np.zeros(0)
    for _ in range(k):
        corr = g @ r
        corr[picks] = -np.inf
        j = int(np.argmax(corr))
        others = np.delete(corr, j)
        if np.isfinite(others).any():
            gap = min(gap, (corr[j] - others.max()) / max(abs(corr[j]), 1e-300))
        picks.append(j)
        gs = g[picks]
        w, _ = nnls_brute(gs @ gs.T + lam * np.eye(len(picks)), gs @ t)
        r = t - gs.T @ w
    return picks, w, gap


def omp_deepcore_brute(g, t, k, lam):
    """DeepCore's orthogonal_matching_pursuit_np, written out on materialised gradients."""
    r, picks = t.copy(), []
    for step in range(k):
        corr = g @ r
        corr[picks] = -np.inf
        j = int(np.argmax(corr))
        picks.append(j)
        gs = g[picks]
        if step == 0:
            x = np.array([corr[j] / (g[j] @ g[j])])
        else:
            x = np.linalg.solve(gs @ gs.T + lam * np.eye(len(picks)), gs @ t)
        r = t - gs.T @ x
    if k == 1:
        return picks, np.ones(1)
    M = g[picks] @ g[picks].T + lam * np.eye(k)
    w, _ = nnls_brute(M.T @ M, M.T @ (g[picks] @ t))  # min ||M w - v||, w >= 0
    return picks, w


def glister_brute(H, Z, y, Hv, Zv, yv, k, eta):
    """Glister's greedy with explicit parameters: theta_S = theta - eta sum g_s as a P-vector,
    validation logits from it, validation gradients materialised at every step."""
    C, D = Z.shape[1], H.shape[1]
    g = B.gradients(H, Z, y)
    delta = np.zeros(C * (D + 1))
    picks = []
    for _ in range(k):
        zv = Zv + delta[:C] + Hv @ delta[C:].reshape(C, D).T
        gains = g @ B.gradients(Hv, zv, yv).mean(0)
        gains[picks] = -np.inf
        j = int(np.argmax(gains))
        picks.append(j)
        delta -= eta * g[j]
    return picks


def adacore_distance_brute(H, Z, y, eps):
    u = B.gradients(H, Z, y) / (B.hessian_diagonals(H, Z, y) + eps)
    return np.sqrt(((u[:, None, :] - u[None, :, :]) ** 2).sum(2))


def error_factors(H, Z, y):
    return torch.tensor(H), torch.tensor(B.errors(Z, y))


# ---------------------------------------------------------------------------------------------
# Kernels: NNLS, the Gram identities, OMP, Glister's greedy, AdaCore's distance

@pytest.mark.parametrize("seed", range(8))
def test_nnls_quadratic_is_the_enumerated_optimum(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 7))
    M = rng.normal(size=(k, k + 2))
    A = M @ M.T + 0.1 * np.eye(k)
    b = rng.normal(size=k)
    expected, value = nnls_brute(A, b)
    got = R.nnls_quadratic(torch.tensor(A), torch.tensor(b)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-10)
    # warm starts (any feasible point) reach the same optimum
    start = torch.tensor(np.abs(rng.normal(size=k)))
    np.testing.assert_allclose(R.nnls_quadratic(torch.tensor(A), torch.tensor(b), start).numpy(), expected, atol=1e-10)


def test_nnls_quadratic_singular_system():
    """Two identical columns (lam = 0): the objective is still the minimum."""
    g = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    A, b = g @ g.T, g @ np.array([2.0, 1.0])
    w = R.nnls_quadratic(torch.tensor(A), torch.tensor(b)).numpy()
    assert (w >= 0).all()
    np.testing.assert_allclose(w @ A @ w - 2 * b @ w, -5.0, atol=1e-10)


def test_gradient_identities_match_materialised_gradients():
    H, Z, y = B.make_problem([9, 7], D=4, seed=1)
    g = B.gradients(H, Z, y)
    h, e = error_factors(H, Z, y)
    np.testing.assert_allclose(R.gradient_columns(h, e, [3, 0, 11]).numpy(), g @ g[[3, 0, 11]].T, rtol=1e-12)
    np.testing.assert_allclose(R.gradient_target_dot(h, e, h[:5], e[:5], 0.5).numpy(), g @ (0.5 * g[:5].sum(0)),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("lam", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("seed", range(4))
def test_omp_is_the_step_by_step_definition(seed, lam):
    H, Z, y = B.make_problem([14], D=3, seed=seed, logit_scale=3.0)
    y = np.random.default_rng(seed).integers(0, 3, len(y))  # one group, several labels
    Z = np.concatenate([Z, Z[:, :1] - 1.0, Z[:, :1] + 0.5], axis=1)[:, :3]
    g = B.gradients(H, Z, y)
    t = g.sum(0)
    k = 5
    picks, w, gap = omp_brute(g, t, k, lam)
    assert gap > 1e-6, "near-tie: choose another problem"
    h, e = error_factors(H, Z, y)
    got_picks, got_w = R.omp_last_layer(h, e, torch.tensor(g @ t), k, lam)
    assert got_picks.tolist() == picks
    np.testing.assert_allclose(got_w.numpy(), w, rtol=1e-7, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), C=st.integers(1, 3), D=st.integers(1, 3), lam=st.sampled_from([0.1, 1.0]),
       scale=st.sampled_from([0.3, 3.0]), seed=st.integers(0, 10 ** 6), data=st.data())
def test_omp_definition_fuzz(n, C, D, lam, scale, seed, data):
    """Tiny ragged shapes, one-logit problems (zero gradients), k up to n."""
    rng = np.random.default_rng(seed)
    H, Z, y = scale * rng.normal(size=(n, D)), 2 * rng.normal(size=(n, C)), rng.integers(0, C, n)
    k = data.draw(st.integers(0, n))
    g = B.gradients(H, Z, y)
    t = g.sum(0)
    picks, w, gap = omp_brute(g, t, k, lam)
    assume(gap > 1e-6 or C == 1)
    h, e = error_factors(H, Z, y)
    got_picks, got_w = R.omp_last_layer(h, e, torch.tensor(g @ t), k, lam)
    if C > 1:
        assert got_picks.tolist() == picks
        np.testing.assert_allclose(got_w.numpy(), w, rtol=1e-6, atol=1e-9)
    else:  # every gradient is zero: k distinct picks, weight 0
        assert sorted(got_picks.tolist()) == list(range(k)) and not got_w.any()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 8), m=st.integers(1, 6), C=st.integers(2, 3), D=st.integers(1, 3),
       eta=st.sampled_from([0.0, 0.5, 3.0]), seed=st.integers(0, 10 ** 6), data=st.data())
def test_glister_definition_fuzz(n, m, C, D, eta, seed, data):
    rng = np.random.default_rng(seed)
    H, Z, y = rng.normal(size=(n, D)), 2 * rng.normal(size=(n, C)), rng.integers(0, C, n)
    Hv, Zv, yv = rng.normal(size=(m, D)), 2 * rng.normal(size=(m, C)), rng.integers(0, C, m)
    k = data.draw(st.integers(0, n))
    expected = glister_brute(H, Z, y, Hv, Zv, yv, k, eta)
    h, e = error_factors(H, Z, y)
    picks, _ = R.glister_greedy(h, e, torch.tensor(Hv), torch.tensor(Zv), torch.tensor(yv), k, eta)
    assert picks.tolist() == expected


@pytest.mark.parametrize("seed", range(3))
def test_omp_objective_against_exhaustive_subsets(seed):
    """OMP is greedy: its objective lies at or above the best k-subset's (all subsets, NNLS on
    each), and its weights are the NNLS optimum on its own picks."""
    H, Z, y = B.make_problem([4, 4], D=2, seed=seed)
    g = B.gradients(H, Z, y)
    t = g.sum(0)
    lam, k = 0.5, 3
    h, e = error_factors(H, Z, y)
    picks, w = R.omp_last_layer(h, e, torch.tensor(g @ t), k, lam)
    picks, w = picks.numpy(), w.numpy()

    def objective(subset, weights):
        return np.sum((g[list(subset)].T @ weights - t) ** 2) + lam * np.sum(weights ** 2)

    best = min(objective(s, nnls_brute(g[list(s)] @ g[list(s)].T + lam * np.eye(k), g[list(s)] @ t)[0])
               for s in itertools.combinations(range(len(g)), k))
    mine = objective(picks, w)
    assert best <= mine + 1e-9
    own = nnls_brute(g[picks] @ g[picks].T + lam * np.eye(k), g[picks] @ t)[0]
    np.testing.assert_allclose(w, own, atol=1e-9)


def test_omp_picks_k_even_with_a_zero_residual():
    """One-label groups have e = 0 for C = 1: every correlation is 0; still k distinct picks."""
    h = torch.randn(6, 3, dtype=torch.float64)
    e = torch.zeros(6, 1, dtype=torch.float64)
    picks, w = R.omp_last_layer(h, e, torch.zeros(6, dtype=torch.float64), 4, 0.5)
    assert picks.tolist() == [0, 1, 2, 3] and torch.equal(w, torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(3))
def test_omp_deepcore_is_deepcores_code(seed):
    H, Z, y = B.make_problem([7, 6], D=3, seed=seed)
    g = B.gradients(H, Z, y)
    t = g.mean(0)
    for k in (1, 4):
        picks, w = omp_deepcore_brute(g, t, k, 1.0)
        h, e = error_factors(H, Z, y)
        got_picks, got_w = R.omp_last_layer_deepcore(h, e, torch.tensor(g @ t), k, 1.0)
        assert got_picks.tolist() == picks
        np.testing.assert_allclose(got_w.numpy(), w, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 0.3, 2.0])
@pytest.mark.parametrize("seed", range(3))
def test_glister_greedy_is_the_definition(seed, eta):
    H, Z, y = B.make_problem([8, 7, 6], D=3, seed=seed)
    Hv, Zv, yv = B.make_problem([5, 4, 6], D=3, seed=seed + 50)
    k = 6
    expected = glister_brute(H, Z, y, Hv, Zv, yv, k, eta)
    h, e = error_factors(H, Z, y)
    picks, gains = R.glister_greedy(h, e, torch.tensor(Hv), torch.tensor(Zv), torch.tensor(yv), k, eta)
    assert picks.tolist() == expected


def test_glister_update_step_matters_on_this_problem():
    """The eta > 0 cases above can fail: with the update step the picks differ from the top k."""
    H, Z, y = B.make_problem([8, 7, 6], D=3, seed=0)
    assert glister_brute(H, Z, y, H, Z, y, 6, 2.0) != glister_brute(H, Z, y, H, Z, y, 6, 0.0)


@pytest.mark.parametrize("chunk", [1, 7, 2 ** 22])
def test_adacore_distance_matches_materialised_preconditioned_gradients(chunk, monkeypatch):
    monkeypatch.setattr(adacore_module, "CHUNK_ELEMENTS", chunk)
    H, Z, y = B.make_problem([9, 8], D=4, seed=2)
    H[0, 1] = 0.0  # an exact zero embedding coordinate: eps keeps the division finite
    h, e = error_factors(H, Z, y)
    _, q = R.last_layer_factors(torch.tensor(Z), torch.tensor(y))
    got = R.adacore_distance(h, e, q, 1e-3).numpy()
    np.testing.assert_allclose(got, adacore_distance_brute(H, Z, y, 1e-3), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Selectors against the definitions

def per_class(y, fraction):
    for c, k in enumerate(B.budgets(y, fraction)):
        yield c, k, np.flatnonzero(y == c)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lam", [0.5, 0.0])
def test_gradmatch_is_the_definition(lam, backend):
    H, Z, y = B.make_problem(COUNTS, D=4, seed=3)
    cs = lcmat.GradMatch(fraction=0.2, lam=lam, dtype=torch.float64, backend=backend).select_features(
        embeddings=H, logits=Z, labels=y)
    for c, k, members in per_class(y, 0.2):
        g = B.gradients(H[members], Z[members], y[members])
        picks, w, gap = omp_brute(g, g.sum(0), k, lam)
        assert gap > 1e-6
        order = np.argsort(members[picks])
        mine = y[cs.indices] == c
        np.testing.assert_array_equal(cs.indices[mine], members[picks][order])
        np.testing.assert_allclose(cs.weights[mine], w[order], rtol=2e-6)


def test_gradmatch_weights_count_samples():
    """The target is the class's gradient sum, so the weights add up to about the class size
    (exactly at fraction 1 with lam = 0: the all-ones weights match exactly)."""
    H, Z, y = B.make_problem([12, 9], D=3, seed=4)
    cs = lcmat.GradMatch(fraction=1.0, lam=0.0, dtype=torch.float64).select_features(embeddings=H, logits=Z, labels=y)
    per = np.bincount(y[cs.indices], weights=cs.weights, minlength=2)
    g0 = B.gradients(H[y == 0], Z[y == 0], y[y == 0])
    w0 = cs.weights[y[cs.indices] == 0]
    np.testing.assert_allclose(g0.T @ w0, g0.sum(0), atol=1e-6)  # the class gradient is matched exactly
    assert 0.5 * 12 < per[0] < 2 * 12 and 0.5 * 9 < per[1] < 2 * 9


def test_gradmatch_global_budget_is_the_definition():
    H, Z, y = B.make_problem(COUNTS, D=4, seed=5)
    cs = lcmat.GradMatch(fraction=0.1, balance=False, dtype=torch.float64).select_features(
        embeddings=H, logits=Z, labels=y)
    g = B.gradients(H, Z, y)
    picks, w, gap = omp_brute(g, g.sum(0), round(0.1 * len(y)), 0.5)
    assert gap > 1e-6
    order = np.argsort(picks)
    np.testing.assert_array_equal(cs.indices, np.array(picks)[order])
    np.testing.assert_allclose(cs.weights, w[order], rtol=2e-6)


@pytest.mark.parametrize("form", ["tuple", "dict", "npz"])
def test_gradmatch_val_matches_the_classes_validation_gradient(form, tmp_path):
    H, Z, y = B.make_problem(COUNTS, D=4, seed=6)
    Hv, Zv, yv = B.make_problem([6, 5, 4], D=4, seed=60)
    validation = {"tuple": (Hv, Zv, yv), "dict": {"embeddings": Hv, "logits": Zv, "labels": yv}}.get(form)
    if form == "npz":
        validation = str(tmp_path / "val.npz")
        np.savez(validation, embeddings=Hv, logits=Zv, labels=yv)
    cs = lcmat.GradMatch(fraction=0.2, validation=validation, dtype=torch.float64).select_features(
        embeddings=H, logits=Z, labels=y)
    for c, k, members in per_class(y, 0.2):
        g = B.gradients(H[members], Z[members], y[members])
        gv = B.gradients(Hv[yv == c], Zv[yv == c], yv[yv == c])
        picks, w, _ = omp_brute(g, len(members) * gv.mean(0), k, 0.5)
        order = np.argsort(members[picks])
        mine = y[cs.indices] == c
        np.testing.assert_array_equal(cs.indices[mine], members[picks][order])
        np.testing.assert_allclose(cs.weights[mine], w[order], rtol=2e-6)


def test_gradmatch_deepcore_option_is_deepcores_code():
    H, Z, y = B.make_problem(COUNTS, D=4, seed=7)
    cs = lcmat.GradMatch(fraction=0.2, lam=1.0, deepcore=True, dtype=torch.float64).select_features(
        embeddings=H, logits=Z, labels=y)
    for c, k, members in per_class(y, 0.2):
        g = B.gradients(H[members], Z[members], y[members])
        picks, w = omp_deepcore_brute(g, g.mean(0), k, 1.0)
        order = np.argsort(members[picks])
        mine = y[cs.indices] == c
        np.testing.assert_array_equal(cs.indices[mine], members[picks][order])
        np.testing.assert_allclose(cs.weights[mine], w[order], rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_glister_is_the_definition(eta, backend):
    H, Z, y = B.make_problem(COUNTS, D=4, seed=8)
    cs = lcmat.Glister(fraction=0.2, eta=eta, dtype=torch.float64, backend=backend).select_features(
        embeddings=H, logits=Z, labels=y)
    assert cs.weights is None
    for c, k, members in per_class(y, 0.2):
        Hc, Zc, yc = H[members], Z[members], y[members]
        expected = sorted(members[glister_brute(Hc, Zc, yc, Hc, Zc, yc, k, eta)])
        np.testing.assert_array_equal(cs.indices[y[cs.indices] == c], expected)


def test_glister_val_and_global_budget_are_the_definition():
    H, Z, y = B.make_problem(COUNTS, D=4, seed=9)
    Hv, Zv, yv = B.make_problem([6, 5, 4], D=4, seed=90)
    cs = lcmat.Glister(fraction=0.2, eta=0.5, validation=(Hv, Zv, yv), dtype=torch.float64).select_features(
        embeddings=H, logits=Z, labels=y)
    for c, k, members in per_class(y, 0.2):
        v = yv == c
        expected = sorted(members[glister_brute(H[members], Z[members], y[members], Hv[v], Zv[v], yv[v], k, 0.5)])
        np.testing.assert_array_equal(cs.indices[y[cs.indices] == c], expected)
    cs = lcmat.Glister(fraction=0.1, eta=0.5, balance=False, validation=(Hv, Zv, yv),
                       dtype=torch.float64).select_features(embeddings=H, logits=Z, labels=y)
    np.testing.assert_array_equal(cs.indices, sorted(glister_brute(H, Z, y, Hv, Zv, yv, round(0.1 * len(y)), 0.5)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eps", [1e-4, 1e-2])
def test_adacore_is_facility_location_on_preconditioned_gradients(eps, backend):
    H, Z, y = B.make_problem(COUNTS, D=4, seed=10)
    cs = lcmat.AdaCore(fraction=0.2, eps=eps, dtype=torch.float64, backend=backend).select_features(
        embeddings=H, logits=Z, labels=y)
    for c, k, members in per_class(y, 0.2):
        D = adacore_distance_brute(H[members], Z[members], y[members], eps)
        mine = y[cs.indices] == c
        local = np.searchsorted(members, cs.indices[mine])
        assert len(local) == k
        # the greedy's picks, up to exact ties (outliers that only cover themselves gain L each)
        order = B.greedy_order(D, local, D.max(), 1e-9)
        assert order is not None, f"class {c}: not the greedy picks {sorted(B.facility_location(D, k, D.max())[0])}"
        np.testing.assert_array_equal(cs.weights[mine], B.cluster_sizes(D, order)[np.argsort(order)])
    # cluster sizes partition every class
    np.testing.assert_array_equal(np.bincount(y[cs.indices], weights=cs.weights, minlength=3), COUNTS)


def test_adacore_preconditioning_matters_on_this_problem():
    """The test above can fail: CRAIG (no preconditioning) picks differently here."""
    H, Z, y = B.make_problem(COUNTS, D=4, seed=10)
    ada = lcmat.AdaCore(fraction=0.2, dtype=torch.float64).select_features(embeddings=H, logits=Z, labels=y)
    craig = lcmat.CRAIG(fraction=0.2, dtype=torch.float64).select_features(embeddings=H, logits=Z, labels=y)
    assert not np.array_equal(ada.indices, craig.indices)


# ---------------------------------------------------------------------------------------------
# Bad input

@pytest.mark.parametrize("name", ["gradmatch", "glister", "adacore"])
def test_bad_features_are_refused(name):
    H, Z, y = B.make_problem(COUNTS, D=4, seed=11)
    bad = H.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="^embeddings"):
        lcmat.get_method(name).select_features(embeddings=bad, logits=Z, labels=y)
    with pytest.raises(ValueError, match="^logits"):
        lcmat.get_method(name).select_features(embeddings=H, logits=Z[:-1], labels=y)
    with pytest.raises(ValueError, match="^logits"):
        lcmat.get_method(name).select_features(embeddings=H, labels=y)
    with pytest.raises(ValueError, match="^labels"):
        lcmat.get_method(name).select_features(embeddings=H, logits=Z, labels=np.where(y == 1, 2, y))


@pytest.mark.parametrize("options,argument", [
    (dict(lam=-1.0), "lam"), (dict(deepcore="yes"), "deepcore"), (dict(validation=3), "validation"),
    (dict(validation=(1, 2)), "validation"), (dict(validation="/no/such/file.npz"), "validation"),
    (dict(validation={"embeddings": 1}), "validation")])
def test_gradmatch_bad_options(options, argument):
    with pytest.raises(ValueError, match=f"^{argument}"):
        lcmat.GradMatch(**options)


@pytest.mark.parametrize("cls,options,argument", [
    (lcmat.Glister, dict(eta=-0.1), "eta"), (lcmat.Glister, dict(eta=float("nan")), "eta"),
    (lcmat.AdaCore, dict(eps=0.0), "eps"), (lcmat.AdaCore, dict(eps=-1.0), "eps")])
def test_glister_and_adacore_bad_options(cls, options, argument):
    with pytest.raises(ValueError, match=f"^{argument}"):
        cls(**options)


@pytest.mark.parametrize("cls", [lcmat.GradMatch, lcmat.Glister])
def test_bad_validation_sets(cls):
    H, Z, y = B.make_problem(COUNTS, D=4, seed=12)
    Hv, Zv, yv = B.make_problem([4, 4, 4], D=4, seed=13)
    nan = Hv.copy()
    nan[0, 0] = np.inf
    for validation, pattern in [((nan, Zv, yv), "validation: embeddings"),
                                ((Hv[:, :3], Zv, yv), "validation: embeddings have 3 columns"),
                                ((Hv, Zv[:, :2], yv), "validation: num_classes|validation: logits"),
                                ((Hv, Zv, yv[:-1]), "validation: logits|validation: embeddings"),
                                ((Hv[yv < 2], Zv[yv < 2], yv[yv < 2]), "validation: labels")]:
        with pytest.raises(ValueError, match=f"^{pattern}"):
            cls(validation=validation).select_features(embeddings=H, logits=Z, labels=y)
    with pytest.raises(ValueError, match="^validation: a dataset"):
        cls(validation=torch.utils.data.TensorDataset(torch.zeros(3, 2))).select_features(
            embeddings=H, logits=Z, labels=y)


def test_non_finite_weights_raise(monkeypatch):
    H, Z, y = B.make_problem(COUNTS, D=4, seed=14)
    monkeypatch.setattr(lcmat.ops, "omp_last_layer", lambda *a, **kw: (torch.arange(a[3]), torch.full((a[3],), np.nan)))
    with pytest.raises(RuntimeError, match="gradmatch: the weights are not finite"):
        lcmat.GradMatch(fraction=0.2).select_features(embeddings=H, logits=Z, labels=y)


# ---------------------------------------------------------------------------------------------
# select(model, dataset) with a validation dataset



@pytest.mark.parametrize("cls", [lcmat.GradMatch, lcmat.Glister])
def test_select_with_a_validation_dataset(cls):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, xv = torch.randn(40, 4), torch.randn(15, 4)
    y = np.repeat([0, 1, 2], [15, 13, 12])
    yv = np.repeat([0, 1, 2], 5)

    def features(inputs):
        captured = []
        handle = model[2].register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
        with torch.no_grad():
            logits = model(inputs)
        handle.remove()
        return captured[0], logits

    h, z = features(x)
    hv, zv = features(xv)
    by_hand = cls(fraction=0.2, validation=(hv, zv, yv)).select_features(embeddings=h, logits=z, labels=y)
    from_model = cls(fraction=0.2, validation=PairDataset(xv, yv), progress=False).select(
        model, PairDataset(x, y), batch_size=16)
    np.testing.assert_array_equal(from_model.indices, by_hand.indices)


def test_command_line_lists_and_runs_the_methods(tmp_path):
    """`lcmat select --method gradmatch` with a validation .npz, through the CLI's own parser."""
    from lcmat import cli
    H, Z, y = B.make_problem(COUNTS, D=4, seed=15)
    features = tmp_path / "f.npz"
    np.savez(features, embeddings=H, logits=Z, labels=y)
    out = tmp_path / "cs.npz"
    for method in ("gradmatch", "glister", "adacore"):
        assert method in lcmat.METHODS
    cli.main(["select", "--method", "gradmatch", "--features", str(features), "--fraction", "0.2",
              "--validation", str(features), "--out", str(out)])
    assert out.exists()
