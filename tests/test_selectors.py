"""Every selector of lcmat.METHODS against its DEFINITION (docs/design.md), by brute force on small
synthetic problems: budgets, index bookkeeping, determinism, and the property that defines each
method (tests/brute_selectors.py holds the materialised definitions)."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import brute_selectors as B
import lcmat
from helpers import PairDataset

# Methods that select from features (DeepFool needs the model itself: tests/test_diversity.py).
METHODS = sorted(name for name, cls in lcmat.METHODS.items() if not getattr(cls, "needs_model", False))
SCORE_METHODS = ["grand", "el2n", "least_confidence", "entropy", "margin", "forgetting", "fdmat"]
RANDOM_METHODS = ["uniform", "kcenter"]
# The kernel backends selectors run on here: the defining tests run on each (None = automatic).
BACKENDS = [None] + [b for b in lcmat.ops.available_backends() if b in ("reference", "cpu")]
COUNTS = [25, 35, 11]          # fraction 0.1: round(2.5) = 2 (half to even), round(3.5) = 4, round(1.1) = 1


def problem(counts=COUNTS, seed=0, D=5):
    """Non-negative embeddings (FDMat's domain, fine for every method), logits, labels, and
    forgetting counts with many ties."""
    H, Z, y = B.make_problem(counts, D=D, seed=seed, nonneg=True)
    forgetting = np.random.default_rng(seed + 100).integers(0, 4, len(y))
    return H, Z, y, forgetting


def convert(H, Z, y, kind, dtype):
    if kind == "numpy":
        return H.astype(dtype), Z.astype(dtype), y
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    # Non-contiguous views on purpose: the transpose of a transposed copy.
    H = torch.tensor(H.T, dtype=tdtype).T
    Z = torch.tensor(Z.T, dtype=tdtype).T
    return H, Z, torch.tensor(y)


def run(name, H, Z, y, forgetting=None, **options):
    extra = {"forgetting": forgetting} if name == "forgetting" else {}
    return lcmat.get_method(name, **options).select_features(embeddings=H, logits=Z, labels=y, **extra)


def top_k(scores, positions, k, largest):
    """The k positions of largest (or smallest) score, lower index first on ties."""
    sign = -1.0 if largest else 1.0
    return sorted(sorted(positions, key=lambda i: (sign * scores[i], i))[:k])


# ---------------------------------------------------------------------------------------------
# Budgets and index bookkeeping, every method

def test_budget_rule_is_python_round():
    assert B.budgets(np.repeat([0, 1, 2], COUNTS), 0.1) == [2, 4, 1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("name", METHODS)
def test_per_class_budgets_and_valid_indices(name, kind, dtype):
    H, Z, y, forgetting = problem()
    cs = run(name, *convert(H, Z, y, kind, dtype), forgetting=forgetting, fraction=0.1)
    assert isinstance(cs, lcmat.Coreset)
    assert cs.indices.dtype == np.int64 and cs.indices.ndim == 1
    assert np.all(np.diff(cs.indices) > 0), "indices must be sorted and unique"
    assert cs.indices.min() >= 0 and cs.indices.max() < len(y)
    np.testing.assert_array_equal(np.bincount(y[cs.indices], minlength=3), [2, 4, 1])
    if cs.weights is not None:
        assert cs.weights.dtype == np.float32 and cs.weights.shape == cs.indices.shape
    if cs.scores is not None:
        assert cs.scores.shape == (len(y),) and np.isfinite(cs.scores).all()


@pytest.mark.parametrize("name", METHODS)
def test_global_budget(name):
    H, Z, y, forgetting = problem()
    cs = run(name, H, Z, y, forgetting=forgetting, fraction=0.3, balance=False)
    assert len(cs.indices) == round(0.3 * len(y)) == 21
    assert np.all(np.diff(cs.indices) > 0) and cs.indices.max() < len(y)
    if name in SCORE_METHODS:
        keep_largest = name not in ("margin", "fdmat")
        expected = top_k(cs.scores, range(len(y)), 21, keep_largest)
        np.testing.assert_array_equal(cs.indices, expected)


@pytest.mark.parametrize("name", METHODS)
def test_global_budget_rounds_half_to_even(name):
    """N = 25 at fraction 0.1: round(2.5) = 2; N = 35: round(3.5) = 4."""
    for counts, k in (([10, 15], 2), ([20, 15], 4)):
        H, Z, y, forgetting = problem(counts=counts)
        cs = run(name, H, Z, y, forgetting=forgetting, fraction=0.1, balance=False)
        assert len(cs.indices) == k


@pytest.mark.parametrize("name", METHODS)
def test_fraction_one_selects_everything(name):
    H, Z, y, forgetting = problem(counts=[6, 3, 4])
    cs = run(name, H, Z, y, forgetting=forgetting, fraction=1.0)
    np.testing.assert_array_equal(cs.indices, np.arange(len(y)))


@pytest.mark.parametrize("name", METHODS)
def test_indices_are_original_dataset_indices(name):
    """Select on a shuffled copy (each class keeps its internal order, so tie-breaking, compat
    batching and per-class random draws see the same class), map back: the same samples."""
    H, Z, y, forgetting = problem()
    options = {"fraction": 0.2, "dtype": torch.float64}
    if name in ("lcmat", "craig"):
        options.update(weights=True)
    cs = run(name, H, Z, y, forgetting=forgetting, **options)
    perm = B.class_order_preserving_shuffle(y, seed=3)
    assert not np.array_equal(perm, np.arange(len(y)))
    shuffled = run(name, H[perm], Z[perm], y[perm], forgetting=forgetting[perm], **options)
    back = perm[shuffled.indices]
    order = np.argsort(back)
    np.testing.assert_array_equal(back[order], cs.indices)
    if cs.weights is not None:
        np.testing.assert_array_equal(shuffled.weights[order], cs.weights)
    if cs.scores is not None:
        np.testing.assert_allclose(shuffled.scores, cs.scores[perm], rtol=1e-9, atol=1e-12)


def test_lcmat_compat_indices_under_shuffle():
    H, Z, y, _ = problem()
    options = dict(fraction=0.2, mode="compat", batch_size=4, rho=1.0, num_coords=6, dtype=torch.float64)
    cs = lcmat.LCMat(**options).select_features(embeddings=H, logits=Z, labels=y)
    perm = B.class_order_preserving_shuffle(y, seed=4)
    shuffled = lcmat.LCMat(**options).select_features(embeddings=H[perm], logits=Z[perm], labels=y[perm])
    np.testing.assert_array_equal(np.sort(perm[shuffled.indices]), cs.indices)


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_for_a_seed(name):
    H, Z, y, forgetting = problem()
    first = run(name, H, Z, y, forgetting=forgetting, fraction=0.2, seed=7)
    again = run(name, H, Z, y, forgetting=forgetting, fraction=0.2, seed=7)
    np.testing.assert_array_equal(first.indices, again.indices)


@pytest.mark.parametrize("balance", [True, False])
@pytest.mark.parametrize("name", RANDOM_METHODS)
def test_random_methods_change_with_the_seed(name, balance):
    H, Z, y, _ = problem()
    picks = {tuple(run(name, H, Z, y, fraction=0.2, seed=s, balance=balance).indices) for s in range(5)}
    assert len(picks) >= 4


def test_uniform_draws_distinct_samples_of_each_class():
    y = np.repeat([0, 1, 2, 3], [2, 3, 9, 40])
    y = y[np.random.default_rng(0).permutation(len(y))]
    for seed in range(5):
        cs = lcmat.Uniform(fraction=0.5, seed=seed).select_features(labels=y)
        counts = np.bincount(y[cs.indices], minlength=4)
        np.testing.assert_array_equal(counts, [round(0.5 * n) for n in (2, 3, 9, 40)])
        assert len(np.unique(cs.indices)) == len(cs.indices)


@pytest.mark.parametrize("name", METHODS)
@given(counts=st.lists(st.integers(1, 12), min_size=1, max_size=4),
       fraction=st.sampled_from([0.05, 0.1, 0.25, 0.3, 0.5, 0.75, 1.0]),
       D=st.integers(1, 4), seed=st.integers(0, 10 ** 6))
def test_budgets_fuzz(name, counts, fraction, D, seed):
    """Ragged tiny classes (one-sample ones included): either k_c = round(fraction * n_c) per
    class, or, when some k_c is 0, a ValueError naming fraction and the first such class."""
    assume(not (name == "margin" and len(counts) == 1))  # see test_margin_with_a_single_logit_column
    H, Z, y = B.make_problem(counts, D=D, seed=seed, nonneg=True)
    forgetting = np.random.default_rng(seed).integers(0, 3, len(y))
    budgets = B.budgets(y, fraction)
    if min(budgets) == 0:
        with pytest.raises(ValueError, match=rf"^fraction\b.*class {budgets.index(0)}\b"):
            run(name, H, Z, y, forgetting=forgetting, fraction=fraction)
        return
    cs = run(name, H, Z, y, forgetting=forgetting, fraction=fraction)
    np.testing.assert_array_equal(np.bincount(y[cs.indices], minlength=len(counts)), budgets)
    assert np.all(np.diff(cs.indices) > 0)


# ---------------------------------------------------------------------------------------------
# LCMat-S and CRAIG: facility location on materialised gradients and Hessian diagonals

# (rho, num_coords, embedding scale): a scale of 20 makes distances exceed 10, so that the
# facility-location constant L matters (paper: max D, compat: 10).
LCMAT_CASES = [(0.01, 100, 1.0), (1.0, 6, 1.0), (5.0, 4, 1.0), (0.0, 0, 1.0), (0.01, 100, 20.0)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rho,num_coords,h_scale", LCMAT_CASES)
def test_lcmat_paper_mode_is_the_definition(rho, num_coords, h_scale, backend):
    H, Z, y = B.make_problem(COUNTS, D=5, seed=1)
    H = H * h_scale
    cs = lcmat.LCMat(fraction=0.2, rho=rho, num_coords=num_coords, weights=True,
                     dtype=torch.float64, backend=backend).select_features(embeddings=H, logits=Z, labels=y)
    B.check_lcmat(cs.indices, cs.weights, H, Z, y, 0.2, rho, num_coords, "paper")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_lcmat_float32_inputs_match_the_definition(kind, backend):
    """float32 features, float32 kernels: the float64 definition on the same float32 values,
    with gains within 1e-4 of a step's best counted as ties."""
    H, Z, y = B.make_problem(COUNTS, D=5, seed=2)
    H32, Z32, y_in = convert(H, Z, y, kind, np.float32)
    cs = lcmat.LCMat(fraction=0.2, rho=1.0, num_coords=6, weights=True, backend=backend).select_features(
        embeddings=H32, logits=Z32, labels=y_in)
    H64, Z64 = np.asarray(H.astype(np.float32), np.float64), np.asarray(Z.astype(np.float32), np.float64)
    B.check_lcmat(cs.indices, cs.weights, H64, Z64, y, 0.2, 1.0, 6, "paper", rtol=1e-4)


@given(counts=st.lists(st.integers(1, 9), min_size=1, max_size=3), D=st.integers(1, 4),
       num_coords=st.integers(0, 12), rho=st.sampled_from([0.0, 0.01, 1.0, 10.0]),
       mode=st.sampled_from(["paper", "compat"]), batch_size=st.integers(1, 5),
       h_scale=st.sampled_from([1.0, 30.0]), seed=st.integers(0, 10 ** 6))
def test_lcmat_definition_fuzz(counts, D, num_coords, rho, mode, batch_size, h_scale, seed):
    """Tiny ragged shapes, one-class problems (all gradients zero), K above P = C (D + 1)."""
    H, Z, y = B.make_problem(counts, D=D, seed=seed)
    H = h_scale * H
    fraction = 0.5 if min(counts) > 1 else 1.0  # round(0.5 * 1) = 0: one-sample classes take all
    cs = lcmat.LCMat(fraction=fraction, rho=rho, num_coords=num_coords, mode=mode, batch_size=batch_size,
                     weights=True, dtype=torch.float64).select_features(embeddings=H, logits=Z, labels=y)
    B.check_lcmat(cs.indices, cs.weights, H, Z, y, fraction, rho, num_coords, mode, batch_size)


def test_lcmat_coordinate_set_matters_on_this_problem():
    """The (5.0, 4) case above can fail: picking the coordinates wrongly changes the picks."""
    H, Z, y = B.make_problem(COUNTS, D=5, seed=1)
    top4 = B.lcmat_select(H, Z, y, 0.2, rho=5.0, K=4)[0]
    all18 = B.lcmat_select(H, Z, y, 0.2, rho=5.0, K=18)[0]
    assert not np.array_equal(top4, all18)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("counts,D", [([40, 300, 33], 48), ([6] * 34, 40)])
def test_lcmat_float32_wide_features_match_the_definition(counts, D, backend):
    """Shapes where the cpu backend's AVX-512 Gram kernel (float32, 32+ columns) replaces ATen's
    GEMM where built with it: the embeddings' Gram across 256-row blocks (a class of 300), and
    the error factors' Gram (34 classes); picks and weights are still the definition's."""
    H, Z, y = B.make_problem(counts, D=D, seed=7)
    cs = lcmat.LCMat(fraction=0.2, rho=1.0, num_coords=6, weights=True, backend=backend).select_features(
        embeddings=H.astype(np.float32), logits=Z.astype(np.float32), labels=y)
    H64, Z64 = H.astype(np.float32).astype(np.float64), Z.astype(np.float32).astype(np.float64)
    B.check_lcmat(cs.indices, cs.weights, H64, Z64, y, 0.2, 1.0, 6, "paper", rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["paper", "compat"])
@pytest.mark.parametrize("threads,batch_bytes,runs", [(1, 2 ** 29, []), (3, 2 ** 29, [3, 3]), (3, 1, []),
                                                       (8, 30 * 30 * 8 + 12 * 12 * 8, [2, 4])])
def test_lcmat_batched_greedy_is_the_definition(threads, batch_bytes, runs, mode, backend, monkeypatch):
    """Classes go to one batched greedy in runs (as many as the threads, their blocks within
    BATCH_BYTES; a run of one takes the one-block greedy): the definition's picks and weights
    however the classes are grouped."""
    calls = []
    batch = lcmat.ops.facility_location_greedy_batch
    monkeypatch.setattr(lcmat.ops, "facility_location_greedy_batch",
                        lambda dists, *a, **kw: calls.append(len(dists)) or batch(dists, *a, **kw))
    monkeypatch.setattr(lcmat.LCMat, "BATCH_BYTES", batch_bytes)
    counts = [12, 30, 2, 25, 8, 17, 9]
    H, Z, y = B.make_problem(counts, D=4, seed=3)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cs = lcmat.LCMat(fraction=0.3, rho=1.0, num_coords=5, mode=mode, batch_size=4, weights=True,
                         dtype=torch.float64, backend=backend).select_features(embeddings=H, logits=Z, labels=y)
    finally:
        torch.set_num_threads(before)
    B.check_lcmat(cs.indices, cs.weights, H, Z, y, 0.3, 1.0, 5, mode, 4)
    assert calls == runs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rho,num_coords,h_scale", LCMAT_CASES)
def test_lcmat_compat_mode_is_the_definition(rho, num_coords, h_scale, backend):
    """s_i = 1 / b_i over per-class batches of 4 in dataset order (n_c = 25, 35, 11 leave last
    batches of 1, 3, 3), L = 10."""
    H, Z, y = B.make_problem(COUNTS, D=5, seed=1)
    H = H * h_scale
    cs = lcmat.LCMat(fraction=0.2, rho=rho, num_coords=num_coords, mode="compat", batch_size=4,
                     weights=True, dtype=torch.float64, backend=backend).select_features(
        embeddings=H, logits=Z, labels=y)
    B.check_lcmat(cs.indices, cs.weights, H, Z, y, 0.2, rho, num_coords, "compat", batch_size=4)


def test_lcmat_compat_scaling_matters_on_this_problem():
    """The compat test can fail: without the 1 / b_i scaling (L = 10 kept) the picks differ."""
    H, Z, y = B.make_problem(COUNTS, D=5, seed=1)
    scaled = B.lcmat_select(H, Z, y, 0.2, 0.01, 100, "compat", batch_size=4)[0]
    unscaled = B.lcmat_select(H, Z, y, 0.2, 0.01, 100, "compat", batch_size=10 ** 6)[0]
    assert not np.array_equal(scaled, unscaled)


def test_facility_location_constant_matters_on_this_problem():
    """With embeddings scaled by 20, L = 10 (compat) and L = max D (paper) pick differently, so
    the h_scale = 20 cases above can fail on the wrong L."""
    H, Z, y = B.make_problem(COUNTS, D=5, seed=1)
    H = 20.0 * H
    for c, k in enumerate(B.budgets(y, 0.2)):
        members = np.flatnonzero(y == c)
        D = B.lcmat_distance(H[members], Z[members], y[members], 0.01, 100, B.compat_scale(len(members), 4))
        assert sorted(B.facility_location(D, k, 10.0)[0]) != sorted(B.facility_location(D, k, D.max())[0])


@pytest.mark.parametrize("mode", ["paper", "compat"])
def test_lcmat_with_rho_zero_is_craig(mode):
    H, Z, y = B.make_problem([30, 17, 22, 9], D=6, seed=5)
    lc = lcmat.LCMat(fraction=0.25, rho=0.0, mode=mode, batch_size=8, weights=True).select_features(
        embeddings=H, logits=Z, labels=y)
    craig = lcmat.CRAIG(fraction=0.25, mode=mode, batch_size=8).select_features(
        embeddings=H, logits=Z, labels=y)
    np.testing.assert_array_equal(lc.indices, craig.indices)
    np.testing.assert_array_equal(lc.weights, craig.weights)
    # CRAIG returns its cluster-size weights by default; they partition each class.
    per_class = np.bincount(y[craig.indices], weights=craig.weights, minlength=4)
    np.testing.assert_array_equal(per_class, [30, 17, 22, 9])


@pytest.mark.parametrize("backend", BACKENDS)
def test_craig_is_the_definition(backend):
    H, Z, y = B.make_problem(COUNTS, D=5, seed=6)
    cs = lcmat.CRAIG(fraction=0.2, dtype=torch.float64, backend=backend).select_features(embeddings=H, logits=Z, labels=y)
    B.check_lcmat(cs.indices, cs.weights, H, Z, y, 0.2, 0.0, 0, "paper")


def test_lcmat_ties_go_to_the_lowest_index():
    """Every sample has an exact duplicate at a higher index: a pick is never the duplicate."""
    H, Z, y = B.make_problem([7, 6], D=4, seed=8, shuffle=False)
    H2, Z2, y2 = np.concatenate([H, H]), np.concatenate([Z, Z]), np.concatenate([y, y])
    for fraction in (1 / 14, 0.3, 0.5):
        cs = lcmat.LCMat(fraction=fraction, rho=1.0, num_coords=5, dtype=torch.float64).select_features(
            embeddings=H2, logits=Z2, labels=y2)
        assert cs.indices.max() < len(y), f"fraction {fraction}: picked a higher duplicate {cs.indices}"


def test_lcmat_weights_default_off_and_no_scores():
    H, Z, y = B.make_problem(COUNTS, D=5, seed=1)
    cs = lcmat.LCMat(fraction=0.1).select_features(embeddings=H, logits=Z, labels=y)
    assert cs.weights is None and cs.scores is None


# ---------------------------------------------------------------------------------------------
# FDMat: transport scores against POT, keeps the smallest

def fdmat_options(**extra):
    return dict(fraction=0.2, dtype=torch.float64, tol=1e-12, max_iter=20000, **extra)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fdmat_scores_match_pot_and_it_keeps_the_smallest(backend):
    H, _, y = B.make_problem(COUNTS, D=6, seed=3, nonneg=True)
    cs = lcmat.FDMat(**fdmat_options(backend=backend)).select_features(embeddings=H, labels=y)
    expected = B.fdmat_scores(H, y, lam=10.0)
    np.testing.assert_allclose(cs.scores, expected, rtol=1e-6, atol=1e-12)
    for c, k in enumerate(B.budgets(y, 0.2)):
        members = np.flatnonzero(y == c)
        np.testing.assert_array_equal(cs.indices[y[cs.indices] == c], top_k(expected, members, k, largest=False))


def test_fdmat_lambda_and_beta_are_used():
    H, _, y = B.make_problem(COUNTS, D=6, seed=3, nonneg=True)
    cs = lcmat.FDMat(**fdmat_options(lam=3.0, beta=0.7)).select_features(embeddings=H, labels=y)
    np.testing.assert_allclose(cs.scores, B.fdmat_scores(H, y, lam=3.0, beta=0.7), rtol=1e-6, atol=1e-12)


def test_fdmat_float32_scores_close_to_pot():
    H, _, y = B.make_problem(COUNTS, D=6, seed=3, nonneg=True)
    cs = lcmat.FDMat(fraction=0.2, tol=1e-6).select_features(embeddings=H.astype(np.float32), labels=y)
    expected = B.fdmat_scores(H.astype(np.float32).astype(np.float64), y)
    np.testing.assert_allclose(cs.scores, expected, rtol=2e-3, atol=1e-6 * expected.max())


def test_fdmat_warns_when_the_transport_has_not_converged():
    H, _, y = B.make_problem(COUNTS, D=6, seed=3, nonneg=True)
    selector = lcmat.FDMat(fraction=0.2, dtype=torch.float64, max_iter=2, tol=1e-12)
    with pytest.warns(RuntimeWarning, match="max_iter=2 with relative marginal error"):
        selector.select_features(embeddings=H, labels=y)
    assert selector.last_ot["iterations"] == 2 and selector.last_ot["marginal_error"] > 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lcmat.FDMat(**fdmat_options()).select_features(embeddings=H, labels=y)


def test_fdmat_global_budget_keeps_the_smallest_overall():
    H, _, y = B.make_problem(COUNTS, D=6, seed=3, nonneg=True)
    cs = lcmat.FDMat(**fdmat_options(balance=False)).select_features(embeddings=H, labels=y)
    expected = B.fdmat_scores(H, y)
    k = round(0.2 * len(y))
    np.testing.assert_array_equal(cs.indices, top_k(expected, range(len(y)), k, largest=False))


def test_fdmat_shift_equals_shifting_by_hand():
    H, _, y = B.make_problem(COUNTS, D=6, seed=4)
    assert H.min() < 0
    shifted = lcmat.FDMat(**fdmat_options(negative="shift")).select_features(embeddings=H, labels=y)
    by_hand = lcmat.FDMat(**fdmat_options()).select_features(embeddings=H - H.min(), labels=y)
    np.testing.assert_array_equal(shifted.indices, by_hand.indices)
    np.testing.assert_allclose(shifted.scores, B.fdmat_scores(H - H.min(), y), rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# k-Center greedy and Herding

def test_kcenter_covering_radius_no_worse_than_random():
    H, Z, y = B.make_problem([40, 33], D=2, seed=9)
    rng = np.random.default_rng(0)
    for seed in range(3):
        cs = lcmat.KCenterGreedy(fraction=0.2, seed=seed).select_features(embeddings=H, labels=y)
        for c in range(2):
            x = H[y == c]
            members = np.flatnonzero(y == c)
            local = np.searchsorted(members, cs.indices[y[cs.indices] == c])
            radius = B.covering_radius(x, local)
            random = [B.covering_radius(x, rng.choice(len(x), len(local), replace=False)) for _ in range(51)]
            assert radius <= np.median(random), (seed, c, radius, np.median(random))
            # and within the 2-approximation of the best of the random subsets
            assert radius <= 2 * min(random)


@pytest.mark.parametrize("balance", [True, False])
def test_kcenter_follows_the_farthest_point_rule(balance):
    """Some pick s of the selection, taken as the first, makes the farthest-point traversal
    reproduce the whole selection; the first pick is the seeded one."""
    H, Z, y = B.make_problem(COUNTS, D=3, seed=10)
    for seed in range(3):
        cs = lcmat.KCenterGreedy(fraction=0.2, seed=seed, balance=balance, dtype=torch.float64).select_features(
            embeddings=H, labels=y)
        groups = [np.flatnonzero(y == c) for c in range(3)] if balance else [np.arange(len(y))]
        for members in groups:
            local = sorted(np.searchsorted(members, cs.indices[np.isin(cs.indices, members)]))
            starts = [s for s in local if sorted(B.farthest_point(H[members], len(local), s)) == local]
            assert starts, f"seed {seed}: {list(members[local])} is no farthest-point traversal"


def test_kcenter_first_pick_is_seeded_per_class():
    """Different seeds move the first pick: over 8 seeds more than one selection per class."""
    H, Z, y = B.make_problem(COUNTS, D=3, seed=10)
    seen = [set() for _ in range(3)]
    for seed in range(8):
        cs = lcmat.KCenterGreedy(fraction=0.2, seed=seed).select_features(embeddings=H, labels=y)
        for c in range(3):
            seen[c].add(tuple(cs.indices[y[cs.indices] == c]))
    assert all(len(s) > 1 for s in seen)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_herding_is_the_definition(kind):
    H, Z, y = B.make_problem(COUNTS, D=4, seed=11)
    Hin = H if kind == "numpy" else torch.tensor(H)
    cs = lcmat.Herding(fraction=0.2, dtype=torch.float64).select_features(embeddings=Hin, labels=y)
    for c, k in enumerate(B.budgets(y, 0.2)):
        members = np.flatnonzero(y == c)
        expected = sorted(members[B.herding(H[members], k)])
        np.testing.assert_array_equal(cs.indices[y[cs.indices] == c], expected)


def test_herding_global_budget_is_the_definition():
    H, Z, y = B.make_problem(COUNTS, D=4, seed=11)
    cs = lcmat.Herding(fraction=0.1, balance=False, dtype=torch.float64).select_features(embeddings=H, labels=y)
    np.testing.assert_array_equal(cs.indices, sorted(B.herding(H, round(0.1 * len(y)))))


def test_herding_mean_closer_than_random_subsets():
    H, Z, y = B.make_problem([60, 45], D=8, seed=12)
    cs = lcmat.Herding(fraction=0.1).select_features(embeddings=H, labels=y)
    rng = np.random.default_rng(1)
    for c in range(2):
        x, chosen = H[y == c], H[cs.indices[y[cs.indices] == c]]
        gap = np.linalg.norm(chosen.mean(0) - x.mean(0))
        random = [np.linalg.norm(x[rng.choice(len(x), len(chosen), replace=False)].mean(0) - x.mean(0))
                  for _ in range(51)]
        assert gap < np.median(random)


# ---------------------------------------------------------------------------------------------
# Score methods: the formulas, top-k per class, ties to the lower index

def per_sample_grad_norms(H, Z_linear, y):
    """||d CE / d (weight, bias)|| of an nn.Linear per sample, by torch.func."""
    lin = torch.nn.Linear(H.shape[1], Z_linear.shape[1], dtype=torch.float64)
    params = {k: v.detach() for k, v in lin.named_parameters()}
    Z = torch.func.functional_call(lin, params, (H,))

    def loss(p, h, t):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(lin, p, (h[None],)), t[None])

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, H, y)
    sq = grads["weight"].square().sum((1, 2)) + grads["bias"].square().sum(1)
    return Z.detach(), sq.sqrt()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_grand_scores_are_per_sample_gradient_norms(dtype, rtol, backend):
    torch.manual_seed(0)
    y = torch.tensor(B.make_problem(COUNTS, seed=13)[2])
    H = torch.randn(len(y), 6, dtype=torch.float64)
    Z, norms = per_sample_grad_norms(H, torch.zeros(1, 3), y)
    cs = lcmat.GraNd(fraction=0.2, dtype=dtype, backend=backend).select_features(embeddings=H.to(dtype), logits=Z.to(dtype), labels=y)
    np.testing.assert_allclose(cs.scores, norms.numpy(), rtol=rtol)
    yn = y.numpy()
    for c, k in enumerate(B.budgets(yn, 0.2)):
        expected = top_k(norms.numpy(), np.flatnonzero(yn == c), k, largest=True)
        np.testing.assert_array_equal(cs.indices[yn[cs.indices] == c], expected)


def uncertainty_scores(name, Z, y):
    p = B.softmax(Z)
    top2 = np.sort(p, axis=1)[:, ::-1][:, :2]
    return {"el2n": np.linalg.norm(B.errors(Z, y), axis=1),
            "least_confidence": 1.0 - p.max(1),
            "entropy": -(p * np.log(p)).sum(1),
            "margin": top2[:, 0] - top2[:, 1]}[name]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["el2n", "least_confidence", "entropy", "margin"])
def test_logit_scores_are_their_formulas(name, backend):
    H, Z, y = B.make_problem(COUNTS, seed=14)
    cs = run(name, H, Z, y, fraction=0.2, dtype=torch.float64, backend=backend)
    expected = uncertainty_scores(name, Z, y)
    np.testing.assert_allclose(cs.scores, expected, rtol=1e-10, atol=1e-14)
    for c, k in enumerate(B.budgets(y, 0.2)):
        kept = top_k(expected, np.flatnonzero(y == c), k, largest=name != "margin")
        np.testing.assert_array_equal(cs.indices[y[cs.indices] == c], kept)


@pytest.mark.parametrize("name", SCORE_METHODS)
def test_score_ties_go_to_the_lower_index(name):
    """Within each class all samples are identical, so every score ties: the first k_c of the
    class (in dataset order) are kept."""
    rng = np.random.default_rng(15)
    y = np.repeat([0, 1, 2], [7, 9, 5])[rng.permutation(21)]
    H = np.abs(rng.normal(size=(3, 4)))[y]
    Z = rng.normal(size=(3, 3))[y]
    forgetting = np.array([2, 5, 1])[y]
    cs = run(name, H, Z, y, forgetting=forgetting, fraction=0.5)
    for c, k in enumerate(B.budgets(y, 0.5)):
        np.testing.assert_array_equal(cs.indices[y[cs.indices] == c], np.flatnonzero(y == c)[:k])


def test_margin_with_a_single_logit_column():
    """One class (C = 1): every probability is 1, so the margin is 1 - 0 = 1 for all (or a clear
    ValueError naming logits); not a RuntimeError from topk."""
    y = np.zeros(6, dtype=np.int64)
    try:
        cs = lcmat.Margin(fraction=0.5).select_features(logits=np.zeros((6, 1)), labels=y)
    except ValueError as err:
        assert str(err).startswith("logits")
        return
    np.testing.assert_array_equal(cs.indices, [0, 1, 2])


def test_forgetting_keeps_the_largest_counts():
    y = np.array([0, 1, 0, 0, 1, 0, 1, 1, 0, 1])
    counts = np.array([3, 0, 1, 3, 2, 5, 2, 7, 0, 2])
    cs = lcmat.Forgetting(fraction=0.4).select_features(labels=y, forgetting=counts)
    # class 0: positions 0 2 3 5 8 with counts 3 1 3 5 0, k = 2: 5 (pos 5), then 3 (pos 0, not 3)
    # class 1: positions 1 4 6 7 9 with counts 0 2 2 7 2, k = 2: 7 (pos 7), then 2 (pos 4)
    np.testing.assert_array_equal(cs.indices, [0, 4, 5, 7])
    np.testing.assert_array_equal(cs.scores, counts)


# ---------------------------------------------------------------------------------------------
# select(model, dataset)



@pytest.mark.parametrize("name", ["lcmat", "fdmat", "grand", "herding"])
def test_select_from_model_equals_select_features_on_hooked_features(name):
    pytest.importorskip("lcmat.features", reason="lcmat.features (extract_features) is not importable yet")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(40, 4)
    y = np.repeat([0, 1, 2], [15, 13, 12])[np.random.default_rng(0).permutation(40)]
    captured = []
    handle = model[2].register_forward_hook(lambda m, inputs, out: captured.append(inputs[0].detach()))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    selector = lcmat.get_method(name, fraction=0.2, progress=False)
    by_hand = selector.select_features(embeddings=captured[0], logits=logits, labels=y)
    from_model = selector.select(model, PairDataset(x, y), batch_size=16)
    np.testing.assert_array_equal(from_model.indices, by_hand.indices)


# ---------------------------------------------------------------------------------------------
# CUDA tensors (skipped without a GPU)

@pytest.mark.gpu
@pytest.mark.parametrize("name", METHODS)
def test_cuda_inputs(name):
    """Features on the GPU: same budgets, LCMat/CRAIG still the definition (float32 ties within
    1e-4), scores as on the CPU, Uniform's draw unchanged."""
    H, Z, y, forgetting = problem()
    H32, Z32 = H.astype(np.float32), Z.astype(np.float32)
    on_gpu = [torch.tensor(a, device="cuda") for a in (H32, Z32, y)]
    cs = run(name, *on_gpu, forgetting=forgetting, fraction=0.2)
    cpu = run(name, H32, Z32, y, forgetting=forgetting, fraction=0.2)
    np.testing.assert_array_equal(np.bincount(y[cs.indices], minlength=3), B.budgets(y, 0.2))
    if name in ("lcmat", "craig"):
        rho, K = (0.01, 100) if name == "lcmat" else (0.0, 0)
        B.check_lcmat(cs.indices, cs.weights, H32.astype(np.float64), Z32.astype(np.float64), y, 0.2,
                      rho, K, rtol=1e-4)
    if cpu.scores is not None:
        np.testing.assert_allclose(cs.scores, cpu.scores, rtol=1e-4, atol=1e-6)
    if name == "uniform":
        np.testing.assert_array_equal(cs.indices, cpu.indices)
