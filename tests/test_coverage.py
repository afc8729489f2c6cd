"""Coverage stratification (lcmat.coverage) on synthetic scores, and the coverage option."""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import lcmat
from lcmat.coverage import coverage_groups, prune_hardest, strata_of, stratum_budgets


def test_prune_hardest_drops_the_top_fraction_and_later_index_on_ties():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8])
    assert prune_hardest(scores, k=2, prune_hard=0.2).tolist() == [0, 2, 4, 5, 6, 7, 8, 9]
    # A tie at the cut: of the two 0.9s only the later one goes.
    assert prune_hardest(scores, k=2, prune_hard=0.1).tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_prune_hardest_keeps_at_least_k():
    scores = np.arange(10.0)
    assert len(prune_hardest(scores, k=9, prune_hard=0.5)) == 9
    assert len(prune_hardest(scores, k=10, prune_hard=0.5)) == 10


def test_strata_are_equal_width_bins():
    scores = np.array([0.0, 0.24, 0.25, 0.5, 0.99, 1.0])
    assert strata_of(scores, 4).tolist() == [0, 0, 1, 2, 3, 3]
    assert strata_of(np.ones(5), 4).tolist() == [0] * 5


def test_stratum_budgets_fill_small_strata_then_spread():
    assert stratum_budgets([1, 10, 10], 9).tolist() == [1, 4, 4]
    assert stratum_budgets([2, 2, 100], 30).tolist() == [2, 2, 26]
    assert stratum_budgets([5, 5, 5], 14).tolist() == [4, 5, 5]


@given(st.lists(st.integers(0, 30), min_size=1, max_size=12), st.integers(0, 200))
def test_stratum_budgets_sum_to_k_within_capacity(sizes, k):
    budgets = stratum_budgets(sizes, k)
    assert budgets.sum() == min(k, sum(sizes))
    assert (budgets <= np.array(sizes)).all() and (budgets >= 0).all()


@given(st.integers(1, 300), st.floats(0, 0.9), st.integers(1, 20), st.integers(0, 10 ** 6))
def test_coverage_groups_partition_a_budget_of_k(n, prune, strata, seed):
    scores = np.random.default_rng(seed).normal(size=n)
    k = max(1, n // 7)
    groups = coverage_groups(scores, k, strata, prune)
    positions = np.concatenate([p for p, _ in groups])
    assert sum(b for _, b in groups) == k
    assert len(np.unique(positions)) == len(positions)
    assert all(0 < b <= len(p) for p, b in groups)
    hardest = np.argsort(-scores, kind="stable")[: min(int(prune * n), n - k)]
    assert not np.isin(hardest, positions).any()


def _problem(n=400, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    return torch.randn(n, 12, generator=g).relu(), 3 * torch.randn(n, classes, generator=g), y


@pytest.mark.parametrize("name", sorted(n for n, c in lcmat.METHODS.items() if not getattr(c, "needs_model", False)))
def test_coverage_option_keeps_budgets_and_spans_difficulty(name):
    H, Z, y = _problem()
    extra = {"forgetting": np.arange(len(y)) % 5} if name == "forgetting" else {}
    cs = lcmat.get_method(name, fraction=0.1, coverage=True, num_strata=5, prune_hard=0.1).select_features(
        embeddings=H, logits=Z, labels=y, **extra)
    assert cs.class_counts(y.numpy()).tolist() == [10, 10, 10, 10]
    el2n = (torch.softmax(Z, 1) - torch.nn.functional.one_hot(y, 4)).norm(dim=1).numpy()
    for c in range(4):
        members = np.flatnonzero(y.numpy() == c)
        hardest = members[np.argsort(-el2n[members], kind="stable")[:10]]
        assert not np.isin(hardest, cs.indices).any()  # the hardest 10 % are pruned
        picked = el2n[cs.indices[y.numpy()[cs.indices] == c]]
        kept = np.setdiff1d(members, hardest)
        # Every one of the 5 difficulty strata of the kept samples is represented.
        assert len(np.unique(strata_of(np.concatenate([el2n[kept], picked]), 5)[len(kept):])) == 5


def test_coverage_is_deterministic_and_errors_name_arguments():
    H, Z, y = _problem()
    a = lcmat.LCMat(fraction=0.1, coverage=True).select_features(embeddings=H, logits=Z, labels=y)
    b = lcmat.LCMat(fraction=0.1, coverage=True).select_features(embeddings=H, logits=Z, labels=y)
    assert np.array_equal(a.indices, b.indices)
    with pytest.raises(ValueError, match="prune_hard"):
        lcmat.LCMat(coverage=True, prune_hard=1.0)
    with pytest.raises(ValueError, match="num_strata"):
        lcmat.Uniform(coverage=True, num_strata=0)
    with pytest.raises(ValueError, match="difficulty"):
        lcmat.Herding(coverage=True, difficulty="own")
    with pytest.raises(ValueError, match="logits"):
        lcmat.Herding(fraction=0.1, coverage=True).select_features(embeddings=H, labels=y)


def test_auto_rho_equalises_the_median_of_both_terms():
    from lcmat import reference as R
    H, Z, y = _problem(n=120, classes=2)
    cs = lcmat.LCMat(fraction=0.1, rho="auto", dtype=torch.float64).select_features(embeddings=H, logits=Z, labels=y)
    for c, rho in enumerate(cs.info["rho"]):
        h, z, yc = H[y == c].double(), Z[y == c].double(), y[y == c]
        e, q = R.last_layer_factors(z, yc)
        coords = R.top_variance_coords(h, q, 100)
        grad = R.gradient_distance(h, e)
        curv = R.pairwise_l1(R.hessian_diag_coords(h, q, coords))
        off = ~torch.eye(len(h), dtype=torch.bool)
        assert rho * curv[off].median() == pytest.approx(float(grad[off].median()), rel=1e-9)


def _quota_greedy_by_definition(dist, groups, quotas):
    """Each step: the eligible column whose addition raises F(S) = sum_i max_{j in S} max(0, L - D_ij)
    the most, F evaluated from scratch (lowest index on ties)."""
    sim = np.maximum(dist.max() - dist, 0.0)
    picks, left = [], list(quotas)
    for _ in range(sum(quotas)):
        base = sim[:, picks].max(axis=1).sum() if picks else 0.0
        best, best_gain = None, -1.0
        for j in range(len(groups)):
            if j in picks or left[groups[j]] == 0:
                continue
            gain = np.maximum(sim[:, picks + [j]].max(axis=1), 0).sum() - base
            if gain > best_gain + 1e-12:
                best, best_gain = j, gain
        picks.append(best)
        left[groups[best]] -= 1
    return picks


@given(st.integers(1, 14), st.integers(1, 4), st.integers(0, 10 ** 6))
def test_quota_greedy_matches_its_definition(n, num_groups, seed):
    from lcmat.algorithms import facility_location_greedy_quotas
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    groups = rng.integers(0, num_groups, size=n)
    sizes = np.bincount(groups, minlength=num_groups)
    quotas = [int(rng.integers(0, s + 1)) for s in sizes]
    picks, objective, weights = facility_location_greedy_quotas(torch.tensor(dist), groups, quotas)
    assert picks.tolist() == _quota_greedy_by_definition(dist, groups.tolist(), quotas)
    assert np.bincount(groups[picks.numpy()], minlength=num_groups).tolist() == quotas
    assert weights.sum() == (n if sum(quotas) else 0)


def test_quota_greedy_without_a_binding_quota_is_the_plain_greedy():
    from lcmat.algorithms import facility_location_greedy_quotas
    from lcmat.reference import facility_location_greedy
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    dist = torch.cdist(x, x)
    plain = facility_location_greedy(dist, 7, lazy=False)
    quota = facility_location_greedy_quotas(dist, torch.zeros(60, dtype=torch.long), [7])
    for a, b in zip(plain, quota):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="quotas"):
        facility_location_greedy_quotas(dist, torch.zeros(60, dtype=torch.long), [61])
    with pytest.raises(ValueError, match="groups"):
        facility_location_greedy_quotas(dist, torch.zeros(59, dtype=torch.long), [1])


def test_lcmat_quotas_keep_stratum_budgets_and_cover_the_class():
    from lcmat import algorithms
    from lcmat import reference as R
    from lcmat.coverage import coverage_strata
    H, Z, y = _problem()
    sel = lcmat.LCMat(fraction=0.1, rho=1.0, coverage=True, quotas=True, num_strata=5, dtype=torch.float64)
    cs = sel.select_features(embeddings=H, logits=Z, labels=y)
    assert cs.class_counts(y.numpy()).tolist() == [10, 10, 10, 10]
    el2n = (torch.softmax(Z.double(), 1) - torch.nn.functional.one_hot(y, 4)).norm(dim=1).numpy()
    for c in range(4):
        members = np.flatnonzero(y.numpy() == c)
        kept, strata, budgets = coverage_strata(el2n[members], 10, 5, 0.1)
        chosen = np.isin(members[kept], cs.indices)
        assert chosen.sum() == 10 and np.bincount(strata[chosen], minlength=len(budgets)).tolist() == budgets.tolist()
        # the definition: one quota greedy over the kept samples' LCMat-S distance block
        h, z = H[members[kept]].double(), Z[members[kept]].double()
        e, q = R.last_layer_factors(z, y[members[kept]])
        dist = R.lcmat_distance(h, e, q, R.top_variance_coords(h, q, 100), 1.0)
        picks, _, _ = algorithms.facility_location_greedy_quotas(dist, strata, budgets)
        assert sorted(members[kept][picks.numpy()].tolist()) == sorted(cs.indices[y.numpy()[cs.indices] == c].tolist())
    with pytest.raises(ValueError, match="quotas"):
        lcmat.LCMat(quotas=True)
    craig = lcmat.CRAIG(fraction=0.1, coverage=True, quotas=True, num_strata=5).select_features(
        embeddings=H, logits=Z, labels=y)
    assert craig.class_counts(y.numpy()).tolist() == [10, 10, 10, 10] and craig.weights.sum() == 4 * 90
